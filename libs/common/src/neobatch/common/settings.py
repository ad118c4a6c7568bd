"""Settings read from the environment once at start-up and passed down explicitly.

Each setting is declared once, on its field: the field's type and default, and an `Env` in
its annotation naming the variable, its bounds and a one-line meaning:

    max_batches: Annotated[int, Env("NEOBATCH_MAX_BATCHES", "Batches run at once", minimum=1)] = 8

`read_env(SomeSettings, env)` builds the Struct from those declarations, and
`neobatch.common.settings_doc` renders docs/configuration.md from the same ones, so the code,
its defaults and the documentation cannot drift apart. Besides `Env`, a field may be:
- a nested settings Struct (`common: CommonSettings`), read the same way;
- a Struct owned elsewhere, such as a pure module's limits, with `EnvFields(field=Env(...))`
  naming variables for the fields the environment may set (the others keep their default);
- an optional block (`runpod: RunPodSettings | None` with `When("provisioners", "runpod")`),
  read only when an earlier field of the same Struct holds that value.

Every service has its own settings Struct that embeds `CommonSettings`; nothing reads
`os.environ` after start-up, and nothing but `read_env` reads it at all.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from neobatch.common.errors import ConfigError

S = TypeVar("S", bound=msgspec.Struct)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class When(msgspec.Struct, frozen=True):
    """True when the earlier field `field` of the same Struct equals or contains `value`."""

    field: str
    value: str

    def holds(self, values: Mapping[str, Any]) -> bool:
        current = values[self.field]
        return self.value in current if isinstance(current, tuple) else self.value == current


class Env(msgspec.Struct, frozen=True):
    """The environment variable a field is read from, and how its value is checked."""

    name: str
    # One line for docs/configuration.md; also ends the "is required" message.
    doc: str
    minimum: float | None = None
    # The largest value accepted (an operator ceiling the system is tested at).
    maximum: float | None = None
    positive: bool = False
    # Allowed values (of each item, for a comma-separated tuple), after `case` is applied.
    choices: tuple[str, ...] = ()
    case: Literal["upper", "lower"] | None = None
    # Shown as set/unset in repr, never by value.
    secret: bool = False
    # Missing, it stops start-up as "missing credential <name>" (what a provider needs).
    credential: bool = False
    # Required only while another field holds a value (the SSH pool when `ssh` is selected).
    required_when: When | None = None
    # Further checks on the parsed value (a key file's mode); raises ConfigError.
    check: Callable[[Any], None] | None = None


class EnvFields:
    """Variables for some fields of a Struct defined elsewhere (`Limits`, `DispatchDefaults`).

    The Struct stays free of environment names; the settings that embed it name them.
    """

    def __init__(self, **fields: Env) -> None:
        self.fields: dict[str, Env] = fields


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every settings Struct: its repr shows secrets as set/unset only."""

    def __repr__(self) -> str:
        parts = []
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            marker = _marker(field.type)
            if isinstance(marker, Env) and marker.secret:
                parts.append(f"{field.name}={'set' if value else 'unset'}")
            else:
                parts.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# The highest batch limits an operator may set: what the system is tested at (issue 15).
MAX_BATCH_REQUESTS_CEILING = 1_000_000
MAX_BATCH_INPUT_BYTES_CEILING = 2 * 1024 * 1024 * 1024


class CommonSettings(Settings, frozen=True, kw_only=True):
    nats_url: Annotated[
        str,
        Env(
            "NATS_URL",
            "NATS server; a cluster's seeds may be listed comma-separated "
            "(`nats://a:4222,nats://b:4222`); each may hold credentials "
            "(`nats://user:password@a:4222`): keep it in a Secret",
            secret=True,
        ),
    ] = "nats://127.0.0.1:4222"
    mongo_url: Annotated[
        str,
        Env(
            "MONGO_URL",
            "MongoDB connection string (replica set: `...?replicaSet=rs0`); may hold "
            "credentials: keep it in a Secret",
            secret=True,
        ),
    ] = "mongodb://127.0.0.1:27017"
    db_name: Annotated[str, Env("NEOBATCH_DB", "The one database all services share")] = "neobatch"
    # Subject prefix and stream name: lets several stacks share one nats-server (tests).
    namespace: Annotated[
        str,
        Env(
            "NEOBATCH_NAMESPACE",
            "Subject prefix (`<ns>.job.queued`) and stream name (`<NS>_EVENTS`)",
        ),
    ] = "neobatch"
    log_level: Annotated[
        str, Env("NEOBATCH_LOG_LEVEL", "Log level (JSON logs on stdout)", case="upper")
    ] = "INFO"
    # 3 on a 3-node cluster (deploy/), 1 on a single nats-server.
    stream_replicas: Annotated[
        int,
        Env(
            "NEOBATCH_STREAM_REPLICAS",
            "JetStream replicas of the event and dead-letter streams (3 on a 3-node cluster)",
            minimum=1,
        ),
    ] = 1
    # Where non-HTTP services serve /healthz, /readyz and /metrics (port 0 = not served).
    health_host: Annotated[
        str,
        Env(
            "NEOBATCH_HEALTH_HOST",
            "Address of `/healthz`, `/readyz`, `/metrics` for planner, resource-manager, "
            "runtime-agent and the console's `NEOBATCH_METRICS_PORT` (images set `0.0.0.0`)",
        ),
    ] = "127.0.0.1"
    health_port: Annotated[
        int,
        Env(
            "NEOBATCH_HEALTH_PORT",
            "Port of those endpoints, `0`: not served (images set `9090`); the console serves "
            "them on its API port and ignores this",
            minimum=0,
        ),
    ] = 0
    metrics_cache_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_METRICS_CACHE_SECONDS",
            "How long a `/metrics` scrape reuses the state read from MongoDB and JetStream",
        ),
    ] = 2.0
    startup_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_STARTUP_SECONDS",
            "How long start-up keeps retrying a database or broker that does not answer before "
            "the process exits",
            minimum=1,
        ),
    ] = 300.0
    # Read by the console (at batch creation) and the runtime-agent (before dispatch) alike,
    # so a line one accepts the other does too.
    max_input_line_bytes: Annotated[
        int,
        Env(
            "NEOBATCH_MAX_INPUT_LINE_BYTES",
            "Longest line of a batch input file (one request); a longer line is that line's "
            "`line_too_long` error, refused before it is decoded (16 MiB)",
            minimum=1024,
        ),
    ] = 16 * 1024 * 1024
    # OpenAI's limits per batch by default; an operator may raise them up to the ceiling the
    # system is tested at (issue 15: 1,000,000 requests, 2 GiB; `task bench:scale`). Read by
    # the console (at batch creation) and the runtime-agent (before dispatch) alike.
    max_batch_requests: Annotated[
        int,
        Env(
            "NEOBATCH_MAX_BATCH_REQUESTS",
            "Most requests in one batch; more is the batch's `too_many_requests` error "
            "(OpenAI's 50,000 by default)",
            minimum=1,
            maximum=MAX_BATCH_REQUESTS_CEILING,
        ),
    ] = 50_000
    max_batch_input_bytes: Annotated[
        int,
        Env(
            "NEOBATCH_MAX_BATCH_INPUT_BYTES",
            "Largest batch input file; larger is the batch's `file_too_large` error (OpenAI's "
            "200 MiB by default; raise `NEOBATCH_MAX_UPLOAD_BYTES` with it)",
            minimum=1024,
            maximum=MAX_BATCH_INPUT_BYTES_CEILING,
        ),
    ] = 200 * 1024 * 1024


def nats_servers(url: str) -> list[str]:
    """`NATS_URL` may list a cluster's seeds, comma-separated (`nats://a:4222,nats://b:4222`)."""
    return [part.strip() for part in url.split(",") if part.strip()]


# --- reading -------------------------------------------------------------------------------


def read_env(cls: type[S], env: Mapping[str, str] | None = None, *, context: str = "") -> S:
    """Build `cls` from `env` (default: the process environment) as its fields declare.

    An unset or blank variable keeps the field's default. Errors name the variable; `context`
    prefixes them (`resource manager init: missing credential RUNPOD_API_KEY`).
    """
    env = os.environ if env is None else env
    try:
        return _read_struct(cls, env)
    except ConfigError as error:
        if context:
            raise ConfigError(f"{context}: {error.message}") from None
        raise


def _read_struct(cls: type[S], env: Mapping[str, str]) -> S:
    values: dict[str, Any] = {}
    for field, kind, marker in declared_fields(cls):
        if isinstance(marker, Env):
            required = field.default is msgspec.NODEFAULT or (
                marker.required_when is not None and marker.required_when.holds(values)
            )
            values[field.name] = _read_variable(marker, kind, env, field.default, required)
        elif isinstance(marker, EnvFields):
            values[field.name] = _read_fields(kind, marker, env)
        elif isinstance(marker, When):
            values[field.name] = _read_struct(kind, env) if marker.holds(values) else None
        else:
            values[field.name] = _read_struct(kind, env)
    return cls(**values)


def _read_fields(cls: type[S], declared: EnvFields, env: Mapping[str, str]) -> S:
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    return cls(
        **{
            name: _read_variable(variable, _plain(fields[name].type), env, fields[name].default)
            for name, variable in declared.fields.items()
        }
    )


def _read_variable(
    declared: Env, kind: Any, env: Mapping[str, str], default: Any, required: bool = False
) -> Any:
    """One variable: parsed as `kind`, bounded and checked as `declared` says."""
    raw = env.get(declared.name, "").strip()
    value = _parse(declared, kind, raw) if raw else None
    if value is None or value == ():
        if required:
            if declared.credential:
                raise ConfigError(f"missing credential {declared.name}")
            raise ConfigError(f"{declared.name} is required: {declared.doc}")
        value = default
    elif declared.minimum is not None and value < declared.minimum:
        raise ConfigError(f"{declared.name} must be >= {declared.minimum}, got {value}")
    elif declared.maximum is not None and value > declared.maximum:
        raise ConfigError(f"{declared.name} must be <= {declared.maximum:.15g}, got {value}")
    elif declared.positive and value <= 0:
        raise ConfigError(f"{declared.name} must be positive, got {value}")
    if declared.check is not None:
        declared.check(value)
    return value


def _parse(declared: Env, kind: Any, raw: str) -> Any:
    name = declared.name
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if kind is str:
        return _choice(declared, raw)
    if kind == tuple[str, ...]:
        return tuple(_choice(declared, part.strip()) for part in raw.split(",") if part.strip())
    raise TypeError(f"{name}: no reader for {kind!r}")


def _choice(declared: Env, value: str) -> str:
    if declared.case == "upper":
        value = value.upper()
    elif declared.case == "lower":
        value = value.lower()
    if declared.choices and value not in declared.choices:
        allowed = ", ".join(declared.choices)
        raise ConfigError(f"{declared.name} must be one of {allowed}, got {value!r}")
    return value


# --- the declarations, for the reader and the documentation ---------------------------------

Marker = Env | EnvFields | When | None


def declared_fields(
    cls: type[msgspec.Struct],
) -> Iterator[tuple[msgspec.structs.FieldInfo, Any, Marker]]:
    """Each field of a settings Struct with its plain type and its declaration.

    The plain type drops `Annotated` and an optional block's `| None`. A field without a
    marker must be a nested settings Struct; anything else is a declaration mistake.
    """
    for field in msgspec.structs.fields(cls):
        marker = _marker(field.type)
        kind = _plain(field.type)
        if marker is None and not _is_settings(kind):
            raise TypeError(f"{cls.__name__}.{field.name} declares no environment variable")
        if isinstance(marker, (EnvFields, When)) and not issubclass(kind, msgspec.Struct):
            raise TypeError(f"{cls.__name__}.{field.name}: {marker!r} needs a Struct")
        if isinstance(marker, EnvFields):
            unknown = set(marker.fields) - {f.name for f in msgspec.structs.fields(kind)}
            if unknown:
                raise TypeError(f"{cls.__name__}.{field.name}: {kind.__name__} has no {unknown}")
        yield field, kind, marker


def _marker(annotation: Any) -> Marker:
    if typing.get_origin(annotation) is Annotated:
        for extra in annotation.__metadata__:
            if isinstance(extra, (Env, EnvFields, When)):
                return extra
    return None


def _plain(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_settings(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Settings)

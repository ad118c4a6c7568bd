"""The generic settings reader: each declared form, its defaults and its error messages."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from neobatch.common.errors import ConfigError
from neobatch.common.settings import (
    CommonSettings,
    Env,
    EnvFields,
    Settings,
    When,
    read_env,
)
from neobatch.common.settings_doc import BEGIN, END, render, render_tables


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Stands for a pure module's Struct: it names no variable itself."""

    tries: int = 3
    wait_seconds: float = 1.5


def _must_be_even(value: int) -> None:
    if value % 2:
        raise ConfigError(f"NB_EVEN must be even, got {value}")


class Block(Settings, frozen=True, kw_only=True):
    token: Annotated[str, Env("NB_TOKEN", "Token", secret=True, credential=True)]
    region: Annotated[str, Env("NB_REGION", "Region")] = "any"


class Sample(Settings, frozen=True, kw_only=True):
    common: CommonSettings = CommonSettings()
    name: Annotated[str, Env("NB_NAME", "Name")] = "x"
    count: Annotated[int, Env("NB_COUNT", "Count", minimum=1)] = 2
    ratio: Annotated[float, Env("NB_RATIO", "Ratio", positive=True)] = 0.5
    on: Annotated[bool, Env("NB_ON", "Switch")] = True
    mode: Annotated[str, Env("NB_MODE", "Mode", choices=("fast", "slow"), case="lower")] = "fast"
    kinds: Annotated[tuple[str, ...], Env("NB_KINDS", "Kinds", choices=("a", "b", "c"))] = ("a",)
    even: Annotated[int, Env("NB_EVEN", "Even", check=_must_be_even)] = 0
    pool: Annotated[str, Env("NB_POOL", "Pool", required_when=When("kinds", "b"))] = ""
    limits: Annotated[Limits, EnvFields(tries=Env("NB_TRIES", "Tries", minimum=0))] = Limits()
    block: Annotated[Block | None, When("kinds", "c")] = None


def test_unset_and_blank_variables_keep_the_defaults() -> None:
    assert read_env(Sample, {}) == Sample()
    assert read_env(Sample, {"NB_NAME": "  ", "NB_KINDS": " , "}) == Sample()


def test_each_type_is_parsed_and_normalised() -> None:
    env = {
        "NB_NAME": " n ",
        "NB_COUNT": "7",
        "NB_RATIO": "2",
        "NB_ON": "Off",
        "NB_MODE": "SLOW",
        "NB_KINDS": "a, c,",
        "NB_EVEN": "4",
        "NB_TRIES": "0",
        "NB_TOKEN": "t",
        "NEOBATCH_LOG_LEVEL": "debug",
    }
    settings = read_env(Sample, env)
    assert settings == Sample(
        common=CommonSettings(log_level="DEBUG"),
        name="n",
        count=7,
        ratio=2.0,
        on=False,
        mode="slow",
        kinds=("a", "c"),
        even=4,
        limits=Limits(tries=0),
        block=Block(token="t"),
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NB_COUNT": "abc"}, "NB_COUNT must be an integer, got 'abc'"),
        ({"NB_COUNT": "0"}, "NB_COUNT must be >= 1, got 0"),
        ({"NB_RATIO": "x"}, "NB_RATIO must be a number, got 'x'"),
        ({"NB_RATIO": "0"}, "NB_RATIO must be positive, got 0.0"),
        ({"NB_ON": "maybe"}, "NB_ON must be true or false, got 'maybe'"),
        ({"NB_MODE": "Warp"}, "NB_MODE must be one of fast, slow, got 'warp'"),
        ({"NB_KINDS": "a,z"}, "NB_KINDS must be one of a, b, c, got 'z'"),
        ({"NB_EVEN": "3"}, "NB_EVEN must be even, got 3"),
        ({"NB_TRIES": "-1"}, "NB_TRIES must be >= 0, got -1"),
        ({"NB_KINDS": "b"}, "NB_POOL is required: Pool"),
        ({"NB_KINDS": "c"}, "missing credential NB_TOKEN"),
        ({"NEOBATCH_STREAM_REPLICAS": "0"}, "NEOBATCH_STREAM_REPLICAS must be >= 1, got 0"),
        # Issue 15: the batch limits an operator may raise stop at the tested ceiling.
        (
            {"NEOBATCH_MAX_BATCH_REQUESTS": "1000001"},
            "NEOBATCH_MAX_BATCH_REQUESTS must be <= 1000000, got 1000001",
        ),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_env(Sample, env)
    assert caught.value.message == message


def test_context_prefixes_every_error() -> None:
    with pytest.raises(ConfigError) as caught:
        read_env(Sample, {"NB_KINDS": "c"}, context="sample init")
    assert caught.value.message == "sample init: missing credential NB_TOKEN"


def test_a_block_is_read_only_when_selected() -> None:
    assert read_env(Sample, {"NB_TOKEN": "t"}).block is None
    assert read_env(Sample, {"NB_KINDS": "b", "NB_POOL": "p"}).pool == "p"


def test_secrets_never_show_in_repr() -> None:
    text = repr(read_env(Sample, {"NB_KINDS": "c", "NB_TOKEN": "hunter2"}))
    assert "hunter2" not in text and "token=set" in text


def test_a_field_without_a_declaration_is_refused() -> None:
    class Loose(Settings, frozen=True, kw_only=True):
        size: int = 1

    with pytest.raises(TypeError, match=r"Loose\.size declares no environment variable"):
        read_env(Loose, {})

    class Misnamed(Settings, frozen=True, kw_only=True):
        limits: Annotated[Limits, EnvFields(retries=Env("NB_RETRIES", "Retries"))] = Limits()

    with pytest.raises(TypeError, match=r"Limits has no .*retries"):
        read_env(Misnamed, {})


def test_tables_are_rendered_from_the_declarations() -> None:
    tables = render_tables({"sample": Sample})
    assert "## Connections and process (all services)" in tables
    assert "| `NATS_URL` | all | `nats://127.0.0.1:4222` |" in tables
    assert "| `NB_COUNT` | sample | `2` | Count; at least 1 |" in tables
    assert "| `NB_POOL` | sample | empty (required when `NB_KINDS` includes `b`) | Pool |" in tables
    assert "| `NB_TOKEN` | sample, when `NB_KINDS` includes `c` | none (required) |" in tables
    assert "| `NB_TRIES` | sample | `3` | Tries; at least 0 |" in tables
    assert "| `NB_ON` | sample | `true` | Switch |" in tables
    document = f"intro\n{BEGIN}\nstale\n{END}\noutro\n"
    assert render(document, {"sample": Sample}) == f"intro\n{BEGIN}\n\n{tables}\n\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        render("no markers", {"sample": Sample})

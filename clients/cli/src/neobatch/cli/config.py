"""Where the CLI finds the console and its key: flags, then the environment, then a profile.

    NEOBATCH_CONSOLE_URL=http://127.0.0.1:8080 NEOBATCH_API_KEY=nb-... neobatch list

A profile file (`$NEOBATCH_CONFIG`, default `~/.config/neobatch/config.toml`) holds named
profiles; `--profile NAME` (or `NEOBATCH_PROFILE`) picks one, `default` otherwise:

    [default]
    console_url = "https://neobatch.example.com"
    api_key = "nb-..."

The key is a secret: it is kept in a `Config` whose repr hides it and is never printed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from neobatch.cli.errors import CliError, ExitCode

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Config:
    console_url: str
    api_key: str = field(repr=False)
    source: str  # where the key came from, for messages ("environment", "profile 'x'")


def profile_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("NEOBATCH_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "neobatch" / "config.toml"


def _read_profile(path: Path, name: str, required: bool) -> dict[str, str]:
    if not path.exists():
        if required:
            raise CliError(f"profile file {path} does not exist", code="no_profile")
        return {}
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read profile file {path}: {error}", code="bad_profile") from None
    profile = profiles.get(name)
    if profile is None:
        if required:
            raise CliError(f"profile {name!r} is not in {path}", code="no_profile")
        return {}
    if not isinstance(profile, dict):
        raise CliError(f"profile {name!r} in {path} is not a table", code="bad_profile")
    return {k: str(v) for k, v in profile.items() if k in ("console_url", "api_key")}


def load_config(
    url: str | None, profile: str | None, env: Mapping[str, str] | None = None
) -> Config:
    """The console URL and key: `--console-url`, then NEOBATCH_CONSOLE_URL / NEOBATCH_API_KEY,
    then the profile. The key is never taken from a flag (it would sit in shell history)."""
    env = os.environ if env is None else env
    name = profile or env.get("NEOBATCH_PROFILE") or "default"
    values = _read_profile(profile_path(env), name, required=profile is not None)
    console_url = url or env.get("NEOBATCH_CONSOLE_URL") or values.get("console_url") or DEFAULT_URL
    if env.get("NEOBATCH_API_KEY"):
        key, source = env["NEOBATCH_API_KEY"], "NEOBATCH_API_KEY"
    elif values.get("api_key"):
        key, source = values["api_key"], f"profile {name!r}"
    else:
        raise CliError(
            f"no API key: set NEOBATCH_API_KEY or add api_key to a profile ({profile_path(env)})",
            code="no_api_key",
            exit_code=ExitCode.USAGE,
        )
    if not console_url.startswith(("http://", "https://")):
        raise CliError(
            f"console URL must start with http:// or https://: {console_url!r}",
            code="bad_console_url",
            exit_code=ExitCode.USAGE,
        )
    return Config(console_url=console_url.rstrip("/"), api_key=key, source=source)

"""What every command shares: the console it talks to and whether it prints JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from neobatch.cli.api import Api
from neobatch.cli.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    console_url: str | None = None
    profile: str | None = None
    json: bool = False
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.console_url, self.profile)
        return self._config

    def api(self) -> Api:
        return Api(self.config())


def json_option(command: F) -> F:
    """`--json` on every command (as well as before it: `neobatch --json list`)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(State).json = True
        return value

    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=remember,
        help="Print JSON for scripts (errors as JSON on stderr).",
    )(command)  # fmt: skip


def emit(state: State, value: Any, human: Callable[[], None]) -> None:
    """Print `value` as JSON with --json, else call `human` to show it to a person."""
    if state.json:
        from neobatch.cli.render import print_json

        print_json(value)
    else:
        human()

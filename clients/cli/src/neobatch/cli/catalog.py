"""`neobatch templates ...` and `neobatch models ...`: the catalog (writes need an operator key,
or a project allowed private templates; the console decides and says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from neobatch.cli import render
from neobatch.cli.api import Api
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.state import State, emit, json_option
from neobatch.cli.submit import split_template

MAX_TEMPLATE_FILE_BYTES = 1024 * 1024
TEMPLATE_COLUMNS = [("ID", "id"), ("MODEL", "model_id"), ("NAME", "name"), ("VERSION", "version"),
                    ("STATUS", "status"), ("PROJECT", "project")]  # fmt: skip
MODEL_COLUMNS = [("ID", "id"), ("NAME", "name"), ("SERVING NAME", "serving_name"),
                 ("CATEGORIES", "categories"), ("DEFAULT TEMPLATE", "default_template")]  # fmt: skip


def _model_ids(api: Api, model_id: str | None) -> list[str]:
    return [model_id] if model_id else [m["id"] for m in api.models()]


@click.group()
def templates() -> None:
    """Deployment templates: list, show, create."""


@templates.command("list")
@click.option("--model", "model_id", help="Only this model's templates.")
@json_option
@click.pass_obj
def list_templates(state: State, model_id: str | None) -> None:
    """The templates you may use (published, and your project's own)."""
    with state.api() as api:
        rows = [t for mid in _model_ids(api, model_id) for t in api.templates(mid)]
    emit(state, rows, lambda: render.out.print(render.catalog_table(rows, TEMPLATE_COLUMNS)))


@templates.command("show")
@click.argument("template")
@click.option("--model", "model_id", help="The template's model (else every model is searched).")
@json_option
@click.pass_obj
def show_template(state: State, template: str, model_id: str | None) -> None:
    """A template by NAME (its latest active version) or NAME@VERSION, with its spec."""
    name, version = split_template(template)
    with state.api() as api:
        found = []
        for mid in _model_ids(api, model_id):
            try:
                found.append(api.template_by_name(mid, name, version))
            except CliError as error:
                if error.status != 404:
                    raise
    if not found:
        raise CliError(f"no template {template!r} you may use", code="template_not_found",
                       exit_code=ExitCode.REFUSED, status=404)  # fmt: skip
    if len(found) > 1:
        models = ", ".join(t["model_id"] for t in found)
        raise CliError(f"template {template!r} is on several models ({models}): add --model",
                       code="ambiguous_template", exit_code=ExitCode.USAGE)  # fmt: skip
    if state.json:
        render.print_json(found[0])
        return
    render.out.print(render.catalog_table(found, TEMPLATE_COLUMNS))
    render.out.print(yaml.safe_dump(found[0].get("spec") or {}, sort_keys=False), markup=False)


def read_template_file(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_TEMPLATE_FILE_BYTES:
        raise CliError(f"{path} is larger than 1 MiB", code="template_file_too_large")
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CliError(f"{path} is not valid YAML: {error}", code="bad_template_file") from None
    if not isinstance(body, dict):
        raise CliError(f"{path} must hold a mapping (a template)", code="bad_template_file")
    return body


@templates.command("create")
@click.option("-f", "--file", "path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--model", "model_id", help="The model (else the file's model_id).")
@json_option
@click.pass_obj
def create_template(state: State, path: Path, model_id: str | None) -> None:
    """Create a template from a YAML (or JSON) file in the API's shape."""
    body = read_template_file(path)
    model_id = model_id or body.get("model_id")
    if not model_id:
        raise CliError("which model? add --model or model_id to the file", code="no_model")
    with state.api() as api:
        created = api.create_template(str(model_id), body)
    if state.json:
        render.print_json(created)
    else:
        render.out.print(f"created {created['id']} ({created['name']}@{created['version']})",
                         markup=False)  # fmt: skip


@click.group()
def models() -> None:
    """Models: list, show, create."""


@models.command("list")
@json_option
@click.pass_obj
def list_models(state: State) -> None:
    """Every model of the catalog."""
    with state.api() as api:
        rows = list(api.models())
    emit(state, rows, lambda: render.out.print(render.catalog_table(rows, MODEL_COLUMNS)))


@models.command("show")
@click.argument("model_id")
@json_option
@click.pass_obj
def show_model(state: State, model_id: str) -> None:
    """One model."""
    with state.api() as api:
        model = api.model(model_id)
    emit(state, model, lambda: render.out.print(render.catalog_table([model], MODEL_COLUMNS)))


@models.command("create")
@click.option("--name", required=True)
@click.option("--serving-name", required=True, help="The name batch lines use in body.model.")
@click.option("--category", "categories", multiple=True, default=["LLM"], show_default=True)
@json_option
@click.pass_obj
def create_model(state: State, name: str, serving_name: str, categories: tuple[str, ...]) -> None:
    """Add a model to the catalog (operator key)."""
    body = {"name": name, "serving_name": serving_name, "categories": list(categories)}
    with state.api() as api:
        model = api.create_model(body)
    emit(state, model, lambda: render.out.print(f"created {model['id']}", markup=False))

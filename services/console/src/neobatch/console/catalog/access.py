"""Who owns a deployment template, what a project's own template may set, and which template a
request runs on. Pure: the store hands in the candidate documents.

Operators publish templates for every project (`project` None). A project key may own a private
template only where the operator allows it (`NEOBATCH_PRIVATE_TEMPLATE_PROJECTS`), and such a
template never decides what runs on a machine: no launch command, image, invocation or raw
serve args, and only engine flags from `PROJECT_ENGINE_ARGS` (tuning, nothing that loads code,
reads a path on the machine or moves the engine off loopback).

Resolution is scoped: the caller's project's templates first, then the published ones; another
project's template is never a candidate. Without a version the highest *active* version of a
name is chosen; `deprecated` and `draft` versions run only when named by exact version. One name
on several models is ambiguous unless the request names the model: a 400 listing the choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from neobatch.common.errors import InvalidInput
from neobatch.console.catalog.rules import latest_version
from neobatch.console.catalog.schemas import TemplateSpec
from neobatch.console.errors import Forbidden

Document = dict[str, Any]
EVERY_PROJECT = "*"

# vLLM flags a project's own template may pass (as `engine_args` keys, `-`/`_` alike).
PROJECT_ENGINE_ARGS = frozenset(
    {
        "max-model-len",
        "gpu-memory-utilization",
        "max-num-seqs",
        "max-num-batched-tokens",
        "dtype",
        "quantization",
        "kv-cache-dtype",
        "enforce-eager",
        "enable-prefix-caching",
        "enable-chunked-prefill",
        "seed",
        "swap-space",
        "block-size",
        "max-logprobs",
        "disable-log-requests",
        "disable-log-stats",
        "cpu-offload-gb",
        "max-seq-len-to-capture",
        "enable-expert-parallel",
        "revision",
    }
)


class AmbiguousTemplate(InvalidInput):
    code = "ambiguous_template"


def template_owner(
    *, is_operator: bool, project: str, private: bool, allowed: Sequence[str]
) -> str | None:
    """The `project` a new template is stored under (None: published), or 403."""
    if is_operator and not private:
        return None
    if is_operator or EVERY_PROJECT in allowed or project in allowed:
        return project
    raise Forbidden(
        "creating a deployment template needs an operator key (this project may not own "
        "private templates)",
        code="operator_only",
    )


def check_project_spec(spec: TemplateSpec) -> None:
    """What a project's own template may not set: 403 `operator_only_field` naming it."""
    engine = spec.engine
    refused = [
        field
        for field, value in (
            ("spec.engine.command", engine.command),
            ("spec.engine.image", engine.image),
            ("spec.engine.invocation", engine.invocation),
            ("spec.engine.serve_args", engine.serve_args),
        )
        if value
    ]
    refused += [
        f"spec.engine_args.{key}"
        for key in spec.engine_args
        if key.lstrip("-").replace("_", "-") not in PROJECT_ENGINE_ARGS
    ]
    if refused:
        raise Forbidden(
            f"{', '.join(refused)}: only an operator's template may set what runs on a machine",
            code="operator_only_field",
        )


def _tier(candidates: Iterable[Document], project: str) -> list[Document]:
    """The caller's project's own candidates if it has any, else the published ones."""
    rows = list(candidates)
    own = [t for t in rows if t.get("project") == project]
    return own or [t for t in rows if not t.get("project")]


def _describe(templates: Iterable[Document]) -> str:
    return ", ".join(
        sorted(f"{t['name']} {t['version']} (model_id {t['model_id']})" for t in templates)
    )


def choose_by_name(candidates: Sequence[Document], version: str, project: str) -> Document | None:
    """The template `name` (all candidates carry it) resolves to for `project`, or None.

    `candidates`: the name's templates the caller may see (its project's and the published
    ones), already narrowed to a model and an exact version when the request gave them.
    """
    rows = candidates if version else [t for t in candidates if t.get("status") == "active"]
    by_model: dict[str, list[Document]] = {}
    for template in _tier(rows, project):
        by_model.setdefault(template["model_id"], []).append(template)
    chosen = [latest_version(group) for group in by_model.values()]
    found = [t for t in chosen if t is not None]
    if len(found) > 1:
        raise AmbiguousTemplate(
            f"template {found[0]['name']!r} is published for several models: {_describe(found)}; "
            "name the model (model_id) or a template of one model"
        )
    return found[0] if found else None


def choose_by_model(
    served: str, templates: Sequence[Document], models: dict[str, Document], project: str
) -> Document | None:
    """The template a batch whose lines all name model `served` runs on, or None.

    `templates`: the active templates (visible to the caller) of the models serving `served`;
    `models`: those models by id. Versions of one template count once (the highest active);
    of several templates, the one a model marks as its `default_template` wins; else a 400
    naming the choices.
    """
    groups: dict[tuple[str, str], list[Document]] = {}
    for template in _tier(templates, project):
        groups.setdefault((template["model_id"], template["name"]), []).append(template)
    latest = [t for t in (latest_version(g) for g in groups.values()) if t is not None]
    if len(latest) <= 1:
        return latest[0] if latest else None
    defaults = [
        t for t in latest if (models.get(t["model_id"]) or {}).get("default_template") == t["name"]
    ]
    if len(defaults) == 1:
        return defaults[0]
    raise AmbiguousTemplate(
        f"model {served!r} has several deployment templates and no default: "
        f"{_describe(latest)}; set metadata neobatch.template_name (or model_template_name)"
    )


def serves(model: Document | None, template: Document, served: str) -> bool:
    """Whether `template` serves `served` as `body.model`: the model's serving name, else the
    template's model_source.uri (jobs.rules.serving_name)."""
    if model and model.get("serving_name"):
        return bool(model["serving_name"] == served)
    return bool((template.get("spec", {}).get("model_source") or {}).get("uri") == served)

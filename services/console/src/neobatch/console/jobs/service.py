"""Creating and cancelling jobs, shared by the AIBrix (`/api/v1/jobs`) and OpenAI
(`/v1/batches`) routes: load what the rules need, apply them, save.

Everything a job needs is checked before anything is written, so a rejected request leaves
no job and no event behind. The input file's lines are validated here, streaming, so a broken
file gives a `failed` job at once (OpenAI shows it as a failed batch with line-numbered
errors) and nothing is provisioned for it.

The template (catalog/access.py decides): the one the request names (the caller's project's,
else the published one); with none named, the one active template of the model every input
line names in `body.model` (so the plain OpenAI SDK needs no metadata); else the configured
default template.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from neobatch.common.batch_input import (
    MAX_INPUT_BYTES,
    MAX_LINE_BYTES,
    MAX_REQUESTS,
    InputValidator,
    ValidationReport,
)
from neobatch.common.budget_store import BudgetStore, month_start
from neobatch.common.costing import TokenTally
from neobatch.common.errors import InvalidInput
from neobatch.common.ids import new_id
from neobatch.common.throughput_store import ThroughputStore
from neobatch.console.catalog import access
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.errors import OverBudget, QuotaExceeded, QuoteExceedsCap, Unprocessable
from neobatch.console.files.store import FileStore
from neobatch.console.jobs import quote as quoting
from neobatch.console.jobs import rules
from neobatch.console.jobs.retry_rules import RetryLink
from neobatch.console.jobs.schemas import DEFAULT_MAX_REPLICAS, CreateJob
from neobatch.console.jobs.store import JobStore
from neobatch.console.jobs.window import check_minimum_window, parse_completion_window
from neobatch.console.keys.auth import Caller
from neobatch.console.quotas import QuotaStore

# What a client told it is over its queued-jobs quota should wait before trying again: jobs
# leave the queue as machines free, in minutes rather than seconds.
QUOTA_RETRY_SECONDS = 60

Document = dict[str, Any]
# How many of the models an input names an error lists.
MAX_MODELS_SHOWN = 8
# What a job whose input failed validation records when no template could be chosen: it never
# runs, so nothing is leased for it.
NO_TEMPLATE: Document = {"_id": None, "model_id": "", "name": "", "version": "", "spec": {}}


class JobService:
    """What both job APIs do to jobs; routes translate their bodies and views around it."""

    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        catalog: CatalogStore,
        *,
        default_template: str,
        min_window_seconds: int = 60,
        providers: tuple[str, ...] = ("ssh",),
        quotas: QuotaStore | None = None,
        max_queued_jobs: int = 0,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_requests: int = MAX_REQUESTS,
        max_input_bytes: int = MAX_INPUT_BYTES,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        throughput: ThroughputStore | None = None,
        budgets: BudgetStore | None = None,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._catalog = catalog
        # The providers `PROVISIONER` configures; a job naming another is refused at create.
        self._providers = providers
        self._quotas = quotas
        self._max_queued_jobs = max_queued_jobs
        # Template used when a request names none (DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE).
        self._default_template = default_template
        self._min_window_seconds = min_window_seconds
        self._limits = InputLimits(max_line_bytes, max_requests, max_input_bytes)
        # NEOBATCH_MAX_REPLICAS: the most machines one job may ask for.
        self._max_replicas = max_replicas
        self._throughput = throughput
        self._budgets = budgets

    async def create_job(
        self,
        request: CreateJob,
        caller: Caller,
        now: datetime,
        *,
        retry: RetryLink | None = None,
    ) -> Document:
        """Validate `request`, store the job with its events, return the stored document.
        With `retry` the job is a retry of another (`retry_rules`): linked to it, stored only
        while the original's retries allow it."""
        self._check_request(request)
        queued_limit = await self._queued_limit(caller.project)
        if queued_limit and await self._jobs.count_queued(caller.project, queued_limit) >= (
            queued_limit
        ):
            # Before reading the file: a project at its quota costs one count.
            raise _quota_exceeded(caller.project, queued_limit)
        await self._check_budget(caller.project, now)
        template, report, tally = await self._read_input(request, caller)
        if request.max_cost_usd is not None and report.ok:
            quote = await self._quote(request, template, tally)
            if quoting.over_cap(quote):
                raise QuoteExceedsCap(
                    f"max_cost_usd: the job is expected to cost ${quote.expected_cost_usd:.4f} "
                    f"at best, over its cap of ${request.max_cost_usd:.4f}",
                    quote=quote,
                )
        job = rules.build_job_doc(
            job_id=(retry.job_id if retry else None) or new_id("job"),
            batch_id=new_id("batch"),
            owner=caller.owner,
            project=caller.project,
            request=request,
            template=template,
            model=await self._catalog.find_model(template["model_id"]),
            replicas=rules.replicas_for(request, template["spec"], self._max_replicas),
            report=report,
            now=now,
        )
        if retry is not None:
            job.update(retry.fields())
        events = rules.creation_events(job, now)
        # The quota is checked again where it is exact: in the insert's transaction.
        check = retry.check if retry is not None else None
        if not await self._jobs.insert_job(
            job, events, now, queued_limit=queued_limit, check_retries=check
        ):
            raise _quota_exceeded(caller.project, queued_limit)
        return job

    async def quote_job(self, request: CreateJob, caller: Caller) -> quoting.Quote:
        """What the job would cost on each candidate offer (`dry_run`): the same checks as a
        create, the file streamed once; nothing is stored, queued or leased."""
        self._check_request(request)
        template, report, tally = await self._read_input(request, caller)
        if not report.ok:
            raise Unprocessable(f"input_dataset: {report.summary()}", code=_failed_code(report))
        return await self._quote(request, template, tally)

    def _check_request(self, request: CreateJob) -> None:
        window = request.completion_window
        try:
            check_minimum_window(parse_completion_window(window), self._min_window_seconds, window)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        if request.provider is not None and request.provider not in self._providers:
            raise InvalidInput(
                f"provider: {request.provider!r} is not configured; "
                f"choose one of {', '.join(self._providers)}",
                code="unknown_provider",
            )
        rules.check_replicas(request, self._max_replicas)

    async def _read_input(
        self, request: CreateJob, caller: Caller
    ) -> tuple[Document, ValidationReport, TokenTally]:
        """The job's template, its input's validation report and token tally (one pass)."""
        await _check_input_file(self._files, request.input_dataset, caller)
        endpoint = request.endpoint
        tally = TokenTally()
        if request.model_template_name:
            template = await _named_template(self._catalog, request, caller.project)
            report, _ = await _validate_lines(
                self._files, request.input_dataset, endpoint, self._limits, tally
            )
        else:
            # The lines say which model they are for: read them first.
            report, served = await _validate_lines(
                self._files, request.input_dataset, endpoint, self._limits, tally
            )
            template = await _template_for_lines(
                self._catalog, request, caller.project, served, self._default_template, report
            )
        supported = template["spec"].get("supported_endpoints") or []
        if not rules.supports_endpoint(supported, endpoint):
            raise Unprocessable(
                f"endpoint: {endpoint!r} is not supported by template "
                f"{template['name']!r} {template['version']!r}",
                code="unsupported_endpoint",
            )
        return template, report, tally

    async def _quote(
        self, request: CreateJob, template: Document, tally: TokenTally
    ) -> quoting.Quote:
        spec = template["spec"]
        families, _ = quoting.accepted(spec)
        key = str(template.get("_id") or "")
        learned: dict[str, float] = {}
        per_request = None
        if self._throughput is not None and key:
            learned = await self._throughput.list_learned(key, families)
            per_request = await self._throughput.find_tokens_per_request(key)
        providers = [request.provider] if request.provider else list(self._providers)
        return quoting.build_quote(
            template=template,
            providers=providers,
            tally=tally,
            offers=await self._catalog.list_offers(None, None),
            learned_throughput=learned,
            learned_tokens_per_request=per_request,
            max_cost_usd=request.max_cost_usd,
            machines=rules.replicas_for(request, spec, self._max_replicas),
        )

    async def _check_budget(self, project: str, now: datetime) -> None:
        """403 `project_over_budget` when the project spent its monthly budget."""
        if self._budgets is None:
            return
        budget = await self._budgets.find_budget(project)
        limit = budget.get("monthly_usd")
        if limit is None:
            return
        spent = await self._budgets.find_month_spend(project, month_start(now), now)
        if spent >= limit:
            raise OverBudget(
                f"project {project!r} spent ${spent:.4f} this month, its monthly budget is "
                f"${float(limit):.4f}; an operator may raise it "
                f"(PUT /api/v1/projects/{project}/budget)"
            )

    async def _queued_limit(self, project: str) -> int:
        """The project's queued-jobs quota (its override, else the setting); 0: none."""
        override = await self._quotas.find_max_queued_jobs(project) if self._quotas else None
        limit = self._max_queued_jobs if override is None else override
        return max(limit, 0)

    async def request_cancel(self, job: Document, caller: Caller, now: datetime) -> Document:
        """Record a cancel request (any key of the job's project, or an operator; a no-op on a
        terminal job); returns the job as stored."""
        events = rules.cancel_events(job, caller.scope, now)
        # Recorded once; a repeated cancel or a job that just ended changes nothing.
        if events and await self._jobs.save_cancel_request(job["_id"], events, now):
            return await self._jobs.get_job(job["_id"], caller.scope)
        return job


def _quota_exceeded(project: str, limit: int) -> QuotaExceeded:
    """429 `quota_exceeded`: the project already has its quota of queued jobs."""
    return QuotaExceeded(
        f"project {project!r} already has {limit} queued jobs (its quota); "
        "retry when some have started",
        retry_after=QUOTA_RETRY_SECONDS,
    )


async def _check_input_file(files: FileStore, file_id: str, caller: Caller) -> None:
    # Another project's file reads as missing: its existence is not the caller's business.
    info = await files.find_file(file_id, caller.project)
    if info is None:
        raise InvalidInput(f"input_dataset: file {file_id!r} not found", code="file_not_found")
    if info.purpose != "batch":
        raise Unprocessable(
            f"input_dataset: file {file_id!r} has purpose {info.purpose!r}, not 'batch'",
            code="invalid_file_purpose",
        )


def _not_found(message: str) -> InvalidInput:
    return InvalidInput(message, code="template_not_found")


async def _named_template(catalog: CatalogStore, request: CreateJob, project: str) -> Document:
    """The template the request names, as `project` sees it."""
    name, version, model_id = (
        request.model_template_name,
        request.model_template_version,
        request.model_id,
    )
    if model_id and await catalog.find_model(model_id) is None:
        raise InvalidInput(f"model_id: model {model_id!r} not found", code="model_not_found")
    candidates = await catalog.list_named_templates(name, version, model_id, project)
    template = access.choose_by_name(candidates, version, project)
    if template is None:
        scope = f" for model {model_id!r}" if model_id else ""
        raise _not_found(
            f"model_template_name: template {name!r} ({version or 'latest active'}){scope} "
            "not found"
        )
    return template


async def _template_for_lines(
    catalog: CatalogStore,
    request: CreateJob,
    project: str,
    served: list[str],
    default: str,
    report: ValidationReport,
) -> Document:
    """No template named: the one for the model the lines name, else the configured default.

    A file whose lines fail validation still gives a (failed) job: its template is then only
    a label, so the default one or none at all will do.
    """
    if len(served) > 1:
        shown = ", ".join(repr(name) for name in served[:MAX_MODELS_SHOWN])
        raise InvalidInput(
            f"the input lines name several models ({shown}); a batch runs one model",
            code="multiple_models",
        )
    if served:
        templates = await catalog.list_serving_templates(served[0], project)
        models = await catalog.list_models_by_id([t["model_id"] for t in templates])
        templates = [t for t in templates if access.serves(models.get(t["model_id"]), t, served[0])]
        template = access.choose_by_model(served[0], templates, models, project)
        if template is not None:
            return template
    if default:
        defaulted = msgspec.structs.replace(request, model_template_name=default)
        return await _named_template(catalog, defaulted, project)
    if not report.ok:
        return NO_TEMPLATE
    if served:
        raise _not_found(
            f"no active deployment template serves model {served[0]!r}; set metadata "
            "neobatch.template_name (or model_template_name)"
        )
    raise _not_found("model_template_name is required (no default template is configured)")


class _ServedModel(msgspec.Struct):
    """The one field of a request body template resolution reads (the rest is skipped)."""

    model: str | None = None


_SERVED_MODEL = msgspec.json.Decoder(_ServedModel)


def served_model(body: dict[str, Any] | msgspec.Raw) -> str | None:
    """`body.model` of a line the validator accepted (its body is raw JSON text)."""
    if isinstance(body, dict):
        model = body.get("model")
        return model if isinstance(model, str) else None
    try:
        return _SERVED_MODEL.decode(body).model
    except msgspec.ValidationError:
        return None  # not a string: the engine answers that line with its own 400


def _failed_code(report: ValidationReport) -> str:
    return "empty_file" if report.invalid_lines == 0 else "invalid_input_file"


class InputLimits(NamedTuple):
    """The operator's bounds on a batch input (NEOBATCH_MAX_INPUT_LINE_BYTES,
    NEOBATCH_MAX_BATCH_REQUESTS, NEOBATCH_MAX_BATCH_INPUT_BYTES)."""

    line_bytes: int
    requests: int
    total_bytes: int


async def _validate_lines(
    files: FileStore,
    file_id: str,
    endpoint: str,
    limits: InputLimits,
    tally: TokenTally | None = None,
) -> tuple[ValidationReport, list[str]]:
    """Stream the file once, the work per line bounded (`batch_input`): the validation report
    and the models the valid lines name (`body.model`, first seen first, at most
    MAX_MODELS_SHOWN + 1); each valid body is fed to `tally` (the quote's token estimate)."""
    validator = InputValidator(
        endpoint,
        max_line_bytes=limits.line_bytes,
        max_requests=limits.requests,
        max_bytes=limits.total_bytes,
    )
    served: list[str] = []
    index = 0
    async for raw in files.iter_lines(file_id, limits.line_bytes):
        request = validator.feed(index, raw)
        index += 1
        if request is not None and tally is not None:
            tally.feed(request.body)
        if request is not None and len(served) <= MAX_MODELS_SHOWN:
            model = served_model(request.body)
            if model and model not in served:
                served.append(model)
    return validator.report(), served

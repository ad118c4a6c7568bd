"""OpenAI-format output and error files, built from the checkpoints in input order.

File ids derive from the batch id, and `filestore.save_file` replaces an existing file, so an
agent that crashed half-way through writing (or a second agent after a lease hand-over)
rewrites the same two files instead of leaving duplicates. Lines are streamed into the file
store in chunks; the engine's response bodies are embedded as stored, never re-encoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common import filestore
from neobatch.common.contracts import Usage
from neobatch.runtime_agent.batch.batches import ResultFiles
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.reading import iter_results

CHUNK_BYTES = 256 * 1024
OUTPUT_PURPOSE = "batch_output"
Document = dict[str, Any]


class _Response(msgspec.Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _Error(msgspec.Struct):
    code: str
    message: str


class _Line(msgspec.Struct):
    id: str
    custom_id: str
    response: _Response | None
    error: _Error | None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _EngineUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # vLLM sends it (null unless started with --enable-prompt-tokens-details).
    prompt_tokens_details: _PromptDetails | None = None


class _UsageOnly(msgspec.Struct):
    """Just the `usage` of an engine reply; every other key is skipped while decoding."""

    usage: _EngineUsage | None = None


_USAGE_DECODER = msgspec.json.Decoder(_UsageOnly)


class UsageSum:
    """Token usage summed over successful responses (OpenAI batch `usage`)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0
        self.cached_tokens = 0

    def add(self, body: bytes | None) -> None:
        if not body:
            return
        try:
            usage = _USAGE_DECODER.decode(body).usage
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # A reply without well-formed usage counts nothing, but is still output.
        if usage is None:
            return
        self.input_tokens += usage.prompt_tokens
        self.output_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        if usage.prompt_tokens_details is not None:
            self.cached_tokens += usage.prompt_tokens_details.cached_tokens or 0

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.total_tokens,
            cached_tokens=self.cached_tokens,
        )


def file_ids(batch_id: str) -> tuple[str, str]:
    """(output file id, error file id) for a batch: deterministic, so rewrites replace."""
    key = batch_id.removeprefix("batch_")
    return f"file_{key}_output", f"file_{key}_error"


def request_line_id(batch_id: str, line_index: int) -> str:
    digest = hashlib.sha256(f"{batch_id}:{line_index}".encode()).hexdigest()
    return f"batch_req_{digest[:32]}"


def render_line(batch_id: str, result: RequestResult) -> bytes:
    """One JSONL line: `response` when the engine answered, `error` when it could not."""
    response = None
    if result.status_code is not None and result.body is not None:
        response = _Response(result.status_code, result.request_id, msgspec.Raw(result.body))
    error = None
    if result.error_code:
        error = _Error(result.error_code, result.error_message)
    line = _Line(request_line_id(batch_id, result.line_index), result.custom_id, response, error)
    return msgspec.json.encode(line) + b"\n"


async def _chunks(
    batch_id: str, results: AsyncIterator[RequestResult], usage: UsageSum
) -> AsyncIterator[bytes]:
    pending = bytearray()
    async for result in results:
        if result.ok:
            usage.add(result.body)
        pending += render_line(batch_id, result)
        if len(pending) >= CHUNK_BYTES:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


async def write_result_files(
    db: AsyncDatabase[Document],
    results: AsyncCollection[Document],
    batch_id: str,
    *,
    owner: str,
    completed: int,
    failed: int,
) -> ResultFiles:
    """Write the output file (if anything succeeded) and the error file (if anything failed).

    Returns their ids (None for a file that has no lines, as OpenAI leaves it unset) and the
    token usage summed over the output file's responses while it is written.
    """
    output_id, error_id = file_ids(batch_id)
    usage = UsageSum()
    written: list[str | None] = []
    for file_id, ok, count, suffix in (
        (output_id, True, completed, "output"),
        (error_id, False, failed, "error"),
    ):
        if count <= 0:
            written.append(None)
            continue
        await filestore.save_file(
            db,
            file_id,
            f"{batch_id}_{suffix}.jsonl",
            _chunks(batch_id, iter_results(results, batch_id, ok=ok), usage),
            purpose=OUTPUT_PURPOSE,
            owner=owner,
        )
        written.append(file_id)
    return ResultFiles(written[0], written[1], usage.usage())

"""Retrying a job's failed and unfinished lines (issue 18): read what the rules need, write the
new input file, create the job through the one creation path (`JobService.create_job`).

The new input is a file of the caller's project (purpose `batch`, listed in /api/v1/files),
streamed through the same checks and size limit as an upload; if the job is not created after
all (a check refused it, or an equal retry won a race) the file is deleted again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from neobatch.common.errors import Conflict
from neobatch.common.filestore import new_file_id
from neobatch.console.files.store import FileStore
from neobatch.console.files.uploads import checked_chunks
from neobatch.console.jobs import retry_rules as rules
from neobatch.console.jobs.schemas import RetryJob
from neobatch.console.jobs.service import JobService
from neobatch.console.jobs.store import JobStore
from neobatch.console.keys.auth import Caller

Document = dict[str, Any]
# Lines of a result file are the agent's, each response bounded by NEOBATCH_MAX_RESPONSE_BYTES
# (at most 16 MiB); a longer line is not ours and is passed over.
MAX_RESULT_LINE_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 256 * 1024


class _Reader:
    """An async iterator of chunks as the `read()` the upload checks take."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def read(self, size: int = -1) -> bytes:
        return await anext(self._chunks, b"")


class RetryService:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        creator: JobService,
        *,
        max_upload_bytes: int,
        max_line_bytes: int,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._creator = creator
        self._max_upload_bytes = max_upload_bytes
        self._max_line_bytes = max_line_bytes

    async def retry(
        self,
        job_id: str,
        request: RetryJob | None,
        caller: Caller,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> Document:
        """The retry of `job_id` (of the caller's own project: another's is 404, operators
        included, since the new job is the caller's): made now, or the one that answers
        this request already."""
        original = await self._jobs.get_job(job_id, caller.project)
        rules.check_retryable(original)
        link = rules.RetryLink(
            original["_id"],
            rules.overrides_of(request),
            idempotency_key,
            rules.retry_job_id(caller.project, idempotency_key),
        )
        try:
            return await self._replayed(link, caller) or await self._create(
                original, request, link, caller, now
            )
        except rules.RetryExists as exists:
            # The rules saw a few fields of it: answer the whole job.
            return await self._jobs.get_job(exists.job["_id"], caller.project)

    async def _replayed(self, link: rules.RetryLink, caller: Caller) -> Document | None:
        """What this request already made (its key's job), or a running equal retry."""
        if link.job_id is not None:
            existing = await self._jobs.find_job(link.job_id, caller.project)
            if existing is not None:
                return rules.check_replay(existing, link.original_id)
        # Checked again, exactly, when the new job is stored; here it saves writing a file.
        link.check(await self._jobs.list_retries(link.original_id))
        return None

    async def _create(
        self,
        original: Document,
        request: RetryJob | None,
        link: rules.RetryLink,
        caller: Caller,
        now: datetime,
    ) -> Document:
        if await self._files.find_file(original["input_dataset"], None) is None:
            raise Conflict(
                f"the input file {original['input_dataset']!r} of job {original['_id']!r} was "
                "deleted; there are no lines to copy",
                code="input_file_deleted",
            )
        file_id = new_file_id()
        await self._files.upload_file(
            file_id,
            f"retry-of-{original['_id']}.jsonl",
            checked_chunks(
                _Reader(self._retry_lines(original, await self._succeeded(original))),
                self._max_upload_bytes,
                self._max_line_bytes,
            ),
            purpose="batch",
            owner=caller.owner,
            project=caller.project,
        )
        try:
            job_request = rules.retry_request(original, request, file_id)
            return await self._creator.create_job(job_request, caller, now, retry=link)
        except DuplicateKeyError:
            await self._delete(file_id)
            if link.job_id is None:
                raise
            # The same Idempotency-Key made the job meanwhile: answer that one.
            existing = await self._jobs.get_job(str(link.job_id), caller.project)
            return rules.check_replay(existing, link.original_id)
        except BaseException:
            await self._delete(file_id)
            raise

    async def _delete(self, file_id: str) -> None:
        with contextlib.suppress(Exception):
            await self._files.delete_file(file_id)

    async def _succeeded(self, original: Document) -> set[str]:
        """The custom ids the original finished well: in its output file, not in its error
        file (its own files, read whatever key wrote them: the job is the caller's)."""
        output = await self._custom_ids(original.get("output_dataset"))
        errors = await self._custom_ids(original.get("error_dataset"))
        return rules.succeeded_ids(output, errors)

    async def _custom_ids(self, file_id: str | None) -> list[str]:
        if not file_id:
            return []
        if await self._files.find_file(file_id, None) is None:
            # Without it, which lines succeeded is unknown: retrying all would pay twice.
            raise Conflict(
                f"the result file {file_id!r} was deleted; which lines succeeded is unknown",
                code="result_file_deleted",
            )
        found = []
        async for raw in self._files.iter_lines(file_id, MAX_RESULT_LINE_BYTES):
            custom_id = rules.custom_id_of(raw)
            if custom_id is not None:
                found.append(custom_id)
        return found

    async def _retry_lines(self, original: Document, succeeded: set[str]) -> AsyncIterator[bytes]:
        """The retry's input, in chunks: the original's lines the selector keeps, as they were.
        Raises `nothing_to_retry` (aborting the file) when it keeps none."""
        selector = rules.LineSelector(succeeded)
        pending = bytearray()
        index = 0
        async for raw in self._files.iter_lines(original["input_dataset"], self._max_line_bytes):
            kept = selector.feed(index, raw)
            index += 1
            if kept is not None:
                pending += kept
            if len(pending) >= CHUNK_BYTES:
                yield bytes(pending)
                pending.clear()
        if not selector.selected:
            raise rules.nothing_to_retry(original["_id"])
        if pending:
            yield bytes(pending)

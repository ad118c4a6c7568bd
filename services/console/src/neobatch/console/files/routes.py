"""Batch files on both surfaces: AIBrix `/api/v1/files` (§1.7) and OpenAI `/v1/files` (§3.1).

One set of handlers serves both. The surfaces differ in two things only, given by
`file_router`: where an upload is posted (`/files/upload` on AIBrix, `/files` on OpenAI) and
the list's page size (AIBrix pages by 20, up to 100; OpenAI by 100, up to 10,000).
Files live in the shared file store, scoped to the caller's project: another project's file
answers 404 exactly like a missing one. An operator key reads and lists every project's files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Annotated, Literal

from litestar import Controller, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, MultipartBody, QueryParameter
from litestar.response import Stream

from neobatch.common.errors import InvalidInput
from neobatch.common.filestore import FileInfo, new_file_id
from neobatch.console.files.schemas import FileDeleted, FileList, FileOut, UploadForm
from neobatch.console.files.store import FileStore
from neobatch.console.files.uploads import check_filename, checked_chunks
from neobatch.console.keys.auth import Caller
from neobatch.console.paging import page_ends
from neobatch.console.settings import ConsoleSettings
from neobatch.console.wire import unix_seconds

# Room for the multipart envelope (boundaries, part headers, the purpose field) on top of
# the file itself, so a file of exactly the limit is still accepted.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")

Order = Literal["asc", "desc"]


def file_out(info: FileInfo) -> FileOut:
    return FileOut(
        id=info.id,
        bytes=info.bytes,
        created_at=unix_seconds(info.created_at),
        filename=info.filename,
        purpose=info.purpose,
    )


async def upload_file(
    data: MultipartBody[UploadForm],
    file_store: NamedDependency[FileStore],
    settings: NamedDependency[ConsoleSettings],
    caller: NamedDependency[Caller],
) -> FileOut:
    # Litestar has already spooled the part to a temporary file (on disk past 1 MiB);
    # from there it is read and stored chunk by chunk.
    upload = data.file
    try:
        if data.purpose != "batch":
            raise InvalidInput(f"purpose: {data.purpose!r} is not supported; use 'batch'")
        # A client-side path is not part of the name.
        filename = PurePosixPath(upload.filename.replace("\\", "/")).name
        check_filename(filename)
        info = await file_store.upload_file(
            new_file_id(),
            filename,
            checked_chunks(upload, settings.max_upload_bytes, settings.common.max_input_line_bytes),
            purpose=data.purpose,
            owner=caller.owner,
            project=caller.project,
        )
    finally:
        await upload.close()
    return file_out(info)


class FileController(Controller):
    """Reading, listing and deleting files: the same on both surfaces."""

    path = "/files"

    @get("/")
    async def list_files(
        self,
        file_store: NamedDependency[FileStore],
        caller: NamedDependency[Caller],
        page_limit: NamedDependency[int],
        purpose: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        order: FromQuery[Order] = "desc",
    ) -> FileList:
        infos, has_more = await file_store.list_files(
            caller.scope,
            purpose=purpose or "",
            limit=page_limit,
            after=after,
            ascending=order == "asc",
        )
        data = [file_out(i) for i in infos]
        return FileList(data=data, has_more=has_more, **page_ends(data))

    @get("/{file_id:str}")
    async def get_file(
        self,
        file_id: FromPath[str],
        file_store: NamedDependency[FileStore],
        caller: NamedDependency[Caller],
    ) -> FileOut:
        return file_out(await file_store.get_file(file_id, caller.scope))

    @get("/{file_id:str}/content")
    async def get_file_content(
        self,
        file_id: FromPath[str],
        file_store: NamedDependency[FileStore],
        caller: NamedDependency[Caller],
    ) -> Stream:
        info = await file_store.get_file(file_id, caller.scope)
        media_type = (
            "application/jsonl"
            if info.filename.lower().endswith(".jsonl")
            else "application/octet-stream"
        )
        safe_name = _UNSAFE_FILENAME.sub("_", info.filename) or info.id
        return Stream(
            file_store.iter_content(file_id),
            media_type=media_type,
            headers={
                "content-disposition": f'attachment; filename="{safe_name}"',
                "content-length": str(info.bytes),
            },
        )

    @delete("/{file_id:str}", status_code=200)
    async def delete_file(
        self,
        file_id: FromPath[str],
        file_store: NamedDependency[FileStore],
        caller: NamedDependency[Caller],
    ) -> FileDeleted:
        await file_store.get_file(file_id, caller.project)
        await file_store.delete_file(file_id)
        return FileDeleted(id=file_id)


# A surface's page size, as a dependency: the query parameter keeps its own bounds (a 400
# past them) and its place in the OpenAPI document.
def aibrix_page_limit(limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20) -> int:
    return limit


# OpenAI allows pages up to 10,000; by default a page is 100 (the SDK follows `has_more`).
def openai_page_limit(limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100) -> int:
    return limit


def file_router(
    *, upload_path: str, page_limit: Callable[..., int], max_upload_bytes: int
) -> Router:
    """The file routes of one surface, with a body limit sized for uploads (JSON routes keep
    the default)."""
    return Router(
        path="/",
        route_handlers=[
            FileController,
            post(upload_path, status_code=200)(upload_file),
        ],
        dependencies={"page_limit": Provide(page_limit, sync_to_thread=False)},
        request_max_body_size=max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

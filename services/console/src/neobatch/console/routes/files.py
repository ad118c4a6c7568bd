"""Batch files on both surfaces: AIBrix `/api/v1/files` (§1.7) and OpenAI `/v1/files` (§3.1).

Files live in the shared file store, scoped to the caller's project: another project's file
answers 404 exactly like a missing one.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from litestar import Controller, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, MultipartBody, QueryParameter
from litestar.response import Stream

from neobatch.common.errors import InvalidInput, NotFound
from neobatch.common.filestore import FileInfo, new_file_id
from neobatch.console.auth import Caller, rate_limited
from neobatch.console.schemas import FileDeleted, FileList, FileOut, UploadForm
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore
from neobatch.console.uploads import check_filename, checked_chunks

# Room for the multipart envelope (boundaries, part headers, the purpose field) on top of
# the file itself, so a file of exactly the limit is still accepted.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")


def file_out(info: FileInfo) -> FileOut:
    return FileOut(
        id=info.id,
        bytes=info.bytes,
        created_at=int(info.created_at.timestamp()),
        filename=info.filename,
        purpose=info.purpose,
    )


async def owned_file(store: ConsoleStore, file_id: str, caller: Caller) -> FileInfo:
    info = await store.find_file(file_id, caller.project)
    if info is None:
        raise NotFound(f"file {file_id!r} not found", code="file_not_found")
    return info


async def _upload(
    data: UploadForm, store: ConsoleStore, settings: ConsoleSettings, caller: Caller
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
        info = await store.save_file(
            new_file_id(),
            filename,
            checked_chunks(upload, settings.max_upload_bytes),
            purpose=data.purpose,
            owner=caller.owner,
        )
        await store.set_file_project(info.id, caller.project)
    finally:
        await upload.close()
    return file_out(info)


async def _content(store: ConsoleStore, file_id: str, caller: Caller) -> Stream:
    info = await owned_file(store, file_id, caller)
    media_type = (
        "application/jsonl"
        if info.filename.lower().endswith(".jsonl")
        else "application/octet-stream"
    )
    safe_name = _UNSAFE_FILENAME.sub("_", info.filename) or info.id
    return Stream(
        store.iter_file(file_id),
        media_type=media_type,
        headers={
            "content-disposition": f'attachment; filename="{safe_name}"',
            "content-length": str(info.bytes),
        },
    )


async def _delete(store: ConsoleStore, file_id: str, caller: Caller) -> FileDeleted:
    await owned_file(store, file_id, caller)
    await store.delete_file(file_id)
    return FileDeleted(id=file_id)


async def _list(
    store: ConsoleStore,
    caller: Caller,
    *,
    purpose: str | None,
    limit: int,
    after: str | None,
    order: str,
) -> FileList:
    infos, has_more = await store.list_files(
        caller.project, purpose=purpose or "", limit=limit, after=after, ascending=order == "asc"
    )
    data = [file_out(i) for i in infos]
    return FileList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


Order = Literal["asc", "desc"]


class FileController(Controller):
    """AIBrix console routes."""

    path = "/files"

    @post("/upload", status_code=200, guards=[rate_limited])
    async def upload_file(
        self,
        data: MultipartBody[UploadForm],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        caller: NamedDependency[Caller],
    ) -> FileOut:
        return await _upload(data, store, settings, caller)

    @get("/")
    async def list_files(
        self,
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
        purpose: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
        order: FromQuery[Order] = "desc",
    ) -> FileList:
        return await _list(store, caller, purpose=purpose, limit=limit, after=after, order=order)

    @get("/{file_id:str}")
    async def get_file(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> FileOut:
        return file_out(await owned_file(store, file_id, caller))

    @get("/{file_id:str}/content")
    async def get_file_content(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> Stream:
        return await _content(store, file_id, caller)

    @delete("/{file_id:str}", status_code=200)
    async def delete_file(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> FileDeleted:
        return await _delete(store, file_id, caller)


class OpenAIFileController(Controller):
    """OpenAI Files API: what `client.files.*` calls."""

    path = "/files"

    @post("/", status_code=200, guards=[rate_limited])
    async def create_file(
        self,
        data: MultipartBody[UploadForm],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        caller: NamedDependency[Caller],
    ) -> FileOut:
        return await _upload(data, store, settings, caller)

    @get("/")
    async def list_files(
        self,
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
        purpose: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 10_000,
        after: FromQuery[str | None] = None,
        order: FromQuery[Order] = "desc",
    ) -> FileList:
        return await _list(store, caller, purpose=purpose, limit=limit, after=after, order=order)

    @get("/{file_id:str}")
    async def retrieve_file(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> FileOut:
        return file_out(await owned_file(store, file_id, caller))

    @get("/{file_id:str}/content")
    async def file_content(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> Stream:
        return await _content(store, file_id, caller)

    @delete("/{file_id:str}", status_code=200)
    async def delete_file(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> FileDeleted:
        return await _delete(store, file_id, caller)


def file_router(controller: type[Controller], max_upload_bytes: int) -> Router:
    """File routes, with a body limit sized for uploads (JSON routes keep the default)."""
    return Router(
        path="/",
        route_handlers=[controller],
        request_max_body_size=max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

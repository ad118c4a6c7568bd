"""Batch files (aibrix-reference §1.7), kept in the shared file store instead of proxied."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from litestar import Controller, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, MultipartBody
from litestar.response import Stream

from neobatch.common.errors import InvalidInput, NotFound
from neobatch.common.filestore import FileInfo, new_file_id
from neobatch.console.errors import Forbidden
from neobatch.console.schemas import FileOut, UploadForm
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


async def _owned_file(store: ConsoleStore, file_id: str, owner: str) -> FileInfo:
    info = await store.find_file(file_id)
    if info is None:
        raise NotFound(f"file {file_id!r} not found", code="file_not_found")
    # Inputs and outputs are user data: only the caller who owns them may read them.
    if info.owner and info.owner != owner:
        raise Forbidden(f"file {file_id!r} belongs to another caller")
    return info


class FileController(Controller):
    path = "/files"

    @post("/upload", status_code=200)
    async def upload_file(
        self,
        data: MultipartBody[UploadForm],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        owner: NamedDependency[str],
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
                owner=owner,
            )
        finally:
            await upload.close()
        return file_out(info)

    @get("/{file_id:str}")
    async def get_file(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        owner: NamedDependency[str],
    ) -> FileOut:
        return file_out(await _owned_file(store, file_id, owner))

    @get("/{file_id:str}/content")
    async def get_file_content(
        self,
        file_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        owner: NamedDependency[str],
    ) -> Stream:
        info = await _owned_file(store, file_id, owner)
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


def file_router(max_upload_bytes: int) -> Router:
    """The file routes, with a body limit sized for uploads (JSON routes keep the default)."""
    return Router(
        path="/",
        route_handlers=[FileController],
        request_max_body_size=max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )

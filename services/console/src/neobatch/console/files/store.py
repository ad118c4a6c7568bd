"""FileStore: batch files in the shared file store (GridFS, `neobatch.common.filestore`),
scoped to a project.

An upload carries its project; a file the runtime-agent writes carries only the owner key it
was made for, and that key's project decides. GridFS's own verbs are kept for what is not a
document read or a compare-and-set: an upload, a stream, a delete.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common import filestore
from neobatch.common.errors import NotFound
from neobatch.common.filestore import FileInfo
from neobatch.console.keys.store import KeyStore
from neobatch.console.page_store import find_page

Document = dict[str, Any]

FILES = f"{filestore.BUCKET}.files"


class FileStore:
    def __init__(self, db: AsyncDatabase[Document], keys: KeyStore) -> None:
        self._db = db
        self._keys = keys

    async def upload_file(
        self,
        file_id: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        *,
        purpose: str,
        owner: str,
        project: str,
    ) -> FileInfo:
        """Stream `chunks` into the file store; if anything fails, nothing is left behind."""
        try:
            info = await filestore.save_file(
                self._db, file_id, filename, chunks, purpose=purpose, owner=owner
            )
        except BaseException:
            # save_file aborts its upload stream, but a failure while closing it could still
            # leave a partial file; deleting an absent file is harmless.
            with contextlib.suppress(Exception):
                await filestore.delete_file(self._db, file_id)
            raise
        await self._db[FILES].update_one({"_id": file_id}, {"$set": {"metadata.project": project}})
        return info

    async def find_file(self, file_id: str, project: str | None) -> FileInfo | None:
        """The file if it belongs to `project` (None: any project, for operators), else None
        (another project's file is as missing)."""
        doc = await self._db[FILES].find_one({"_id": file_id})
        if doc is None:
            return None
        if project is None:
            return await filestore.find_file(self._db, file_id)
        meta = doc.get("metadata") or {}
        owner_project = meta.get("project")
        if owner_project is None and meta.get("owner"):
            key = await self._keys.find_key(meta["owner"])
            owner_project = key["project"] if key else None
        if owner_project != project:
            return None
        return await filestore.find_file(self._db, file_id)

    async def get_file(self, file_id: str, project: str | None) -> FileInfo:
        info = await self.find_file(file_id, project)
        if info is None:
            raise NotFound(f"file {file_id!r} not found", code="file_not_found")
        return info

    async def list_files(
        self, project: str | None, *, purpose: str, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileInfo], bool]:
        """A page of `project`'s files (None: every project's, for operators) by upload time,
        after the file `after` (an unknown one, or one outside the scope, gives an empty page);
        and whether more follow. The page is one query whatever its size: the rows are the
        file documents themselves."""
        scope: Document = {}
        if project is not None:
            keys = await self._keys.list_key_ids(project)
            scope["$or"] = [
                {"metadata.project": project},
                {"metadata.project": None, "metadata.owner": {"$in": keys}},
            ]
        if purpose:
            scope["metadata.purpose"] = purpose
        docs, has_more = await find_page(
            self._db[FILES],
            scope,
            after={"_id": after} if after else None,
            limit=limit,
            field="uploadDate",
            ascending=ascending,
        )
        return [filestore.file_info(doc) for doc in docs], has_more

    async def delete_file(self, file_id: str) -> bool:
        return await filestore.delete_file(self._db, file_id)

    def iter_lines(self, file_id: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        return filestore.iter_lines(self._db, file_id, max_line_bytes)

    def iter_content(self, file_id: str) -> AsyncIterator[bytes]:
        return filestore.iter_file(self._db, file_id)

"""Batch files on both surfaces: the upload form and OpenAI's file object."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from litestar.datastructures import UploadFile

from neobatch.console.paging import PageEnds


@dataclass
class UploadForm:
    # A dataclass, because Litestar fills multipart forms into dataclasses with UploadFile.
    file: UploadFile
    purpose: str = "batch"


class FileOut(msgspec.Struct, kw_only=True):
    """OpenAI's file object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[FileOut]


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "file"
    deleted: bool = True

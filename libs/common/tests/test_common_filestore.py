"""The file store against a real MongoDB-wire server: chunked round trips, lines, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from neobatch.common import filestore
from neobatch.common.errors import NotFound

CHUNK = filestore.CHUNK_BYTES


async def _save(db, content: bytes, piece: int = 100_000) -> str:
    file_id = filestore.new_file_id()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), piece):
            yield content[start : start + piece]

    info = await filestore.save_file(
        db, file_id, "x.jsonl", chunks(), purpose="batch", owner="user-1"
    )
    assert info.bytes == len(content)
    return file_id


async def _read(db, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in filestore.iter_file(db, file_id)])


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 20 * CHUNK + 7])
async def test_content_round_trips_across_chunk_boundaries(mongo_db, size: int) -> None:
    content = bytes(i % 251 for i in range(size))
    file_id = await _save(mongo_db, content)
    chunks = [chunk async for chunk in filestore.iter_file(mongo_db, file_id)]
    assert b"".join(chunks) == content
    assert all(len(c) == CHUNK for c in chunks[:-1])  # streamed chunk by chunk


async def test_lines_split_across_chunks_come_back_whole(mongo_db) -> None:
    lines = [(b"%d:" % i) + b"x" * (i * 997 % 5000) for i in range(2000)]
    file_id = await _save(mongo_db, b"\n".join(lines))  # no newline after the last line
    assert [line async for line in filestore.iter_lines(mongo_db, file_id)] == lines


async def test_a_missing_file_is_not_found(mongo_db) -> None:
    with pytest.raises(NotFound):
        await _read(mongo_db, "file-missing")


async def test_a_missing_chunk_is_an_error_not_a_short_file(mongo_db) -> None:
    file_id = await _save(mongo_db, b"a" * (3 * CHUNK))
    await mongo_db[f"{filestore.BUCKET}.chunks"].delete_one({"files_id": file_id, "n": 1})
    with pytest.raises(filestore.CorruptFile, match="chunk 1"):
        await _read(mongo_db, file_id)
    await mongo_db[f"{filestore.BUCKET}.chunks"].delete_many({"files_id": file_id, "n": 2})
    with pytest.raises(filestore.CorruptFile):
        await _read(mongo_db, file_id)


async def test_saving_again_replaces_the_file(mongo_db) -> None:
    file_id = await _save(mongo_db, b"old\n" * 100_000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"new\n"

    await filestore.save_file(mongo_db, file_id, "x", chunks(), purpose="batch", owner="u")
    assert await _read(mongo_db, file_id) == b"new\n"


async def test_a_failed_upload_leaves_nothing_behind(mongo_db) -> None:
    file_id = filestore.new_file_id()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * CHUNK
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await filestore.save_file(mongo_db, file_id, "x", chunks(), purpose="batch", owner="u")
    assert await filestore.find_file(mongo_db, file_id) is None
    assert await mongo_db[f"{filestore.BUCKET}.chunks"].count_documents({"files_id": file_id}) == 0


async def test_files_are_readable_by_gridfs_itself(mongo_db) -> None:
    content = bytes(range(256)) * 3000
    file_id = await _save(mongo_db, content)
    stream = await filestore.bucket(mongo_db).open_download_stream(file_id)
    assert await stream.read() == content
    info = await filestore.get_file(mongo_db, file_id)
    assert (info.filename, info.purpose, info.owner, info.bytes) == (
        "x.jsonl",
        "batch",
        "user-1",
        len(content),
    )
    assert await filestore.delete_file(mongo_db, file_id)
    assert await mongo_db[f"{filestore.BUCKET}.chunks"].count_documents({"files_id": file_id}) == 0


async def test_split_lines_cuts_an_over_long_line_and_skips_the_rest() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b'{"a":1}\n{"b":', b"x" * 50, b"y" * 50 + b'}\n{"c"', b":3}"):
            yield piece

    lines = [line async for line in filestore.split_lines(chunks(), max_line_bytes=10)]
    assert lines == [b'{"a":1}', b'{"b":' + b"x" * 6, b'{"c":3}']


async def test_an_over_long_line_is_cut_as_it_streams_not_after_it_is_held_whole() -> None:
    # A hostile 100 MB line must not be held: its head is yielded once the cap is passed,
    # while the rest of the line is still unread (the reader's memory is one cap + one chunk).
    chunk = b"x" * 1024
    read = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(1000):
            read += 1
            yield chunk
        yield b"\n{}\n"

    lines = filestore.split_lines(chunks(), max_line_bytes=4096)
    head = await anext(lines)
    assert head == b"x" * 4097
    assert read <= 5, f"{read} chunks of the line were buffered before its head came out"
    assert [line async for line in lines] == [b"{}"]

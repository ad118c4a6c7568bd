"""An upload is spooled to `NEOBATCH_SPOOL_DIR`; a full spool is a clean 507 JSON error, never a
500, and leaves nothing behind (issue 13: the k8s console spooled 200 MiB uploads to a 64 Mi
memory volume and a 70 MB upload got a 500 ENOSPC).

The spool is a real 2 MiB tmpfs where the test may mount one (root, as in CI), so the write
fails with the kernel's own ENOSPC; elsewhere the spool's write raises OSError(ENOSPC)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from litestar.datastructures import UploadFile
from litestar.testing import AsyncTestClient

from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings

SPOOL_BYTES = 2 * 1024 * 1024


def _jsonl(size: int) -> bytes:
    line = b'{"custom_id":"r","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}\n'
    return line * (size // len(line) + 1)


@contextlib.contextmanager
def _small_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_BYTES}", "tmpfs", str(spool)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        # No tmpfs: the spool's write fails as a full disk's would, past SPOOL_BYTES.
        written: dict[int, int] = {}
        real_write = UploadFile.write

        async def write(self: UploadFile, data: bytes) -> int:
            total = written.get(id(self), 0) + len(data)
            written[id(self)] = total
            if self.rolled_to_disk and total > SPOOL_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return await real_write(self, data)

        monkeypatch.setattr(UploadFile, "write", write)
    try:
        yield spool
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(spool)], check=False)


@pytest_asyncio.fixture
async def spool_api(
    api: Any, console_settings: ConsoleSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    with _small_spool(tmp_path, monkeypatch) as spool:
        settings = msgspec.structs.replace(console_settings, spool_dir=str(spool))
        async with AsyncTestClient(app=create_app(settings)) as client:
            yield type(api)(client, api.db, settings)


async def test_a_full_spool_is_a_507_and_the_next_upload_fits(spool_api: Any) -> None:
    api = spool_api
    r = await api.upload(_jsonl(3 * SPOOL_BYTES // 2))
    assert r.status_code == 507, r.text
    assert r.json()["code"] == "spool_full"
    assert "NEOBATCH_SPOOL_DIR" not in r.json()["message"]  # an operator's detail, in the log
    assert await api.count("files.files") == 0
    assert await api.count("files.chunks") == 0
    # The failed upload's spool file is gone: an upload nearly the spool's size fits.
    content = _jsonl(SPOOL_BYTES * 3 // 4)
    r = await api.upload(content)
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(content)


async def test_uploads_spool_to_the_configured_directory(
    api: Any, console_settings: ConsoleSettings, tmp_path: Path
) -> None:
    """Past Litestar's 1 MiB in-memory part, the upload is on disk in NEOBATCH_SPOOL_DIR."""
    spool = tmp_path / "spool"
    spool.mkdir()
    seen: list[str] = []
    real_write = UploadFile.write

    async def write(self: UploadFile, data: bytes) -> int:
        result = await real_write(self, data)
        if self.rolled_to_disk:
            seen.append(os.path.dirname(os.readlink(f"/proc/self/fd/{self.file.fileno()}")))
        return result

    settings = msgspec.structs.replace(console_settings, spool_dir=str(spool))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UploadFile, "write", write)
        async with AsyncTestClient(app=create_app(settings)) as client:
            r = await type(api)(client, api.db, settings).upload(_jsonl(3 * 1024 * 1024))
    assert r.status_code == 200, r.text
    assert seen and {s.removesuffix(" (deleted)") for s in seen} == {str(spool)}
    assert tempfile.gettempdir() != str(spool)  # restored after the app stopped

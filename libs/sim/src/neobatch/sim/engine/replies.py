"""Deterministic OpenAI-style replies: a pure function of (path, request body, engine settings).

Everything a reply contains (id, created, content, token counts, embeddings) is derived from a
sha256 of the canonical JSON of the request, so a test can compute the exact body the simulator
will answer with ``expected_body`` and compare whole bodies, and a failed request replays the same.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

DEFAULT_MODEL = "sim-model"
DEFAULT_EMBEDDING_DIMENSIONS = 16
MAX_EMBEDDING_DIMENSIONS = 4096
MAX_CHOICES = 128

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
API_PATHS = (CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH)

# A fixed, plausible epoch so "created" looks like a real timestamp yet stays deterministic.
_CREATED_BASE = 1_700_000_000
_CREATED_SPAN = 100_000_000


class BadRequest(ValueError):
    """The request body is not something an OpenAI-compatible engine would accept."""


@dataclass(frozen=True, slots=True)
class SimResponse:
    status: int
    body: dict[str, Any]


def canonical_json(value: Any) -> bytes:
    # Sorted keys and no whitespace: equal dicts always hash equal, whatever key order they had.
    return msgspec.json.encode(value, order="sorted")


def error_body(message: str, error_type: str, code: int, param: str | None = None) -> dict:
    """OpenAI (and current vLLM) error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def api_path(url: str) -> str:
    """Accept a full URL or a bare path; compare paths without a trailing slash."""
    path = urlsplit(url).path or "/"
    return path.rstrip("/") or "/"


def is_injected_failure(path: str, canonical: bytes, failure_rate: float, seed: int) -> bool:
    """Seeded hash of the request decides, so the same request fails the same way every time."""
    if failure_rate <= 0:
        return False
    if failure_rate >= 1:
        return True
    digest = hashlib.sha256(f"fail:{seed}:{path}\n".encode() + canonical).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < failure_rate


def compute_response(
    url: str,
    body: Any,
    *,
    served_model: str | None = DEFAULT_MODEL,
    failure_rate: float = 0.0,
    seed: int = 0,
) -> SimResponse:
    """The status and body the simulator answers for ``body`` POSTed to ``url``.

    ``served_model=None`` accepts whatever model the body names (used by ``expected_body``).
    """
    path = api_path(url)
    handler = _HANDLERS.get(path)
    if handler is None:
        return SimResponse(404, error_body(f"Not Found: {path}", "NotFoundError", 404))
    if not isinstance(body, dict):
        return SimResponse(
            400, error_body("request body must be a JSON object", "BadRequestError", 400)
        )
    model = body.get("model") or served_model or DEFAULT_MODEL
    if served_model is not None and model != served_model:
        # Same wording vLLM uses for a model it does not serve.
        message = f"The model `{model}` does not exist."
        return SimResponse(404, error_body(message, "NotFoundError", 404, "model"))
    canonical = canonical_json(body)
    if is_injected_failure(path, canonical, failure_rate, seed):
        return SimResponse(500, error_body("simulated engine failure", "InternalServerError", 500))
    try:
        if body.get("stream"):
            raise BadRequest("stream=true is not supported by the engine simulator")
        request_digest = hashlib.sha256(f"{path}\n".encode() + canonical).hexdigest()
        return SimResponse(200, handler(body, model, request_digest))
    except (BadRequest, TypeError, ValueError) as exc:
        return SimResponse(400, error_body(str(exc), "BadRequestError", 400))


def expected_body(
    url: str,
    body: dict,
    *,
    served_model: str | None = None,
    failure_rate: float = 0.0,
    seed: int = 0,
) -> dict:
    """Exactly the JSON body the simulator answers for ``body`` POSTed to ``url``.

    By default any model named in the body is treated as served and no failures are injected;
    pass the server's settings to predict 404/500 bodies as well.
    """
    return compute_response(
        url, body, served_model=served_model, failure_rate=failure_rate, seed=seed
    ).body


def _created(request_digest: str) -> int:
    return _CREATED_BASE + int(request_digest[:12], 16) % _CREATED_SPAN


def _choice_count(body: dict) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer between 1 and {MAX_CHOICES}")
    return n


def _text(seed_value: Any, index: int) -> str:
    digest = hashlib.sha256(b"content:%d:" % index + canonical_json(seed_value)).hexdigest()
    return "sim:" + digest[:24]


def _words(value: Any) -> int:
    """Token stand-in: whitespace-separated words in every text part of a message content."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(part) for part in value)
    if isinstance(value, dict):
        return _words(value.get("text"))
    return 0


def _usage(prompt_tokens: int, completion_tokens: int | None = None) -> dict:
    if completion_tokens is None:
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat(body: dict, model: str, request_digest: str) -> dict:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    prompt_tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        prompt_tokens += _words(message.get("content"))
    choices = []
    completion_tokens = 0
    for index in range(_choice_count(body)):
        content = _text(messages, index)
        completion_tokens += _words(content)
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        )
    return {
        "id": "chatcmpl-sim" + request_digest[:24],
        "object": "chat.completion",
        "created": _created(request_digest),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def _split_inputs(value: Any, field: str) -> list[str | list[int]]:
    """OpenAI accepts a string, a list of strings, a token list, or a list of token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return [value]
        if all(isinstance(item, list) and item for item in value):
            return list(value)
    raise BadRequest(f"{field} must be a string, a list of strings, or token id lists")


def _input_tokens(item: str | list[int]) -> int:
    return _words(item) if isinstance(item, str) else len(item)


def _completions(body: dict, model: str, request_digest: str) -> dict:
    prompts = _split_inputs(body.get("prompt"), "prompt")
    n = _choice_count(body)
    choices = []
    completion_tokens = 0
    for prompt_index, prompt in enumerate(prompts):
        for choice in range(n):
            text = _text(prompt, choice)
            completion_tokens += _words(text)
            choices.append(
                {
                    "index": prompt_index * n + choice,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            )
    return {
        "id": "cmpl-sim" + request_digest[:24],
        "object": "text_completion",
        "created": _created(request_digest),
        "model": model,
        "choices": choices,
        "usage": _usage(sum(_input_tokens(p) for p in prompts), completion_tokens),
    }


def _dimensions(body: dict) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dims, int) or isinstance(dims, bool):
        raise BadRequest("dimensions must be an integer")
    if not 1 <= dims <= MAX_EMBEDDING_DIMENSIONS:
        raise BadRequest(f"dimensions must be between 1 and {MAX_EMBEDDING_DIMENSIONS}")
    return dims


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """Unit vector seeded by the input's hash; rounded so JSON stays small and exact."""
    seed = hashlib.sha256(b"embedding:" + canonical_json(item)).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _embeddings(body: dict, model: str, request_digest: str) -> dict:
    inputs = _split_inputs(body.get("input"), "input")
    dims = _dimensions(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'")
    data = []
    for index, item in enumerate(inputs):
        vector: list[float] | str = embedding_vector(item, dims)
        if encoding == "base64":
            # The openai client asks for base64 by default: little-endian float32, like OpenAI.
            packed = struct.pack(f"<{dims}f", *vector)
            vector = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return {
        "id": "embd-sim" + request_digest[:24],
        "object": "list",
        "created": _created(request_digest),
        "model": model,
        "data": data,
        "usage": _usage(sum(_input_tokens(item) for item in inputs)),
    }


_HANDLERS = {CHAT_PATH: _chat, COMPLETIONS_PATH: _completions, EMBEDDINGS_PATH: _embeddings}

"""The oversize fault: answers far larger than any LLM output, to test the agent's response cap.

Which requests get one is a seeded hash of the request (like `failure_rate` in "request" mode),
so a test predicts them with `is_oversize`. The answer is a well-formed chat completion whose
content is padded to `size` bytes, sent with a `Content-Length` ("length") or chunked
("chunked"), written in 1 MiB pieces from one shared buffer: the simulator's own memory stays
small however large the answer, and a client that hangs up ends the write.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from neobatch.sim.engine.replies import api_path, canonical_json

TRANSFERS = ("length", "chunked")
_PIECE = 1024 * 1024
_PAD = b"x" * _PIECE


def is_oversize(url: str, body: object, rate: float, seed: int = 0) -> bool:
    """Whether the simulator answers `body` POSTed to `url` with an oversize body."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    canonical = canonical_json(body)
    digest = hashlib.sha256(f"oversize:{seed}:{api_path(url)}\n".encode() + canonical).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


async def send_oversize(
    request: web.Request, model: str, size: int, transfer: str
) -> web.StreamResponse:
    head = (
        b'{"id":"chatcmpl-oversize","object":"chat.completion","created":0,"model":'
        + canonical_json(model)
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = b'"},"finish_reason":"length"}]}'
    pad = max(0, size - len(head) - len(tail))
    reply = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if transfer == "chunked":
        reply.enable_chunked_encoding()
    else:
        reply.content_length = len(head) + pad + len(tail)
    try:
        await reply.prepare(request)
        await reply.write(head)
        while pad > 0:
            piece = min(pad, _PIECE)
            await reply.write(_PAD[:piece] if piece < _PIECE else _PAD)
            pad -= piece
        await reply.write(tail)
        await reply.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client hung up (what a capped client does): nothing more to send
    return reply

"""The HTTP sender (aiohttp): one POST of a signed webhook, guarded against server-side request
forgery at connection time.

Every host name is resolved by `CheckingResolver`, which refuses the whole host when any address
it resolves to is outside the URL policy, and aiohttp then connects to those checked addresses
(TLS still verifies the certificate against the name); an IP literal is checked by the caller
(`check_url`) since aiohttp does not resolve it. No DNS cache (a rebinding answer is checked
too), no redirects followed, no proxy from the environment, a whole-attempt timeout, and at most
`max_response_bytes` of the answer read.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from neobatch.common.webhooks import UrlPolicy, UrlRefused, check_addresses

USER_AGENT = "neobatch-webhooks/1"


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    status_code: int | None
    latency_ms: int
    error: str | None = None
    retry_after: str | None = None
    # The URL policy refused an address the host resolved to.
    refused: bool = False


class CheckingResolver(AbstractResolver):
    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses([r["host"] for r in results], self._policy)
        return results

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    def __init__(
        self, policy: UrlPolicy, *, timeout_seconds: float, max_response_bytes: int, limit: int
    ) -> None:
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_seconds, connect=min(5.0, timeout_seconds)
        )
        self._max_bytes = max_response_bytes
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=CheckingResolver(self._policy),
                use_dns_cache=False,
                limit=self._limit,
                family=socket.AF_UNSPEC,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        sent = {**headers, "content-type": "application/json", "user-agent": USER_AGENT}
        try:
            async with self._client().post(
                url, data=body, headers=sent, allow_redirects=False
            ) as response:
                await response.content.read(self._max_bytes)
                return Answer(
                    status_code=response.status,
                    latency_ms=took(),
                    retry_after=response.headers.get("retry-after"),
                )
        except UrlRefused as refused:
            return Answer(status_code=None, latency_ms=took(), error=refused.message, refused=True)
        except TimeoutError:
            return Answer(status_code=None, latency_ms=took(), error="timed out")
        except aiohttp.ClientConnectorError as exc:
            cause: Any = exc.__cause__ or exc.os_error
            if isinstance(cause, UrlRefused):
                return Answer(
                    status_code=None, latency_ms=took(), error=cause.message, refused=True
                )
            return Answer(
                status_code=None,
                latency_ms=took(),
                error=f"connection failed: {exc.strerror or type(exc).__name__}",
            )
        except (aiohttp.ClientError, OSError) as exc:
            return Answer(status_code=None, latency_ms=took(), error=f"{type(exc).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

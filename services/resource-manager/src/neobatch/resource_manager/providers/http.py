"""HTTP plumbing shared by the cloud providers: auth, timeouts, backoff, error classification.

Idempotent calls (GET, DELETE, terminate) are retried on 429, 5xx and transport errors with
exponential backoff (honouring ``Retry-After``) within ``budget_seconds``; a create is never
retried here, because after an ambiguous failure the caller must list by name first. Messages
never carry the API key: it only lives in the client's headers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from neobatch.common.logs import redact_text
from neobatch.resource_manager.providers.base import (
    ProviderError,
    RateLimited,
    TransientProviderError,
)

ErrorText = Callable[[httpx.Response], str]


class ApiError(ProviderError):
    """A definite 4xx answer; the parsed body is kept for the provider to classify."""

    code = "ProviderRejected"

    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.body = body


class Account(Protocol):
    """Where a provider's API is and the key it takes (RunPodSettings, LambdaCloudSettings)."""

    base_url: str
    api_key: str


class ApiClient:
    """One provider's API: bearer-key auth, and `error_text` to read its error bodies."""

    def __init__(
        self,
        provider: str,
        account: Account,
        error_text: ErrorText,
        *,
        budget_seconds: float,
        timeout_seconds: float = 15.0,
    ) -> None:
        self._provider = provider
        self._client = httpx.AsyncClient(
            base_url=account.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {account.api_key}"},
            timeout=httpx.Timeout(timeout_seconds, connect=5.0),
            trust_env=False,
        )
        self._error_text = error_text
        self._budget = budget_seconds

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self, method: str, path: str, *, json: Any = None, params: Any = None, retry: bool = True
    ) -> httpx.Response:
        """The response for a 2xx or 404; ProviderError subclasses for anything else."""
        deadline = time.monotonic() + self._budget
        delay = 0.1
        while True:
            try:
                response = await self._client.request(method, path, json=json, params=params)
            except httpx.HTTPError as error:
                failure: ProviderError = TransientProviderError(
                    f"{self._provider} {method} {path}: {type(error).__name__}"
                )
                wait = delay
            else:
                if response.status_code < 400 or response.status_code == 404:
                    return response
                failure = self._classify(method, path, response)
                wait = max(delay, _retry_after(response))
            if not (retry and failure.retryable) or time.monotonic() + wait > deadline:
                raise failure
            await asyncio.sleep(wait)
            delay = min(delay * 2, 2.0)

    def _classify(self, method: str, path: str, response: httpx.Response) -> ProviderError:
        text = redact_text(self._error_text(response))[:300]
        message = f"{self._provider} {method} {path}: HTTP {response.status_code} {text}"
        if response.status_code == 429:
            return RateLimited(message)
        if response.status_code >= 500:
            return TransientProviderError(message)
        try:
            body = response.json()
        except ValueError:
            body = None
        return ApiError(message, body)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "0")), 30.0)
    except ValueError:
        return 0.0

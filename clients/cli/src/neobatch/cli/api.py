"""The console's public API, as the CLI calls it (nothing private: the same routes as curl).

Every non-2xx answer becomes a `CliError` carrying the server's `code` and `message`; transport
failures become `unavailable`. The key travels only in the Authorization header, so it never
appears in a URL, an error or a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from neobatch.cli.config import Config
from neobatch.cli.errors import CliError, ExitCode

USER_AGENT = "neobatch-cli/0.1"
PAGE_LIMIT = 100  # the console's largest page
MAX_PAGES = 50  # bounds every "all of them" walk (5,000 rows)


class ProgressReader:
    """A file object that reports how many bytes httpx has read from it (upload progress)."""

    def __init__(self, file: IO[bytes], advance: Callable[[int], None]) -> None:
        self._file = file
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._advance(len(chunk))
        return chunk

    def seek(self, *args: Any) -> int:
        return self._file.seek(*args)

    def tell(self) -> int:
        return self._file.tell()


class Api:
    def __init__(
        self,
        config: Config,
        timeout_seconds: float = 60,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.console_url = config.console_url
        self._http = httpx.Client(
            base_url=config.console_url,
            headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout_seconds, connect=10),
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one place requests are made ---------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise CliError(
                f"the console at {self.console_url} did not answer in time ({method} {path})",
                code="timeout",
                exit_code=ExitCode.UNAVAILABLE,
            ) from None
        except httpx.TransportError as error:
            raise CliError(
                f"cannot reach the console at {self.console_url}: {type(error).__name__}",
                code="unreachable",
                exit_code=ExitCode.UNAVAILABLE,
            ) from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the console answered {method} {path} with something that is not JSON",
                code="bad_response",
                exit_code=ExitCode.UNAVAILABLE,
            ) from None

    # --- files ------------------------------------------------------------------------------

    def upload(self, path: Path, advance: Callable[[int], None]) -> dict[str, Any]:
        with open(path, "rb") as file:
            reader = ProgressReader(file, advance)
            files = {"file": (path.name, reader, "application/jsonl")}
            return self._json(
                "POST", "/api/v1/files/upload", data={"purpose": "batch"}, files=files
            )

    def download(self, file_id: str, target: Path, advance: Callable[[int], None]) -> int:
        """Stream a file's content to `target` (written whole or not at all); its size."""
        partial = target.with_name(target.name + ".part")
        written = 0
        try:
            with self._http.stream("GET", f"/api/v1/files/{quote(file_id)}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                        advance(len(chunk))
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise CliError(
                f"download of {file_id} broke off: {type(error).__name__}",
                code="unreachable",
                exit_code=ExitCode.UNAVAILABLE,
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return written

    # --- jobs -------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/api/v1/jobs", json=body)

    def quote_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job's quote (`dry_run`): nothing is stored, queued or leased."""
        return self._json("POST", "/api/v1/jobs", json={**body, "dry_run": True})

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/api/v1/files/{quote(file_id)}")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{quote(job_id)}")

    def jobs(self, limit: int, after: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return self._json("GET", "/api/v1/jobs", params=params)

    def retry(self, job_id: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """A new job re-running `job_id`'s failed and unfinished lines (the same key again
        answers the job it made)."""
        return self._json(
            "POST",
            f"/api/v1/jobs/{quote(job_id)}/retry",
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/jobs/{quote(job_id)}/cancel", json={})

    # --- catalog ----------------------------------------------------------------------------

    def models(self) -> Iterator[dict[str, Any]]:
        yield from self._pages("/api/v1/models", "data")

    def model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/models/{quote(model_id)}")

    def create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/api/v1/models", json=body)

    def templates(self, model_id: str, name: str = "") -> Iterator[dict[str, Any]]:
        params = {"name": name} if name else {}
        yield from self._pages(
            f"/api/v1/models/{quote(model_id)}/deployment-templates", "data", params
        )

    def template_by_name(self, model_id: str, name: str, version: str) -> dict[str, Any]:
        path = f"/api/v1/models/{quote(model_id)}/deployment-templates/by-name/{quote(name)}"
        return self._json("GET", path, params={"version": version} if version else {})

    def create_template(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/models/{quote(model_id)}/deployment-templates"
        return self._json("POST", path, json=body)

    def _pages(
        self, path: str, key: str, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        after: str | None = None
        for _ in range(MAX_PAGES):
            query = {**(params or {}), "limit": PAGE_LIMIT, **({"after": after} if after else {})}
            page = self._json("GET", path, params=query)
            yield from page.get(key) or []
            after = page.get("last_id")
            if not page.get("has_more") or not after:
                return


def _api_error(response: httpx.Response) -> CliError:
    """The server's `{code, message}` (or what it sent instead) as a CliError."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    quoted = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        code = str(error.get("code") or code)
        message = str(error.get("message") or error.get("detail") or message)
        quoted = error.get("quote") if isinstance(error.get("quote"), dict) else None
    server_side = response.status_code >= 500
    return CliError(
        message[:2000],
        code=code,
        status=response.status_code,
        exit_code=ExitCode.UNAVAILABLE if server_side else ExitCode.REFUSED,
        quote=quoted,
    )

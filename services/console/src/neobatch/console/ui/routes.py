"""Serves the web console's files (`ui/static/`) under `/ui/`, from memory.

The files are read once when the app is built, into a fixed table of relative path → bytes:
a request names a key of that table or gets a 404, so no request path ever reaches the file
system (no traversal, no symlink, no directory listing). The pages need no server-side state:
they call the public API with the key the user typed.

Every answer carries a strict Content-Security-Policy (scripts, styles, fetches from this
origin only, no inline script or style, no framing), `nosniff` and `no-referrer`. No cookie is
ever set: the key travels in the `Authorization` header, which a browser never adds by
itself, so a cross-site request carries no credential and CSRF does not apply.
"""

from __future__ import annotations

from importlib import resources

from litestar import Response, Router, get
from litestar.params import FromPath

from neobatch.console.errors import ErrorBody

UI_PATH = "/ui"
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    # A new deployment's files are used at once; they are small.
    "cache-control": "no-cache",
}
# Litestar adds `; charset=utf-8` to text types.
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# No file of the console is near this; a bound on what is held in memory.
MAX_FILE_BYTES = 512 * 1024


class UiFile:
    __slots__ = ("body", "media_type")

    def __init__(self, body: bytes, media_type: str) -> None:
        self.body = body
        self.media_type = media_type


def load_files() -> dict[str, UiFile]:
    """Every servable file of `static/` by its path relative to it (`js/app.js`)."""
    root = resources.files("neobatch.console.ui") / "static"
    files: dict[str, UiFile] = {}

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
                continue
            media_type = _TYPES.get("." + child.name.rsplit(".", 1)[-1])
            if media_type is None:
                continue
            body = child.read_bytes()
            if len(body) > MAX_FILE_BYTES:
                raise ValueError(f"web console file {name} is over {MAX_FILE_BYTES} bytes")
            files[name] = UiFile(body, media_type)

    walk(root, "")
    return files


def _answer(file: UiFile | None, path: str) -> Response[bytes] | Response[ErrorBody]:
    if file is None:
        body = ErrorBody(code="not_found", message=f"no web console file {path!r}")
        return Response(body, status_code=404, headers=SECURITY_HEADERS)
    return Response(file.body, media_type=file.media_type, headers=SECURITY_HEADERS)


def ui_router() -> Router:
    """`/ui/` (the page; which view it shows is in the URL's fragment, `#/jobs/<id>`) and
    `/ui/<file>`: no key needed, outside the OpenAPI document."""
    files = load_files()

    @get(["/", "/index.html"], include_in_schema=False, sync_to_thread=False)
    def ui_index() -> Response[bytes] | Response[ErrorBody]:
        return _answer(files.get("index.html"), "index.html")

    @get("/{file_path:path}", include_in_schema=False, sync_to_thread=False)
    def ui_file(file_path: FromPath[str]) -> Response[bytes] | Response[ErrorBody]:
        path = file_path.lstrip("/")
        return _answer(files.get(path), path)

    return Router(path=UI_PATH, route_handlers=[ui_index, ui_file], include_in_schema=False)

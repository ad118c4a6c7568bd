"""The web console's files (`/ui/`) and the API it needs (issue 18): every file is served with
a strict CSP and no inline script; nothing outside the console's own files is served; the UI
is not part of the API document; the job list filters by status server-side, bounded and
validated; a job's timeline has its own route."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).parents[1] / "src" / "neobatch" / "console" / "ui" / "static"


async def test_the_page_and_its_scripts_are_served_with_a_strict_policy(api: Any) -> None:
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui", "text/html"),
        ("/ui/js/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ):
        r = await api.client.get(path)  # no key: the files are public, the data is not
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == f"{kind}; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert (
            "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        )
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in r.headers


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../app.py",
        "/ui/%2e%2e/routes.py",
        "/ui/..%2froutes.py",
        "/ui/routes.py",
        "/ui/js/",
        "/ui//etc/passwd",
    ],
)
async def test_nothing_but_the_consoles_own_files_is_served(api: Any, path: str) -> None:
    r = await api.client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert "import" not in r.text and "root:" not in r.text


async def test_the_ui_is_not_part_of_the_api_document(api: Any) -> None:
    paths = (await api.client.get("/schema/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]
    assert "/api/v1/jobs/{job_id}/events" in paths


def test_pages_have_no_inline_script_and_scripts_never_write_html() -> None:
    """What the CSP enforces in a browser, checked in the source too; and API data only ever
    reaches the page as text (`textContent`), never parsed as HTML."""
    index = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", index), "inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", index), "inline event handler"
    assert "<style" not in index and "style=" not in index
    scripts = sorted(STATIC.rglob("*.js"))
    assert scripts
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setAttribute\(\s*['\"]on|\.on[a-z]+\s*=|document\.cookie|localStorage"
    )
    for script in scripts:
        found = sinks.findall(script.read_text())
        assert not found, f"{script.name}: {found}"


async def _jobs(api: Any, n: int) -> list[str]:
    await api.ready_template()
    return [
        (await api.post("/api/v1/jobs", await api.job_request())).json()["id"] for _ in range(n)
    ]


async def test_jobs_list_filters_by_status_and_pages_within_the_filter(api: Any) -> None:
    ids = await _jobs(api, 5)  # oldest first
    running = ids[1:4]
    await api.db["jobs"].update_many({"_id": {"$in": running}}, {"$set": {"status": "in_progress"}})
    await api.db["jobs"].update_one({"_id": ids[0]}, {"$set": {"status": "completed"}})

    r = await api.get("/api/v1/jobs", params={"status": "in_progress", "limit": 2})
    assert r.status_code == 200, r.text
    first = r.json()
    assert [j["id"] for j in first["jobs"]] == [ids[3], ids[2]] and first["has_more"] is True
    # The cursor job finishes between two pages: the next page still starts after it.
    await api.db["jobs"].update_one({"_id": ids[2]}, {"$set": {"status": "completed"}})
    second = (
        await api.get("/api/v1/jobs", params={"status": "in_progress", "limit": 2, "after": ids[2]})
    ).json()
    assert [j["id"] for j in second["jobs"]] == [ids[1]] and second["has_more"] is False

    both = await api.client.get(
        "/api/v1/jobs?status=completed&status=queued&status=completed", headers=api.auth
    )
    assert both.status_code == 200, both.text
    assert [j["id"] for j in both.json()["jobs"]] == [ids[4], ids[2], ids[0]]
    assert {j["status"] for j in both.json()["jobs"]} == {"completed", "queued"}


@pytest.mark.parametrize(
    "query",
    [
        "status=running",
        "status=",
        "status=%3Cscript%3E",
        "status=" + "queued&status=" * 20 + "queued",
    ],
)
async def test_a_bad_status_filter_is_a_400_naming_it(api: Any, query: str) -> None:
    r = await api.client.get(f"/api/v1/jobs?{query}", headers=api.auth)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request" and "status" in r.json()["message"]


async def test_a_jobs_timeline_has_its_own_route_scoped_to_the_project(api: Any) -> None:
    [job_id] = await _jobs(api, 1)
    await api.post(f"/api/v1/jobs/{job_id}/cancel", {})
    r = await api.get(f"/api/v1/jobs/{job_id}/events")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    assert [e["id"] for e in r.json()["data"]] == ["queued", "cancel_requested"]
    _, other = await api.new_key("elsewhere")
    r = await api.get(f"/api/v1/jobs/{job_id}/events", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"

"""The web console (issue 18) in a real browser: Debian's headless Chromium, driven by Selenium,
against the local stack. Log in, see a submitted job in the list (its hostile name shown as
text), watch a running job's progress move, download a completed job's output and check it,
cancel a job and see it end cancelled, filter the list by status, and an operator's templates
page (a template made from pasted YAML, the console's error code on a refusal).

Screenshots of every page go to `test-artifacts/web-console/` (git-ignored); the path is printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template
from neobatch.sim.testing import browser

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "web-console"
XSS = '<img src=x onerror="window.__xss=1">'
# 40 lines two at a time, 250 ms each: about 5 s of dispatch, reported every 1.5 s.
RUNNING_LINES = 40
SLOW = {"max_concurrency": 2, "adaptive_concurrency": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = browser.missing_reason()
    if reason:
        if browser.required():
            pytest.fail(f"{browser.REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    env = {
        "NEOBATCH_DB": "web",
        # The cancelled job's requests hang: abandoned 2 s after the cancel, not the default 30.
        "NEOBATCH_CANCEL_GRACE_SECONDS": "2",
    }
    with start_stack(tmp_path_factory.mktemp("stack"), Ports.free(), env) as started:
        yield started


@pytest.fixture(scope="module")
def templates(console: ConsoleClient, model_id: str) -> dict[str, str]:
    console.create_template(model_id, sim_engine_template("web-fast", model_id))
    console.create_template(model_id, sim_engine_template("web-steady", model_id, latency_ms=250))
    hang = sim_engine_template("web-hang", model_id, hang_rate=1.0, hang_seconds=120)
    console.create_template(model_id, hang)
    return {"fast": "web-fast", "steady": "web-steady", "hang": "web-hang"}


class Page:
    """The browser on the console, with waits that have deadlines and screenshots by name."""

    def __init__(self, driver: Any, base: str, downloads: Path) -> None:
        self.driver = driver
        self.base = base
        self.downloads = downloads
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.base}/ui/{fragment}")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        """Until `check()` is truthy (errors from a page mid-render count as not yet)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except Exception as error:  # stale or missing element while the page redraws
                last = error
            time.sleep(0.1)
        self.shot(f"timeout-{what.replace(' ', '-')}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: last {last!r}")

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def login(self, key: str) -> None:
        """A fresh session in this tab (the stored key dropped), then log in with `key`."""
        self.open()
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.refresh()
        self.wait("the login form", lambda: self.all("#api-key"))
        self.find("#api-key").send_keys(key)
        self.find("#login").click()
        self.wait("the jobs list", lambda: self.all("#jobs-body"))

    def logout(self) -> None:
        self.find("#logout").click()
        self.wait("the login form", lambda: self.all("#api-key"))
        assert self.driver.execute_script("return sessionStorage.length") == 0


@pytest.fixture(scope="module")
def page(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    downloads = tmp_path_factory.mktemp("downloads")
    driver = browser.start_chromium(downloads)
    try:
        yield Page(driver, stack.console_url, downloads)
    finally:
        driver.quit()
        print(f"web console screenshots: {ARTIFACTS}")


def _job(console: ConsoleClient, model_id: str, template: str, lines: int, **fields: Any) -> str:
    file_id = console.upload(batch_lines(lines))
    return str(console.create_job(file_id, model_id, template, **fields)["id"])


def test_login_list_a_running_job_and_download_its_output(
    page: Page, stack: Stack, console: ConsoleClient, model_id: str, templates: dict[str, str]
) -> None:
    page.open()
    page.wait("the login form", lambda: page.all("#api-key"))
    page.shot("01-login")
    page.find("#api-key").send_keys("nb-not-a-key")
    page.find("#login").click()
    page.wait("the refusal", lambda: "unauthorized" in page.text("#login-error"))
    assert page.driver.execute_script("return sessionStorage.length") == 0
    page.find("#api-key").clear()
    page.login(stack.api_key)
    # The key is in this tab's sessionStorage only: no cookie, nothing persistent.
    assert page.driver.execute_script("return sessionStorage.getItem('neobatch.apiKey')") == (
        stack.api_key
    )
    assert page.driver.get_cookies() == []
    assert page.driver.execute_script("return localStorage.length") == 0
    # The page's policy holds in the browser: an inline script put into it does not run.
    ran = page.driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        "document.body.appendChild(s); return window.__inline === 1"
    )
    assert ran is False

    job_id = _job(
        console, model_id, templates["steady"], RUNNING_LINES,
        name=f"nightly {XSS}", metadata={"team": XSS}, client=SLOW,
    )  # fmt: skip
    row = f'tr[data-job-id="{job_id}"]'
    page.wait("the new job in the list", lambda: page.all(row))
    page.wait("its name", lambda: XSS in page.text(f"{row} a"))
    page.shot("02-jobs-list")

    page.find(f"{row} a").click()
    page.wait("the job page", lambda: job_id in page.text("#job-summary"))
    # A hostile name and metadata are text: no element was made from them, nothing ran.
    assert XSS in page.text("#job-title") and XSS in page.text("#job-summary")
    assert not page.all("main img")
    assert page.driver.execute_script("return window.__xss") is None

    def completed() -> int:
        return int(page.text("#count-completed"))

    first = page.wait(
        "some lines done",
        lambda: "in_progress" in page.text("#job-status") and 0 < completed() < RUNNING_LINES
        and completed(),
    )  # fmt: skip
    page.shot("03-job-running")
    moved = page.wait(
        "progress to move while it runs",
        lambda: first < completed() < RUNNING_LINES and completed(),
    )
    assert "in_progress" in page.text("#job-status") and moved > first
    page.wait("the job to complete", lambda: "completed" in page.text("#job-status"), 60)
    assert completed() == RUNNING_LINES
    page.wait("its timeline", lambda: page.all('#job-timeline li[data-event="completed"]'))
    events = [e.get_attribute("data-event") for e in page.all("#job-timeline li")]
    assert events[0] == "queued" and events[-1] == "completed" and "in_progress" in events
    page.wait("its machine", lambda: "released" in page.text("#job-machines"), 30)
    page.shot("04-job-completed")

    page.find("#download-output").click()
    output = page.wait(
        "the downloaded output",
        lambda: [p for p in page.downloads.glob("*.jsonl") if p.stat().st_size > 0],
    )
    lines = [json.loads(x) for x in output[0].read_text().split("\n") if x.strip()]
    assert sorted(x["custom_id"] for x in lines) == sorted(
        x["custom_id"] for x in batch_lines(RUNNING_LINES)
    )
    assert all(x["response"]["status_code"] == 200 for x in lines)

    # Every line completed: nothing to retry, so no Retry button.
    assert not page.find("#retry-job").is_displayed()


def test_cancel_a_job_from_its_page_and_filter_the_list(
    page: Page, stack: Stack, console: ConsoleClient, model_id: str, templates: dict[str, str]
) -> None:
    page.login(stack.api_key)
    job_id = _job(console, model_id, templates["hang"], 4, name="to be cancelled")
    page.open(f"#/jobs/{job_id}")
    page.wait("the job to run", lambda: "in_progress" in page.text("#job-status"), 60)
    page.find("#cancel-job").click()
    page.wait("the cancel request", lambda: "Cancel requested" in page.text("#action-message"))
    page.wait("the job to end cancelled", lambda: "cancelled" in page.text("#job-status"), 60)
    assert not page.find("#cancel-job").is_displayed()
    page.shot("05-job-cancelled")

    # Its unfinished lines can be retried: a new job linked to this one (on a console without
    # the retry route, the page says it is not available and stays).
    page.find("#retry-job").click()

    def retried() -> str:
        if "not_available" in page.text("#action-message"):
            return "not available"
        return "retried" if job_id not in page.driver.current_url else ""

    cancelled = [job_id]
    if page.wait("the retry's answer", retried) == "retried":
        page.wait("the new job's link to this one", lambda: job_id in page.text("#job-summary"))
        assert "Retry of" in page.text("#job-summary")
        retry_id = page.driver.current_url.rsplit("/", 1)[-1]
        console.cancel(retry_id)  # it would hang too
        cancelled.insert(0, retry_id)  # the list is newest first
    page.shot("05b-job-retry")

    page.open("#/jobs")
    page.wait("the list", lambda: page.all(f'tr[data-job-id="{job_id}"]'))
    from selenium.webdriver.support.ui import Select

    Select(page.find("#status-filter")).select_by_value("cancelled")

    def listed() -> tuple[list[str], set[str]]:
        rows = page.all("#jobs-body tr[data-job-id]")
        statuses = {r.find_element("css selector", ".badge").text for r in rows}
        return [r.get_attribute("data-job-id") for r in rows], statuses

    # The list refreshes itself: the retry's cancel may land a refresh later.
    page.wait("the cancelled jobs only", lambda: listed() == (cancelled, {"cancelled"}))
    assert [r.get_attribute("data-job-id") for r in page.all("#jobs-body tr")] == cancelled
    page.shot("06-jobs-filtered")


TEMPLATE_YAML = """# pasted by an operator
name: web-pasted
version: v1.0.0
spec:
  engine:
    type: vllm
    command: [python, -m, neobatch.sim.engine, --port, "{port}"]
    port: 18999
  model_source: {type: local, uri: sim-chat-1b}
  accelerator:
    type: H100
    count: 1
  supported_endpoints:
    - /v1/chat/completions
"""


def test_operator_templates_page(page: Page, stack: Stack, model_id: str, templates: Any) -> None:
    page.login(stack.api_key)
    page.open("#/templates")
    page.wait("the templates", lambda: page.all('tr[data-template="web-fast@v1.0.0"]'))
    assert not page.all("#template-text")  # a project key reads; no form
    page.logout()

    page.login(stack.operator_key)
    page.open("#/templates")
    page.wait("the templates", lambda: page.all('tr[data-template="web-fast@v1.0.0"]'))
    page.find("#template-model").send_keys(model_id)
    box = page.find("#template-text")
    box.send_keys("name: x\n  bad: indentation")
    page.find("#create-template").click()
    page.wait("the YAML error", lambda: "line 2" in page.text("#template-result"))

    box.clear()
    box.send_keys(TEMPLATE_YAML)
    page.find("#create-template").click()
    page.wait("the new template", lambda: page.all('tr[data-template="web-pasted@v1.0.0"]'))
    assert "created web-pasted@v1.0.0" in page.text("#template-result")
    page.find('tr[data-template="web-pasted@v1.0.0"] button').click()
    assert '"neobatch.sim.engine"' in page.text("#template-spec")
    page.shot("07-templates-operator")

    page.find("#create-template").click()  # the same again: the console refuses, with its code
    page.wait("the refusal", lambda: "template_exists" in page.text("#template-result"))
    page.shot("08-templates-refused")
    pasted = 'tr[data-template="web-pasted@v1.0.0"]'
    page.find(f'{pasted} button[data-set-status="deprecated"]').click()
    page.wait(
        "the version deprecated", lambda: "deprecated" in page.text(f"{pasted} td:nth-child(4)")
    )
    page.open("#/models")
    page.wait("the models", lambda: model_id in page.text("#models-body"))


YAML_CASES = [
    (
        "name: a\nspec:\n  n: 1\n  f: 1.5\n  t: true\n  z: ~\n",
        {"name": "a", "spec": {"n": 1, "f": 1.5, "t": True, "z": None}},
    ),
    ("l:\n  - a\n  - 'b c'\n  - k: v\n    j: 2\n", {"l": ["a", "b c", {"k": "v", "j": 2}]}),
    (
        'c: [python, -m, "x y", "{port}"]  # note\nm: {type: local, uri: u}\n',
        {"c": ["python", "-m", "x y", "{port}"], "m": {"type": "local", "uri": "u"}},
    ),
    ("s: |\n  one\n  two\n", {"s": "one\ntwo\n"}),
    ('{"name": "json", "n": [1, 2]}', {"name": "json", "n": [1, 2]}),
    ("__proto__:\n  polluted: 1\n", {"__proto__": {"polluted": 1}}),
]
YAML_ERRORS = ["a: 1\n  b: 2", "a: 1\na: 2", "- a\nb: 1", "x: &anchor 1", "{bad", ""]


def test_the_template_reader_in_the_browser(page: Page, stack: Stack) -> None:
    """The YAML reader the templates page uses, run by the browser on a table of cases."""
    page.open()
    script = """
        const [cases, bad, done] = arguments;
        import("/ui/js/yaml.js").then((m) => {
          const read = cases.map(([text]) => JSON.stringify(m.parseTemplate(text)));
          const errors = bad.map((text) => {
            try { m.parseTemplate(text); return null; } catch (e) { return e.message; }
          });
          done({ read, errors, polluted: ({}).polluted === undefined });
        }, (e) => done({ failed: String(e) }));
    """
    result = page.driver.execute_async_script(script, YAML_CASES, YAML_ERRORS)
    assert "failed" not in result, result
    assert [json.loads(read) for read in result["read"]] == [want for _, want in YAML_CASES]
    assert all(result["errors"]), result["errors"]
    assert "line 2" in result["errors"][0] and result["polluted"] is True

"""A real browser for the web console's test: Debian's Chromium, driven by Selenium through
Debian's chromedriver (`apt-get install chromium chromium-driver`; `.ci/run` installs them).

The driver is named by path, so Selenium Manager never runs (it would try to download a browser
or driver). Where they are missing the test skips with the reason; with
``NEOBATCH_REQUIRE_BROWSER=1`` (CI) it fails instead, as the real engine's test does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

REQUIRE_ENV = "NEOBATCH_REQUIRE_BROWSER"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() == "1"


def chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromedriver() -> str | None:
    found = shutil.which("chromedriver") or CHROMEDRIVER
    return found if os.access(found, os.X_OK) else None


def missing_reason() -> str | None:
    """Why no browser can run here (None: it can)."""
    missing = [
        name
        for name, path in (("chromium", chromium()), ("chromedriver", chromedriver()))
        if path is None
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (uv sync)")
    if not missing:
        return None
    return (
        f"no {' or '.join(missing)}: install them with "
        "`apt-get install chromium chromium-driver` (root; .ci/run does it on CI)"
    )


def start_chromium(download_dir: Path, *, width: int = 1280, height: int = 1200) -> Any:
    """Headless Chromium whose downloads land in `download_dir` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium())
    for argument in (
        "--headless=new",
        # The sandbox needs user namespaces that containers (and root) often lack; the browser
        # opens only the local console under test.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(download_dir),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    service = Service(executable_path=str(chromedriver()))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver

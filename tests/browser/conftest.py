"""A real browser for the static pages: Debian's headless Chromium, driven by Selenium.

Selenium drives the chromium and chromedriver that apt installs (``.ci/run`` does), never a copy that
Selenium Manager would download. Without them, or without selenium, a test skips with the reason,
except under CI (CI set), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_module, require_tool

INSTALL_CHROMIUM = "apt-get install chromium chromium-driver"


def system_tool(name: str) -> str:
    """``name`` on PATH, else Debian's /usr/bin copy (PATH may be trimmed); missing: skip, or fail in CI."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    return path or require_tool(name, INSTALL_CHROMIUM)


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """A headless Chromium WebDriver for the session; check a page with ``page_check.page_problems``."""
    require_module("selenium", 'pip install -e ".[dev]"')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = system_tool("chromium")
    chromedriver = system_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # containers and CI runners often run as root, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,2000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console entries for get_log
    # SE_* variables (SE_CHROMEDRIVER, SE_DEBUG, SE_MANAGER_PATH, ...) would swap the driver or its
    # logging; the test uses exactly the binaries found above.
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("SE_")]:
            patch.delenv(name)
        service = Service(executable_path=chromedriver)
        driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()

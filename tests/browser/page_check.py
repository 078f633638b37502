"""What a person opening a static page would notice is broken: console errors and images that did
not load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # selenium is imported where it is used, so a machine without it skips, not errors
    from selenium.webdriver.remote.webdriver import WebDriver

# Loads lazy images too (a long page's images below the fold would otherwise never load), waits up to
# arguments[0] ms for every image to finish, and returns those that failed or are still loading: the
# src as written and the URL it resolved to.
_BROKEN_IMAGES = """
const [waitMs, done] = arguments;
const images = Array.from(document.images);
images.forEach((img) => { img.loading = "eager"; });
const settled = images.map((img) => img.complete ? null : new Promise((resolve) => {
  img.addEventListener("load", resolve, {once: true});
  img.addEventListener("error", resolve, {once: true});
}));
const timeout = new Promise((resolve) => setTimeout(resolve, waitMs));
Promise.race([Promise.all(settled), timeout]).then(() => done(images
  .filter((img) => !(img.complete && img.naturalWidth > 0))
  .map((img) => ({src: img.getAttribute("src") || img.outerHTML, url: img.currentSrc || img.src}))));
"""


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def page_problems(driver: WebDriver, path: Path, *, timeout_s: float = 10) -> list[str]:
    """Open ``path`` and list what is wrong, one line each: every console entry at level SEVERE
    (``console.error``, uncaught exceptions, failed requests) and every ``<img>`` that did not load.
    An empty list: the page loaded cleanly. ``timeout_s`` bounds the wait for the page and, apart, for
    its images."""
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, timeout_s).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    driver.set_script_timeout(timeout_s + 5)  # the script gives up on images first, and says which
    broken = driver.execute_async_script(_BROKEN_IMAGES, round(timeout_s * 1000))
    problems = [f"image did not load: {_shorten(image['src'])}" for image in broken]
    broken_urls = {image["url"] for image in broken}
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        # A missing image also logs "Failed to load resource"; it is reported once, above.
        # Chromium writes it as "<url> - Failed to load resource: ...".
        if entry.get("source") == "network" and entry["message"].split(" - ", 1)[0] in broken_urls:
            continue
        problems.append(f"console {entry.get('source', '')} error: {_shorten(entry['message'], 300)}")
    return problems


def page_text(driver: WebDriver) -> str:
    """The visible text of the page open in ``driver``, as a person would read it."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text

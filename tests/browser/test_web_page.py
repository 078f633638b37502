"""The page at / in a real headless Chromium against a live server with a real bundle: upload, top-k,
the map and its controls, re-explaining for another class, flagging a mistake into the store, the API
key prompt, and labels written to execute script that stay text."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import BatchingSettings, Settings
from tests.conftest import make_image, serve_in_thread

pytestmark = pytest.mark.slow

HOSTILE_LABELS = ['<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>", "class_2"]
API_KEY = "a-long-enough-test-key-0123456789"


def _settings(tiny_bundle, root: Path, **changes) -> Settings:
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, root / "models" / "tiny" / "1")
    return Settings(
        model_repo=root / "models",
        feedback_dir=root / "feedback",
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=64),
        decode_threads=1,
        intra_op_threads=1,
        **changes,
    )


@pytest.fixture
def live(tiny_bundle, tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(_settings(tiny_bundle, tmp_path)) as url:
        yield url


def _image(tmp_path: Path, label: int, name: str = "photo.png") -> Path:
    path = tmp_path / name
    make_image(path, label, 950 + label)
    return path


def _open(driver, url: str) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get_log("browser")
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.getElementById('model').options.length") > 0
    )


def _upload(driver, *paths: Path) -> None:
    from selenium.webdriver.common.by import By

    picker = driver.find_element(By.ID, "files")
    driver.execute_script("arguments[0].hidden = false", picker)
    picker.send_keys("\n".join(str(p) for p in paths))


def _wait(driver, script: str, timeout_s: float = 30):
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script(script))


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_is_served_at_root_and_ui_with_a_strict_policy(live):
    for path in ("/", "/ui", "/ui/app.js", "/ui/app.css"):
        response = httpx.get(live + path)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert (
            "default-src 'none'" in policy
            and "script-src 'self'" in policy
            and "connect-src 'self'" in policy
        )
        assert "unsafe-inline" not in policy and "http" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(live + "/").text
    assert '<script src="/ui/app.js" defer></script>' in page and "https://" not in page


def test_an_upload_shows_top_k_latency_and_a_map_that_re_explains_per_class(chromium, live, tmp_path):
    from selenium.webdriver.common.by import By

    _open(chromium, live)
    assert chromium.find_element(By.ID, "model").get_attribute("value") == "tiny"
    _upload(chromium, _image(tmp_path, 1), _image(tmp_path, 2, "second.png"))

    _wait(chromium, "return document.querySelectorAll('.result .top-k li').length === 6")
    _wait(
        chromium,
        "const o = document.querySelector('.result .overlay'); return o.complete && o.naturalWidth > 0",
    )
    first = chromium.find_elements(By.CSS_SELECTOR, ".result")[-1]  # newest first: the first file is last
    assert first.find_element(By.CSS_SELECTOR, ".name").text == "photo.png"
    assert first.find_element(By.CSS_SELECTOR, ".summary").text.endswith(" ms")
    assert first.find_element(By.CSS_SELECTOR, ".summary").text.startswith("class_1 (")
    assert first.find_element(By.CSS_SELECTOR, ".explained").text == 'Map: gradcam for "class_1"'

    # the opacity slider and the toggle to the original
    chromium.execute_script(
        "const s = arguments[0]; s.value = 20; s.dispatchEvent(new Event('input'))",
        first.find_element(By.CSS_SELECTOR, ".opacity"),
    )
    assert first.find_element(By.CSS_SELECTOR, ".overlay").value_of_css_property("opacity") == "0.2"
    first.find_element(By.CSS_SELECTOR, ".show-original").click()
    assert not first.find_element(By.CSS_SELECTOR, ".overlay").is_displayed()
    first.find_element(By.CSS_SELECTOR, ".show-original").click()

    # another class's map: click its bar
    bar = next(
        row for row in first.find_elements(By.CSS_SELECTOR, ".top-k li") if row.text.startswith("class_0")
    )
    bar.click()
    _wait(
        chromium,
        "return [...document.querySelectorAll('.explained')].some(e => e.textContent.includes('class_0'))",
    )
    assert first.find_element(By.CSS_SELECTOR, ".explained").text == 'Map: gradcam for "class_0"'
    assert _severe(chromium) == []


def test_wrong_stores_the_chosen_label_and_note_and_confirms(chromium, live, tmp_path):
    from selenium.webdriver.common.by import By

    _open(chromium, live)
    _upload(chromium, _image(tmp_path, 0))
    _wait(chromium, "return document.querySelectorAll('.result .top-k li').length === 3")
    result = chromium.find_element(By.CSS_SELECTOR, ".result")
    result.find_element(By.CSS_SELECTOR, ".wrong").click()
    result.find_element(By.CSS_SELECTOR, ".label-search").send_keys("ss_2")
    options = [o.text for o in result.find_elements(By.CSS_SELECTOR, ".label-list option")]
    assert options == ["class_2", "none of these"]
    result.find_elements(By.CSS_SELECTOR, ".label-list option")[0].click()
    result.find_element(By.CSS_SELECTOR, ".note").send_keys("the bar is lower")
    result.find_element(By.CSS_SELECTOR, ".feedback button[type=submit]").click()

    _wait(chromium, "return document.querySelector('.confirmation').textContent.length > 0")
    assert (
        result.find_element(By.CSS_SELECTOR, ".confirmation").text
        == 'Thank you: saved as flag #1 ("class_2").'
    )
    assert not result.find_element(By.CSS_SELECTOR, ".feedback").is_displayed()
    with sqlite3.connect(tmp_path / "feedback" / "feedback.db") as db:
        row = db.execute(
            "select correct_label, predicted_label, note, request_id, scores from feedback"
        ).fetchone()
    assert row[:3] == ("class_2", "class_0", "the bar is lower")
    assert row[3] and set(json.loads(row[4])) == {"class_0", "class_1", "class_2"}
    assert _severe(chromium) == []


def test_labels_and_names_that_look_like_html_stay_text(chromium, tiny_bundle, tmp_path):
    from selenium.webdriver.common.by import By

    settings = _settings(tiny_bundle, tmp_path)
    manifest_path = settings.model_repo / "tiny" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["labels"] = HOSTILE_LABELS
    manifest_path.write_text(json.dumps(manifest))
    hostile_name = _image(tmp_path, 0, '<img src=x onerror="window.__pwned=3">.png')

    with serve_in_thread(settings) as url:
        _open(chromium, url)
        _upload(chromium, hostile_name)
        _wait(chromium, "return document.querySelectorAll('.result .top-k li').length === 3")
        result = chromium.find_element(By.CSS_SELECTOR, ".result")
        result.find_element(By.CSS_SELECTOR, ".wrong").click()
        shown = [o.text for o in result.find_elements(By.CSS_SELECTOR, ".label-list option")]
        bars = [
            row.find_element(By.CSS_SELECTOR, ".label").text
            for row in result.find_elements(By.CSS_SELECTOR, ".top-k li")
        ]
        pwned = chromium.execute_script("return window.__pwned")
        injected = chromium.execute_script(
            "return document.querySelectorAll('.result img:not(.original):not(.overlay), .result script').length"
        )
        name = result.find_element(By.CSS_SELECTOR, ".name").text

    assert pwned is None and injected == 0
    assert shown[:3] == HOSTILE_LABELS
    assert sorted(bars) == sorted(HOSTILE_LABELS)
    assert name == hostile_name.name


def test_a_service_with_api_keys_asks_for_one_and_keeps_it_for_the_tab(chromium, tiny_bundle, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    with serve_in_thread(_settings(tiny_bundle, tmp_path, api_keys=[API_KEY])) as url:
        chromium.get_log("browser")
        chromium.get(url)
        WebDriverWait(chromium, 20).until(lambda d: d.find_element(By.ID, "key-panel").is_displayed())
        assert "missing or invalid API key" in chromium.find_element(By.ID, "status").text
        chromium.find_element(By.ID, "key").send_keys(API_KEY)
        chromium.find_element(By.CSS_SELECTOR, "#key-form button").click()
        _wait(chromium, "return document.getElementById('model').options.length > 0")
        kept = chromium.execute_script("return sessionStorage.getItem('imgcls-api-key')")
        panel_hidden = not chromium.find_element(By.ID, "key-panel").is_displayed()
        _upload(chromium, _image(tmp_path, 2))
        _wait(chromium, "return document.querySelectorAll('.result .top-k li').length === 3")
        chromium.execute_script("sessionStorage.clear()")

    assert kept == API_KEY and panel_hidden


def test_an_error_from_the_service_is_shown_beside_its_image(chromium, live, tmp_path):
    from selenium.webdriver.common.by import By

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _open(chromium, live)
    _upload(chromium, broken)
    _wait(chromium, "return document.querySelector('.result .error').textContent.length > 0")

    assert chromium.find_element(By.CSS_SELECTOR, ".result .error").text.startswith("image 0: ")


def test_images_can_be_pasted_and_dropped(chromium, live, tmp_path):
    import base64

    image = base64.b64encode(_image(tmp_path, 2).read_bytes()).decode()
    _open(chromium, live)
    chromium.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = () => { const t = new DataTransfer(); t.items.add(new File([bytes], "clip.png", {type: "image/png"})); return t; };
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer()}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer(), bubbles: true}));
        """,
        image,
    )

    _wait(chromium, "return document.querySelectorAll('.result .top-k li').length === 6")
    assert _severe(chromium) == []

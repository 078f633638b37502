"""The page check itself: clean pages pass, and each kind of breakage is reported."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from tests.browser.page_check import page_problems, page_text


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_page(folder: Path, body: str) -> Path:
    page = folder / "index.html"
    page.write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
        f"<body>{body}</body></html>"
    )
    return page


def test_a_clean_page_has_no_problems(chromium, tmp_path: Path) -> None:
    (tmp_path / "beside.png").write_bytes(png_bytes((0, 128, 255)))
    inline = base64.b64encode(png_bytes((255, 0, 0))).decode()
    page = write_page(
        tmp_path,
        f'<h1>Report</h1><img alt="inline" src="data:image/png;base64,{inline}">'
        '<img alt="file" src="beside.png">'
        # far below the 2000-pixel window: a lazy image that must still be loaded and checked
        '<div style="height: 5000px"></div><img alt="lazy" loading="lazy" src="beside.png">',
    )
    assert page_problems(chromium, page) == []
    assert "Report" in page_text(chromium)


def test_a_missing_image_is_one_problem_that_names_it(chromium, tmp_path: Path) -> None:
    page = write_page(tmp_path, '<img alt="gone" src="missing.png">')
    problems = page_problems(chromium, page)
    assert len(problems) == 1, problems
    assert "missing.png" in problems[0]


def test_a_console_error_is_a_problem(chromium, tmp_path: Path) -> None:
    page = write_page(tmp_path, '<script>console.error("boom")</script>')
    problems = page_problems(chromium, page)
    assert any("boom" in p for p in problems), problems


def test_an_uncaught_exception_is_a_problem(chromium, tmp_path: Path) -> None:
    page = write_page(tmp_path, '<script>throw new Error("kaput")</script>')
    problems = page_problems(chromium, page)
    assert any("kaput" in p for p in problems), problems


def test_problems_of_an_earlier_page_do_not_carry_over(chromium, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    page_problems(chromium, write_page(tmp_path / "bad", '<script>console.error("old")</script>'))
    assert page_problems(chromium, write_page(tmp_path, "<p>fine</p>")) == []

"""The report page in a real headless Chromium: no console error, no image that fails to load."""

from __future__ import annotations

import pytest

from tests.browser.page_check import page_problems, page_text
from trainer.reporting.build import ReportOptions, write_report

pytestmark = pytest.mark.slow


def test_report_page_renders_in_chromium_without_errors_or_broken_images(chromium, tiny_run, tmp_path):
    result, _ = tiny_run
    page = write_report(result.run_dir, ReportOptions(out=tmp_path, bootstrap_rounds=200))
    assert page_problems(chromium, page) == []
    text = page_text(chromium)
    assert "Evaluation report" in text and "Model card" in text and "reliability diagram" in text
    images = chromium.find_elements("tag name", "img")
    assert len(images) >= 4

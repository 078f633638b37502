"""The evaluation report of a real run: every section, metrics.json, the model card, --data with
subgroup columns, --compare, and the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from trainer.reporting.build import REPORT_SCHEMA_VERSION, ReportOptions, write_report
from trainer.reporting.corruptions import CORRUPTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    result, _ = tiny_run
    out = tmp_path_factory.mktemp("report")
    page = write_report(result.run_dir, ReportOptions(out=out, bootstrap_rounds=200))
    return page, json.loads((out / "metrics.json").read_text())


def test_report_writes_the_page_the_data_the_card_and_every_figure(report):
    page, metrics = report
    folder = page.parent
    assert page.name == "index.html" and (folder / "model_card.md").is_file()
    assert metrics["schema_version"] == REPORT_SCHEMA_VERSION
    for relative in metrics["figures"].values():
        assert (folder / relative).is_file(), relative
    for row in metrics["mistakes"]:
        assert (folder / row["figure"]).is_file()
    text = page.read_text()
    for heading in (
        "Summary",
        "Per class",
        "Confusion",
        "Calibration",
        "Mistakes",
        "Robustness",
        "Subgroups",
        "Baselines",
        "Comparison",
        "Model card",
    ):
        assert f">{heading}</h2>" in text
    assert "http://" not in text and "https://" not in text  # opens with no network


def test_summary_intervals_contain_the_point_and_match_the_run(report, tiny_run):
    _, metrics = report
    result, _ = tiny_run
    for name, entry in metrics["summary"].items():
        assert entry["low"] <= entry["value"] <= entry["high"] or name == "log_loss", name
    assert metrics["summary"]["accuracy"]["value"] == pytest.approx(result.test_metrics["accuracy"], abs=1e-6)
    assert metrics["data"]["images"] == result.test_metrics["samples"]
    assert [row["class"] for row in metrics["per_class"]] == metrics["data"]["classes"]


def test_calibration_uses_the_runs_temperature_and_reports_ece_before_and_after(report, tiny_run):
    _, metrics = report
    result, _ = tiny_run
    recorded = json.loads((result.run_dir / "metrics.json").read_text())["calibration"]
    # the tiny run has 6 validation images: too few to fit, so neither the run nor the report scales
    assert recorded["temperature"] is None and "validation images" in recorded["skipped"]
    assert metrics["calibration"]["temperature"] == 1.0
    assert metrics["calibration"]["fitted_on"].startswith("not fitted: only 6 validation images")
    assert 0 <= metrics["calibration"]["ece_after"] <= 1 and 0 <= metrics["calibration"]["ece_before"] <= 1


def test_robustness_has_every_corruption_at_five_severities(report):
    _, metrics = report
    robustness = metrics["robustness"]
    assert list(robustness["corruptions"]) == list(CORRUPTIONS)
    for entry in robustness["corruptions"].values():
        assert len(entry["accuracy"]) == 5 and all(0 <= a <= 1 for a in entry["accuracy"])
    everything = [a for e in robustness["corruptions"].values() for a in e["accuracy"]]
    assert robustness["mean_corruption_accuracy"] == pytest.approx(np.mean(everything), abs=1e-5)


def test_the_report_is_deterministic_for_a_seed(report, tiny_run, tmp_path):
    _, first = report
    result, _ = tiny_run
    write_report(result.run_dir, ReportOptions(out=tmp_path, bootstrap_rounds=200))
    second = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("summary", "per_class", "calibration", "robustness", "baselines"):
        assert second[key] == first[key], key


def test_data_csv_with_extra_columns_gives_subgroups_and_compare_puts_runs_side_by_side(
    report, tiny_run, tmp_path
):
    page, _ = report
    result, _ = tiny_run
    with (result.run_dir / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    root = Path(json.loads((result.run_dir / "data_report.json").read_text())["data_root"])
    table = tmp_path / "new_site.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "camera"])
        for i, row in enumerate(rows):
            writer.writerow([root / row["path"], row["label"], "a" if i % 2 else "b"])
    out = tmp_path / "out"
    write_report(
        result.run_dir, ReportOptions(data=table, out=out, compare=page.parent, bootstrap_rounds=200)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["images"] == len(rows)
    assert [g["group"] for g in metrics["subgroups"]["camera"]] != []
    assert {g["group"] for g in metrics["subgroups"]["camera"]} == {"a", "b"}
    assert sum(g["support"] for g in metrics["subgroups"]["camera"]) == len(rows)
    assert {r["metric"] for r in metrics["comparison"]["summary"]} >= {"accuracy", "f1_macro"}


def test_report_command_prints_where_and_refuses_a_compare_without_a_report(tiny_run, tmp_path, capsys):
    from imgcls.cli import main

    result, _ = tiny_run
    assert (
        main(["report", "--run", str(result.run_dir), "--out", str(tmp_path / "r"), "--max-images", "5"]) == 0
    )
    assert f"report: {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out
    code = main(
        ["report", "--run", str(result.run_dir), "--out", str(tmp_path / "x"), "--compare", str(tmp_path)]
    )
    assert code == 2
    assert "no report found there" in capsys.readouterr().err

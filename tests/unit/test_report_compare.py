"""trainer.reporting.compare: what is flagged between two runs, and what is left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.reporting.compare import compare_runs
from trainer.reporting.stats import per_class_table, summary_metrics


def _report(run: str, summary: dict[str, tuple[float, float, float]], f1: dict[str, float]) -> dict:
    return {
        "run": run,
        "summary": {name: {"value": v, "low": lo, "high": hi} for name, (v, lo, hi) in summary.items()},
        "per_class": [{"class": name, "f1": value, "support": 10} for name, value in f1.items()],
    }


def test_a_metric_is_flagged_when_the_other_value_leaves_this_runs_interval():
    current = _report("new", {"accuracy": (0.90, 0.87, 0.93), "f1_macro": (0.88, 0.85, 0.91)}, {})
    other = _report("old", {"accuracy": (0.86, 0.83, 0.89), "f1_macro": (0.91, 0.80, 0.99)}, {})
    result = compare_runs(current, other)
    assert result["other_run"] == "old"
    assert result["summary"] == [
        {"metric": "accuracy", "current": 0.9, "other": 0.86, "difference": 0.04, "flagged": True},
        {"metric": "f1_macro", "current": 0.88, "other": 0.91, "difference": -0.03, "flagged": False},
    ]


def test_a_value_on_the_interval_edge_is_not_flagged():
    current = _report("new", {"accuracy": (0.9, 0.85, 0.95)}, {})
    for edge in (0.85, 0.95):
        other = _report("old", {"accuracy": (edge, 0.0, 1.0)}, {})
        assert compare_runs(current, other)["summary"][0]["flagged"] is False


def test_metrics_missing_from_either_run_are_skipped():
    current = _report("new", {"accuracy": (0.9, 0.8, 1.0), "top5_accuracy": (0.99, 0.98, 1.0)}, {})
    other = _report("old", {"accuracy": (0.9, 0.8, 1.0), "log_loss": (0.3, 0.2, 0.4)}, {})
    assert [row["metric"] for row in compare_runs(current, other)["summary"]] == ["accuracy"]


@pytest.mark.parametrize(
    ("current_f1", "other_f1", "flagged"),
    [(0.80, 0.74, True), (0.80, 0.76, False), (0.70, 0.80, True), (0.80, 0.85, False)],
)
def test_class_f1_is_flagged_when_it_moves_by_more_than_five_points(current_f1, other_f1, flagged):
    result = compare_runs(_report("new", {}, {"cat": current_f1}), _report("old", {}, {"cat": other_f1}))
    (row,) = result["per_class_f1"]
    assert row["difference"] == pytest.approx(current_f1 - other_f1)
    assert row["flagged"] is flagged


def test_classes_in_one_run_only_have_none_on_the_other_side_and_are_not_flagged():
    current = _report("new", {}, {"cat": 0.9, "dog": 0.5})
    other = _report("old", {}, {"fox": 0.1, "cat": 0.9})
    assert compare_runs(current, other)["per_class_f1"] == [
        {"class": "cat", "current": 0.9, "other": 0.9, "difference": 0.0, "flagged": False},
        {"class": "dog", "current": 0.5, "other": None, "difference": None, "flagged": False},
        {"class": "fox", "current": None, "other": 0.1, "difference": None, "flagged": False},
    ]


def test_compare_runs_reads_reports_built_from_real_metrics_after_a_json_round_trip():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probabilities = rng.dirichlet(np.ones(3), 300)
    names = ["a", "b", "c"]

    def report(run: str, probabilities: np.ndarray) -> dict:
        summary = {k: v.to_json() for k, v in summary_metrics(labels, probabilities, rounds=100).items()}
        built = {"run": run, "summary": summary, "per_class": per_class_table(labels, probabilities, names)}
        return json.loads(json.dumps(built))

    same = compare_runs(report("new", probabilities), report("old", probabilities))
    assert len(same["summary"]) == 9  # three classes: no top-5 accuracy
    assert not any(row["flagged"] for row in same["summary"] + same["per_class_f1"])
    perfect = np.eye(3)[labels] * 0.98 + 0.01
    better = compare_runs(report("new", perfect), report("old", probabilities))
    assert all(row["flagged"] for row in better["per_class_f1"])
    assert {row["metric"]: row["flagged"] for row in better["summary"]}["accuracy"] is True

"""This run beside another: which headline metrics and which classes moved by more than noise."""

from __future__ import annotations

__all__ = ["F1_CHANGE_THRESHOLD", "compare_runs"]

F1_CHANGE_THRESHOLD = 0.05  # per-class F1 has no interval in the report, so a fixed margin stands in


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _summary_rows(current: dict, other: dict) -> list[dict]:
    rows = []
    for metric, entry in current.items():
        if metric not in other:
            continue
        theirs = other[metric]["value"]
        rows.append(
            {
                "metric": metric,
                "current": _rounded(entry["value"]),
                "other": _rounded(theirs),
                "difference": _rounded(entry["value"] - theirs),
                "flagged": not entry["low"] <= theirs <= entry["high"],
            }
        )
    return rows


def _per_class_rows(current: list[dict], other: list[dict]) -> list[dict]:
    mine = {row["class"]: row["f1"] for row in current}
    theirs = {row["class"]: row["f1"] for row in other}
    rows = []
    for name in [*mine, *(name for name in theirs if name not in mine)]:
        a, b = mine.get(name), theirs.get(name)
        difference = None if a is None or b is None else round(a - b, 6)
        rows.append(
            {
                "class": name,
                "current": _rounded(a),
                "other": _rounded(b),
                "difference": difference,
                "flagged": difference is not None and abs(difference) > F1_CHANGE_THRESHOLD,
            }
        )
    return rows


def compare_runs(current: dict, other: dict) -> dict:
    """Compare two report metrics dicts (``{"run", "summary": {name: {value, low, high}}, "per_class":
    [{"class", "f1", ...}]}``); every difference is current minus other.

    Rules: a summary metric is flagged when the other run's value lies outside this run's interval
    [low, high]; metrics missing from either run are skipped. A class is flagged when its F1 moved by
    more than ``F1_CHANGE_THRESHOLD`` (0.05) either way; a class found in one run only is listed with
    None for the other side and never flagged.
    """
    return {
        "other_run": other["run"],
        "summary": _summary_rows(current["summary"], other["summary"]),
        "per_class_f1": _per_class_rows(current["per_class"], other["per_class"]),
    }

"""The evaluation report: metrics with intervals, calibration, robustness, subgroups, comparison."""

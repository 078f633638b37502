"""The run's fitted temperature travels into the manifest; a run without one exports none."""

from __future__ import annotations

import json
import shutil

import numpy as np

from imgcls.manifest import load_manifest
from trainer.calibrate import MIN_VALIDATION_IMAGES, calibrate


def test_export_copies_the_runs_temperature_into_the_manifest(tiny_run, tmp_path):
    from trainer.export import export_bundle

    result, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["calibration"]["temperature"] is None  # 6 validation images: not fitted
    plain = export_bundle(run, out_dir=tmp_path / "models", name="plain")
    assert load_manifest(plain.bundle_dir).temperature is None
    summary["calibration"] = {**summary["calibration"], "temperature": 1.7}
    (run / "metrics.json").write_text(json.dumps(summary))
    scaled = export_bundle(run, out_dir=tmp_path / "models", name="scaled")
    assert load_manifest(scaled.bundle_dir).temperature == 1.7


def test_calibrate_fits_on_validation_and_reports_test_ece_before_and_after():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    honest = rng.normal(0, 1, (400, 4))
    honest[np.arange(400), labels] += 2.0
    overconfident = honest * 4  # the same ranking, four times too sure
    section = calibrate(overconfident[:200], labels[:200], overconfident[200:], labels[200:])
    assert section["temperature"] > 1.5  # softens: the logits were made too sure
    assert section["test_ece_after"] < section["test_ece_before"]
    few = calibrate(
        overconfident[: MIN_VALIDATION_IMAGES - 1], labels[: MIN_VALIDATION_IMAGES - 1], overconfident, labels
    )
    assert few["temperature"] is None and "validation images" in few["skipped"]

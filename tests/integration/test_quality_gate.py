"""A run no better than chance warns, records why, and is refused under export.min_test_accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.cli import main
from imgcls.manifest import load_manifest


def _noise_folder(root: Path, classes: int = 2, per_class: int = 30) -> Path:
    """Images whose label has nothing to do with their pixels: no model can beat chance."""
    rng = np.random.default_rng(7)
    for label in range(classes):
        for index in range(per_class):
            path = root / f"class_{label}" / f"{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(path)
    return root


def _train(capsys, tmp_path: Path, data: Path, *extra: str, epochs: int = 2) -> tuple[int, str, str]:
    argv = [
        "train",
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        *("--set", f"runs_dir={tmp_path / 'runs'}"),
        *("--set", f"export.out_dir={tmp_path / 'models'}"),
        *("--set", "export.name=gate"),
        *("--set", "export.parity_samples=4"),
        *("--set", "preprocess.image_size=16"),
        *("--set", "preprocess.resize=16"),
        *("--set", "preprocess.color_mode=L"),
        *("--set", "train.batch_size=8"),
        *extra,
    ]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_chance_level_run_warns_records_why_and_still_exports_by_default(tmp_path, capsys):
    code, _, err = _train(capsys, tmp_path, _noise_folder(tmp_path / "noise"), "--run-name", "noise")
    assert code == 0
    assert "WARNING: not clearly better than chance" in err
    assert "Likely causes: (1)" in err

    summary = json.loads((tmp_path / "runs" / "noise" / "metrics.json").read_text())
    assert summary["baseline_check"]["passed"] is False
    assert summary["warnings"] == [summary["baseline_check"]["warning"]]
    manifest = load_manifest(tmp_path / "models" / "gate" / "1")
    assert manifest.baseline_check is not None
    assert not manifest.baseline_check.passed
    assert manifest.baseline_check.warning == summary["baseline_check"]["warning"]

    assert main(["models", "--repo", str(tmp_path / "models")]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:3] == ["gate", "1", "simple_cnn"]
    assert listing[1].split()[-1] == "FAILED"
    assert listing[2].strip() == f"WARNING: {manifest.baseline_check.warning}"


def test_min_test_accuracy_refuses_a_chance_level_run_with_exit_2_and_exports_nothing(tmp_path, capsys):
    data = _noise_folder(tmp_path / "noise")
    code, _, err = _train(capsys, tmp_path, data, "--set", "export.min_test_accuracy=0")
    assert code == 2
    assert "not clearly better than a model that learned nothing" in err
    assert "Nothing was exported" in err
    assert "Traceback" not in err
    assert not (tmp_path / "models" / "gate").exists()


def test_a_good_run_passes_the_check_and_a_threshold_below_its_accuracy(make_imagefolder, tmp_path, capsys):
    data = make_imagefolder(classes=2, per_class=24)
    code, _, err = _train(
        capsys, tmp_path, data, "--set", "export.min_test_accuracy=0.5", "--set", "optim.lr=0.003", epochs=6
    )
    assert code == 0, err
    assert "WARNING" not in err
    assert load_manifest(tmp_path / "models" / "gate" / "1").baseline_check.passed


def test_an_accuracy_threshold_above_one_is_refused_up_front(make_imagefolder, tmp_path, capsys):
    code, _, err = _train(capsys, tmp_path, tmp_path / "unused", "--set", "export.min_test_accuracy=1.5")
    assert code == 2
    assert "export.min_test_accuracy" in err


def test_export_applies_a_threshold_given_at_export_time(tmp_path, capsys):
    data = _noise_folder(tmp_path / "noise")
    code, _, err = _train(capsys, tmp_path, data, "--run-name", "noise", "--no-export")
    assert code == 0, err
    run, out = tmp_path / "runs" / "noise", tmp_path / "models" / "gate" / "1"
    code = main(["export", "--run", str(run), "--out", str(out), "--min-test-accuracy", "0.9"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "below export.min_test_accuracy=0.9" in err
    assert not out.exists()
    assert (
        main(["export", "--run", str(run), "--out", str(out)]) == 0
    )  # without it: exported, with the warning
    assert not load_manifest(out).baseline_check.passed

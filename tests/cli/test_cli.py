"""The command line: every user error gets one line naming the file and the fix, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.cli import main
from tests.conftest import skip_if_torch_tensorrt_installed


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_data_digits_writes_the_embedded_dataset(tmp_path: Path, capsys):
    code, out, _ = _run(capsys, "data", "digits", "--out", str(tmp_path / "digits"))
    assert code == 0
    assert "wrote 1797 images in 10 classes" in out
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [str(d) for d in range(10)]
    assert len(list((tmp_path / "digits" / "0").glob("*.png"))) == 178


def test_data_digits_refuses_to_overwrite_without_the_flag(tmp_path: Path, capsys):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "keep.txt").write_text("mine")
    code, _, err = _run(capsys, "data", "digits", "--out", str(tmp_path / "digits"))
    assert code == 2
    assert "--overwrite" in _error_line(err)
    assert (tmp_path / "digits" / "keep.txt").exists()


def test_models_lists_the_registry(capsys):
    code, out, _ = _run(capsys, "models")
    assert code == 0
    assert out.splitlines()[:2] == ["simple_cnn", "resnet18"]


def _train(capsys, tmp_path: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    return _run(
        capsys,
        "train",
        "--data",
        str(data),
        "--set",
        f"runs_dir={tmp_path / 'runs'}",
        "--set",
        "preprocess.image_size=16",
        "--set",
        "preprocess.resize=16",
        *extra,
    )


@pytest.mark.parametrize(
    ("layout", "pattern"),
    [
        ("missing", r"not found; point data.path at an image folder"),
        ("empty_dir", r"no class folders found"),
        ("empty_class", r"empty: empty class folder; add images to it or remove it"),
        ("one_class", r"at least 2 classes, found only 'class_0'"),
        ("too_few", r"class 'class_1' has 2 usable image\(s\).*at least \d+ per class"),
        ("csv_columns", r"labels.csv: missing column\(s\) label"),
        ("csv_missing_path", r"labels.csv: line 2: 'ghost.png' does not exist"),
    ],
)
def test_bad_data_exits_2_with_one_line_naming_the_problem_and_writes_nothing(
    layout: str, pattern: str, tmp_path: Path, capsys, make_imagefolder
):
    from tests.conftest import make_image

    data = tmp_path / "data"
    if layout == "empty_dir":
        data.mkdir()
    elif layout == "empty_class":
        data = make_imagefolder(classes=2, per_class=10)
        (data / "empty").mkdir()
    elif layout == "one_class":
        data = make_imagefolder(classes=1, per_class=10)
    elif layout == "too_few":
        data = make_imagefolder(classes=2, per_class=10)
        for path in sorted((data / "class_1").iterdir())[2:]:
            path.unlink()
    elif layout in ("csv_columns", "csv_missing_path"):
        make_image(tmp_path / "a.png", 0, 0)
        data = tmp_path / "labels.csv"
        data.write_text("path\na.png\n" if layout == "csv_columns" else "path,label\nghost.png,x\na.png,y\n")
    code, _out, err = _train(capsys, tmp_path, data)
    assert code == 2, err
    assert pytest.importorskip("re").search(pattern, _error_line(err)), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_strict_lists_the_unreadable_files(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    (data / "class_0" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code, _, err = _train(capsys, tmp_path, data, "--strict")
    assert code == 2
    assert "bad.jpg (" in _error_line(err) and "drop --strict" in _error_line(err)
    assert not (tmp_path / "runs").exists()


def test_invalid_config_value_exits_2(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    code, _, err = _train(capsys, tmp_path, data, "--set", "optim.lr=-1")
    assert code == 2
    assert "optim.lr: Input should be greater than 0" in _error_line(err)


def test_unknown_model_exits_2_and_lists_valid_names(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    code, _, err = _train(capsys, tmp_path, data, "--model", "resnet19")
    assert code == 2
    assert "valid names: simple_cnn" in _error_line(err)
    assert not (tmp_path / "runs").exists()


def test_existing_run_name_points_at_resume(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    code, _, err = _train(capsys, tmp_path, data, "--run-name", "taken")
    assert code == 2
    assert "--resume" in _error_line(err)


def test_export_of_a_folder_that_is_not_a_run_exits_2(tmp_path: Path, capsys):
    code, _, err = _run(capsys, "export", "--run", str(tmp_path))
    assert code == 2
    assert "not a run directory" in _error_line(err)


def test_export_out_must_end_in_a_version(tmp_path: Path, capsys):
    code, _, err = _run(capsys, "export", "--run", str(tmp_path), "--out", str(tmp_path / "models" / "x"))
    assert code == 2
    assert "must be the version number" in err


def _random_init(capsys, out: Path, *options: str) -> tuple[int, str, str]:
    """``imgcls export --random-init --model simple_cnn OPTIONS --out OUT``."""
    return _run(capsys, "export", "--random-init", "--model", "simple_cnn", *options, "--out", str(out))


def test_random_init_export_writes_a_complete_servable_bundle(tmp_path: Path, capsys):
    out = tmp_path / "models" / "speedy" / "1"
    code, stdout, err = _random_init(
        capsys, out, "--num-classes", "5", "--image-size", "24", "--color-mode", "L"
    )
    assert code == 0, err
    assert "model.onnx (fp32): parity on 16 images: top-1 agreement 1.0000" in stdout
    from imgcls.manifest import load_manifest, verify_artifacts

    manifest = load_manifest(out)
    verify_artifacts(out, manifest)
    assert manifest.weights == "random_init"
    assert manifest.labels == ("class_0", "class_1", "class_2", "class_3", "class_4")
    assert (manifest.input.channels, manifest.input.height) == (1, 24)
    assert {a.format for a in manifest.artifacts} == {"torchscript", "onnx"}
    assert _random_init(capsys, out, "--num-classes", "5")[0] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "simple_cnn"), "needs --model and --out"),
        (("--model", "nope", "--out", "OUT/nope/1"), "unknown model 'nope'"),
        (("--model", "simple_cnn", "--out", "OUT/x/latest"), "must be the version number"),
        (("--model", "simple_cnn", "--num-classes", "1", "--out", "OUT/x/1"), "at least 2 classes"),
        (("--model", "simple_cnn", "--image-size", "4", "--out", "OUT/x/1"), "image_size"),
    ],
)
def test_random_init_export_rejects_bad_arguments_with_exit_2(tmp_path: Path, capsys, args, message):
    args = tuple(a.replace("OUT", str(tmp_path)) for a in args)
    code, _, err = _run(capsys, "export", "--random-init", *args)
    assert code == 2
    assert message in err
    assert not any(tmp_path.rglob("manifest.json"))


def test_train_then_export_end_to_end(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    code, out, err = _train(
        capsys,
        tmp_path,
        data,
        "--epochs",
        "1",
        "--run-name",
        "e2e",
        "--set",
        f"export.out_dir={tmp_path / 'models'}",
    )
    assert code == 0, err
    assert "test accuracy: " in out
    assert f"bundle: {tmp_path / 'models' / 'tiny' / '1'} (model.torchscript.pt, model.onnx)" in out
    run_dir = tmp_path / "runs" / "e2e"
    code, out, err = _run(
        capsys,
        "export",
        "--run",
        str(run_dir),
        "--out",
        str(tmp_path / "models" / "named" / "3"),
        "--formats",
        "onnx",
    )
    assert code == 0, err
    assert "model.onnx (fp32): parity on" in out
    assert (tmp_path / "models" / "named" / "3" / "manifest.json").is_file()


def test_export_to_an_invalid_bundle_name_exits_2_before_exporting(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    code, _, err = _train(capsys, tmp_path, data, "--epochs", "1", "--run-name", "r", "--no-export")
    assert code == 0, err
    code, _, err = _run(
        capsys,
        "export",
        "--run",
        str(tmp_path / "runs" / "r"),
        "--out",
        str(tmp_path / "m" / "My Model" / "1"),
    )
    assert code == 2
    assert "bundle name 'My Model' must be" in _error_line(err)
    assert not (tmp_path / "m").exists()


def test_resume_with_a_changed_architecture_exits_2(tmp_path: Path, capsys, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    assert _train(capsys, tmp_path, data, "--epochs", "1", "--run-name", "r", "--no-export")[0] == 0
    code, _, err = _run(capsys, "train", "--resume", str(tmp_path / "runs" / "r"), "--model", "resnet18")
    assert code == 2
    assert "cannot change model.name when resuming" in _error_line(err)


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp16,int8"])
def test_tensorrt_export_without_tensorrt_fails_at_once_naming_the_fix_and_writes_nothing(
    tmp_path: Path, capsys, precision: str
):
    skip_if_torch_tensorrt_installed()
    out = tmp_path / "models" / "speedy" / "1"
    code, stdout, err = _random_init(
        capsys,
        out,
        "--num-classes",
        "3",
        "--image-size",
        "16",
        "--formats",
        "onnx,tensorrt",
        "--precision",
        precision,
    )
    assert code == 1 and stdout == ""
    line = _error_line(err)
    assert f"--formats tensorrt ({precision.replace(',', ', ')}) cannot run here" in line
    assert "torch_tensorrt does not import" in line and "docker build -t imgcls:0.1.0-gpu ." in line
    assert not (tmp_path / "models").exists()  # not even the fp32 ONNX that came first


def test_export_options_are_validated_with_exit_2(tmp_path: Path, capsys):
    code, _, err = _random_init(
        capsys, tmp_path / "models" / "m" / "1", "--formats", "onnx-int8", "--calib-images", "0"
    )
    assert code == 2 and "calibration_images" in _error_line(err)

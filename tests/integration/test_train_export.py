"""Train for real on a tiny generated ImageFolder, export both formats, load them back, check parity."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imgcls.errors import DataError, ExportError
from imgcls.manifest import load_manifest, verify_artifacts
from trainer.export import export_bundle
from trainer.rundir import RunDir
from trainer.train import train


@pytest.fixture
def trained(tiny_run):
    """The session's real 2-epoch run (training is the slow part): (TrainResult, root folder)."""
    return tiny_run


def test_a_run_writes_every_record_a_user_audits(trained):
    result, _ = trained
    run = RunDir(result.run_dir)
    for path in (
        run.config,
        run.labels,
        run.split,
        run.data_report,
        run.metrics_csv,
        run.metrics_json,
        run.per_class_csv,
        run.curves_png,
        run.confusion_png,
        run.best_checkpoint,
        run.last_checkpoint,
    ):
        assert path.is_file(), path
    assert any(run.tensorboard.glob("events.out.tfevents.*"))
    assert len(run.metrics_csv.read_text().splitlines()) == 3  # header + 2 epochs
    metrics = json.loads(run.metrics_json.read_text())
    assert set(metrics["test"]) >= {"accuracy", "precision_macro", "recall_macro", "f1_macro", "samples"}
    assert "top5_accuracy" not in metrics["test"]  # only 3 classes
    assert len(metrics["confusion_matrix"]) == 3
    split_rows = run.split.read_text().splitlines()
    assert split_rows[0] == "path,label,split" and len(split_rows) == 1 + 36


def test_export_writes_a_bundle_that_loads_with_plain_runtimes(trained):
    result, root = trained
    exported = export_bundle(result.run_dir, out_dir=root / "models", name="tiny")
    bundle = exported.bundle_dir
    assert bundle == root / "models" / "tiny" / "1"
    manifest = load_manifest(bundle)
    verify_artifacts(bundle, manifest)
    assert manifest.labels == ("class_0", "class_1", "class_2")
    assert manifest.metrics["accuracy"] == result.test_metrics["accuracy"]
    assert {a.format for a in manifest.artifacts} == {"torchscript", "onnx"}
    for artifact in manifest.artifacts:
        assert artifact.parity.passed and artifact.parity.top1_agreement == 1.0
        assert artifact.parity.max_abs_diff <= artifact.parity.tolerance

    batch = torch.rand(5, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(bundle / "model.torchscript.pt"))
    with torch.inference_mode():
        ts_out = scripted(batch).numpy()
    onnx_model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(onnx_model)
    assert onnx_model.opset_import[0].version >= 17
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": batch.numpy()})[0]
    assert ts_out.shape == onnx_out.shape == (5, 3)
    np.testing.assert_allclose(ts_out, onnx_out, atol=1e-4)


def test_export_picks_the_next_version_and_never_overwrites(trained):
    result, root = trained
    out = root / "versions"
    first = export_bundle(result.run_dir, out_dir=out, name="m", formats=("onnx",))
    second = export_bundle(result.run_dir, out_dir=out, name="m", formats=("onnx",))
    assert (first.bundle_dir.name, second.bundle_dir.name) == ("1", "2")
    with pytest.raises(ExportError, match=r"already exists"):
        export_bundle(result.run_dir, out_dir=out, name="m", version=1, formats=("onnx",))
    replaced = export_bundle(
        result.run_dir, out_dir=out, name="m", version=1, formats=("torchscript",), force=True
    )
    assert [a.format for a in load_manifest(replaced.bundle_dir).artifacts] == ["torchscript"]
    assert sorted(p.name for p in (out / "m").iterdir()) == ["1", "2"]


def test_artifact_that_disagrees_fails_the_export_and_leaves_nothing(trained, monkeypatch):
    import trainer.artifacts as artifacts_module

    result, root = trained
    write, run_artifact = artifacts_module._EXPORTERS["onnx"]
    monkeypatch.setitem(artifacts_module._EXPORTERS, "onnx", (write, lambda p, b: run_artifact(p, b) * 5.0))
    out = root / "broken"
    with pytest.raises(
        ExportError, match=r"onnx artifact disagrees with the eager model.*nothing was written"
    ):
        export_bundle(result.run_dir, out_dir=out, name="m")
    assert list((out / "m").iterdir()) == []  # no bundle, no staging folder


class _CrashError(Exception):
    pass


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_after_a_crash_continues_the_run_bit_for_bit(
    make_imagefolder, tiny_config, monkeypatch, num_workers
):
    """A run killed after epoch 2 of 3 and resumed ends with exactly the weights of an uninterrupted run."""
    import trainer.fit as fit_module

    data = make_imagefolder(classes=2, per_class=16)
    settings = (
        "train.epochs=3",
        "train.batch_size=4",
        "train.ema_decay=0.9",
        "augment.preset=standard",
        "optim.warmup_epochs=1",
        f"data.num_workers={num_workers}",
    )
    straight = train(tiny_config(data, "run_name=straight", *settings))

    real_write = fit_module._write_metrics_csv

    def crash_after_epoch_two(path, history):
        real_write(path, history)
        if len(history) == 2:
            raise _CrashError  # after epoch 2's checkpoint: as if the process were killed here

    monkeypatch.setattr(fit_module, "_write_metrics_csv", crash_after_epoch_two)
    with pytest.raises(_CrashError):
        train(tiny_config(data, "run_name=crashed", *settings))
    monkeypatch.undo()
    run_dir = straight.run_dir.parent / "crashed"
    train(RunDir(run_dir).resume_config(), resume=run_dir)

    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    for section in ("model", "ema"):
        for key, value in a[section].items():
            torch.testing.assert_close(value, b[section][key], rtol=0, atol=0, msg=f"{section}.{key}")
    assert a["progress"]["history"][2]["train_loss"] == b["progress"]["history"][2]["train_loss"]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4


def test_resume_refuses_changes_to_what_the_checkpoint_was_trained_with(make_imagefolder, tiny_config):
    from imgcls.errors import ConfigError

    run = train(
        tiny_config(make_imagefolder(classes=2, per_class=10), "train.epochs=1", "export.enabled=false")
    )
    with pytest.raises(ConfigError, match=r"cannot change model.name, optim.lr when resuming"):
        RunDir(run.run_dir).resume_config(["model.name=resnet18", "train.epochs=3"], {"optim.lr": 0.1})
    assert RunDir(run.run_dir).resume_config(["train.epochs=3"]).train.epochs == 3


def test_unreadable_images_are_reported_and_skipped(make_imagefolder, tiny_config):
    data = make_imagefolder(classes=2, per_class=10)
    (data / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "class_1" / "readme.txt").write_text("hello")
    result = train(tiny_config(data, "train.epochs=1", "export.enabled=false"))
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["scanned"] == 22 and report["usable"] == 20
    assert {Path(s["path"]).name for s in report["skipped"]} == {"broken.png", "readme.txt"}
    assert "broken.png" not in (result.run_dir / "split.csv").read_text()


def test_strict_mode_stops_before_writing_anything(make_imagefolder, tiny_config, tmp_path):
    data = make_imagefolder(classes=2, per_class=10)
    (data / "class_0" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"1 unreadable file\(s\) and data.strict is set: .*broken.png"):
        train(tiny_config(data, "data.strict=true"))
    assert not (tmp_path / "runs").exists()


def test_transfer_learning_trains_only_the_head_while_the_backbone_is_frozen(
    make_imagefolder, tiny_config, tmp_path
):
    from trainer.models import create_model

    data = make_imagefolder(classes=2, per_class=10)
    weights = tmp_path / "pretrained.pt"
    torch.save(create_model("simple_cnn", 5, in_chans=3, image_size=16).model.state_dict(), weights)
    pretrained = torch.load(weights, weights_only=True)

    def last_state(run_name: str, epochs: int) -> dict:
        result = train(
            tiny_config(
                data,
                f"run_name={run_name}",
                f"model.weights={weights}",
                "model.freeze_backbone_epochs=1",
                f"train.epochs={epochs}",
                "export.enabled=false",
            )
        )
        return torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]

    frozen = last_state("frozen", epochs=1)
    torch.testing.assert_close(frozen["features.0.weight"], pretrained["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(frozen["neck.1.weight"], pretrained["neck.1.weight"], rtol=0, atol=0)
    assert frozen["head.weight"].shape == (2, 128)
    unfrozen = last_state("unfrozen", epochs=2)
    assert not torch.equal(unfrozen["features.0.weight"], pretrained["features.0.weight"])


def test_only_a_train_folder_gets_val_and_test_carved_from_it(tmp_path, tiny_config):
    from tests.conftest import make_image

    for label in range(2):
        for index in range(10):
            make_image(tmp_path / "split" / "train" / f"c{label}" / f"{index}.png", label, index)
    result = train(tiny_config(tmp_path / "split", "train.epochs=1", "export.enabled=false"))
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert set(report["class_counts"]["test"]) == {"c0", "c1"}
    assert report["split_source"] == "folders"


def test_csv_with_absolute_paths_trains_and_exports(tmp_path, tiny_config, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=10)
    rows = [f"{p.resolve()},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    csv_path = tmp_path / "elsewhere" / "labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path,label\n" + "\n".join(rows) + "\n")
    result = train(tiny_config(csv_path, "train.epochs=1", "export.formats=[onnx]"))
    assert export_bundle(result.run_dir).manifest.labels == ("class_0", "class_1")


def test_export_with_a_single_parity_image_keeps_the_batch_axis_dynamic(trained):
    result, root = trained
    config_path = result.run_dir / "config.yaml"
    original = config_path.read_text()
    config_path.write_text(original.replace("parity_samples: 8", "parity_samples: 1"))
    try:
        exported = export_bundle(result.run_dir, out_dir=root / "single", name="m")
    finally:
        config_path.write_text(original)
    session = ort.InferenceSession(
        str(exported.bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.run(None, {"input": np.random.rand(7, 3, 16, 16).astype(np.float32)})[0].shape == (7, 3)


@pytest.mark.cuda
def test_training_runs_on_cuda_with_mixed_precision(make_imagefolder, tiny_config):
    data = make_imagefolder(classes=2, per_class=10)
    result = train(tiny_config(data, "train.device=cuda", "train.amp=bf16", "train.epochs=1"))
    assert json.loads((result.run_dir / "metrics.json").read_text())["precision"] == "bf16"


def test_a_split_file_from_another_run_reproduces_its_split(make_imagefolder, tiny_config):
    data = make_imagefolder(classes=2, per_class=10)
    first = train(tiny_config(data, "run_name=first", "train.epochs=1", "export.enabled=false"))
    again = train(
        tiny_config(
            data,
            "run_name=again",
            "train.epochs=1",
            "train.seed=99",
            f"data.split_file={first.run_dir / 'split.csv'}",
        )
    )
    assert (again.run_dir / "split.csv").read_text() == (first.run_dir / "split.csv").read_text()


def test_a_split_file_listing_missing_images_is_refused(make_imagefolder, tiny_config):
    from tests.conftest import make_image

    data = make_imagefolder(classes=2, per_class=10)
    make_image(data / "class_0" / "extra.png", 0, 99)
    first = train(tiny_config(data, "run_name=first", "train.epochs=1"))
    (data / "class_0" / "extra.png").unlink()
    with pytest.raises(DataError, match=r"split.csv: 1 listed image\(s\) are missing or unreadable"):
        train(tiny_config(data, "run_name=second", f"data.split_file={first.run_dir / 'split.csv'}"))


@pytest.mark.slow  # fine-tunes a real resnet18 for an epoch
def test_the_transfer_learning_config_fine_tunes_a_torchvision_model_from_a_local_file(
    make_imagefolder, tmp_path, monkeypatch
):
    """configs/transfer_resnet18.yaml as shipped, shrunk to tiny images, with weights the test writes."""
    import torchvision

    from trainer.config import load_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: only --weights can satisfy it
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    data = make_imagefolder(classes=2, per_class=10, size=40)
    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "transfer_resnet18.yaml",
        [
            f"data.path={data}",
            "data.num_workers=0",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            f"model.weights={weights}",
            "model.freeze_backbone_epochs=1",
            "preprocess.image_size=32",
            "train.epochs=2",
            "train.batch_size=8",
            f"runs_dir={tmp_path / 'runs'}",
            "run_name=tl",
            f"export.out_dir={tmp_path / 'models'}",
            "export.parity_samples=4",
        ],
    )
    result = train(config, config_name="transfer")
    exported = export_bundle(result.run_dir)
    manifest = load_manifest(exported.bundle_dir)
    assert manifest.architecture == "resnet18"
    assert manifest.preprocess.resize == 37 and manifest.preprocess.crop_height == 32
    assert all(a.parity.passed for a in manifest.artifacts)


def test_a_bundle_folder_is_readable_by_other_users_like_a_service_in_a_container(tiny_bundle):
    import stat

    bundle, _ = tiny_bundle
    mode = bundle.stat().st_mode
    assert mode & (stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH) == 0o055, oct(mode)

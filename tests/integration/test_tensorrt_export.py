"""TensorRT export through the bundle pipeline.

On CPU the engine builder is replaced by a stand-in at the ``trainer.tensorrt`` boundary, so what
surrounds it runs for real: the preflight, calibration images for INT8 only, the parity rule, the
manifest entry. The test marked ``tensorrt`` builds and serves a real engine where TensorRT exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcls.errors import ExportError
from imgcls.manifest import EngineInfo, load_manifest, verify_artifacts
from tests.unit.test_tensorrt_path import HERE as PLATFORM
from trainer.config import load_config
from trainer.export import export_bundle, load_eager_model
from trainer.rundir import RunDir


@pytest.fixture
def stand_in_engine(tiny_run, monkeypatch):
    """Replace engine building with the eager model's own logits (plus ``noise``); record the calls."""
    import trainer.tensorrt as tensorrt_module

    result, _ = tiny_run
    run = RunDir(result.run_dir)
    model = load_eager_model(run, load_config(run.config), run.read_labels())
    calls: dict = {"noise": 0.0, "built": []}

    def build_engine(
        model_, path, *, precision, image_shape, batch_range, example_images, calibration_images, **_
    ):
        calls.update(precision=precision, batch_range=batch_range, calibration=calibration_images)
        calls["built"].append(precision)
        path.write_bytes(b"engine for " + precision.encode())
        low, opt, high = batch_range
        return EngineInfo(**PLATFORM, min_batch_size=low, opt_batch_size=opt, max_batch_size=high)

    def run_engine(path, images, engine, precision):
        with torch.inference_mode():
            logits = model(images).numpy()
        return np.roll(logits, 1, axis=1) if calls["noise"] else logits

    monkeypatch.setattr(tensorrt_module, "require_tensorrt", lambda precisions: None)
    monkeypatch.setattr(tensorrt_module, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt_module, "run_engine", run_engine)
    return calls


def test_fp16_engine_is_built_without_calibration_and_recorded_with_its_platform(tiny_run, stand_in_engine):
    result, root = tiny_run
    exported = export_bundle(
        result.run_dir,
        out_dir=root / "trt",
        name="fp16",
        formats=("onnx", "tensorrt"),
        options={"tensorrt_max_batch_size": 8},
    )
    assert stand_in_engine["precision"] == "fp16" and stand_in_engine["calibration"] is None
    assert stand_in_engine["batch_range"] == (1, 4, 8)
    manifest = load_manifest(exported.bundle_dir)
    verify_artifacts(exported.bundle_dir, manifest)
    engine = manifest.artifact("torchscript_tensorrt")
    assert engine is not None and engine.path == "model.tensorrt-fp16.ts" and engine.device == "cuda"
    assert engine.precision == "fp16" and engine.calibration is None
    assert (
        engine.engine is not None and engine.engine.abi_version == "10" and engine.engine.max_batch_size == 8
    )
    assert engine.parity.passed and engine.parity.min_top1_agreement == 0.99
    assert engine.parity.accuracy is not None


def test_int8_engine_is_calibrated_on_training_images(tiny_run, stand_in_engine):
    result, root = tiny_run
    exported = export_bundle(
        result.run_dir,
        out_dir=root / "trt",
        name="int8",
        formats=("tensorrt",),
        options={"tensorrt_precisions": "int8"},
    )
    train_images = sum(
        1 for line in RunDir(result.run_dir).split.read_text().splitlines() if line.endswith(",train")
    )
    assert stand_in_engine["calibration"] is not None and len(stand_in_engine["calibration"]) == train_images
    engine = load_manifest(exported.bundle_dir).artifact("torchscript_tensorrt", "int8")
    assert engine is not None and engine.path == "model.tensorrt-int8.ts"
    assert engine.calibration is not None and engine.calibration.method == "modelopt int8_default"
    assert engine.parity.min_top1_agreement == 0.98


def test_fp16_and_int8_engines_share_one_bundle_and_cuda_serves_int8_first(tiny_run, stand_in_engine):
    from service.runtimes import candidates as _candidates

    result, root = tiny_run
    exported = export_bundle(
        result.run_dir,
        out_dir=root / "trt",
        name="both",
        formats=("torchscript", "tensorrt"),
        options={"tensorrt_precisions": "fp16,int8"},
    )
    assert stand_in_engine["built"] == ["fp16", "int8"]
    manifest = load_manifest(exported.bundle_dir)
    verify_artifacts(exported.bundle_dir, manifest)
    fp16, int8 = (manifest.artifact("torchscript_tensorrt", p) for p in ("fp16", "int8"))
    assert fp16.calibration is None and int8.calibration is not None
    assert (exported.bundle_dir / "model.tensorrt-fp16.ts").read_bytes() == b"engine for fp16"
    order = [(name, a.path if a else None) for name, a in _candidates(manifest, "cuda", "auto")]
    assert order == [
        ("tensorrt", "model.tensorrt-int8.ts"),
        ("tensorrt", "model.tensorrt-fp16.ts"),
        ("torchscript", "model.torchscript.pt"),
        ("onnxruntime", None),
    ]


def test_an_engine_that_disagrees_fails_the_export_with_a_precision_specific_fix(tiny_run, stand_in_engine):
    stand_in_engine["noise"] = 1.0
    result, root = tiny_run
    out = root / "trt-broken"
    with pytest.raises(ExportError, match=r"tensorrt \(fp16\) artifact agrees .*To fix: .*half precision"):
        export_bundle(result.run_dir, out_dir=out, name="m", formats=("onnx", "tensorrt"))
    assert list((out / "m").iterdir()) == []


@pytest.mark.tensorrt
def test_a_real_fp16_engine_serves_at_batch_one_opt_and_max(tiny_run):
    from service.runtimes import choose_runtime

    result, root = tiny_run
    exported = export_bundle(
        result.run_dir,
        out_dir=root / "trt-real",
        name="tiny",
        formats=("torchscript", "tensorrt"),
        options={"tensorrt_max_batch_size": 8},
    )
    manifest = load_manifest(exported.bundle_dir)
    runtime = choose_runtime(manifest, exported.bundle_dir, device="cuda")
    assert (runtime.name, runtime.precision, runtime.max_batch_size) == ("tensorrt", "fp16", 8)
    for size in (1, 4, 8):
        probabilities = runtime.infer(np.zeros((size, 3, 16, 16), dtype=np.float32))
        assert probabilities.shape == (size, 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)

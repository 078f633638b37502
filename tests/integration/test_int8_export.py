"""INT8 on CPU end to end: calibrate on training images, quantise, check parity, serve it.

Uses the session's real tiny run (tests/conftest.py); the ModelOpt calibration (the first step of
the TensorRT INT8 route) runs here on CPU too, when nvidia-modelopt is installed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from imgcls.errors import ExportError
from imgcls.manifest import load_manifest, verify_artifacts
from service.runtimes import choose_runtime
from trainer.export import export_bundle, export_random_init, load_eager_model
from trainer.rundir import RunDir


@pytest.fixture(scope="module")
def int8_bundle(tiny_run):
    result, root = tiny_run
    exported = export_bundle(
        result.run_dir, out_dir=root / "int8", name="tiny", formats=("onnx", "onnx-int8")
    )
    return exported.bundle_dir, result.run_dir


def test_onnx_int8_artifact_records_calibration_and_reduced_precision_parity(int8_bundle):
    bundle, run_dir = int8_bundle
    manifest = load_manifest(bundle)
    verify_artifacts(bundle, manifest)
    int8 = manifest.artifact("onnx", "int8")
    assert int8 is not None and int8.path == "model.int8.onnx"
    assert int8.calibration is not None and int8.calibration.source == "train"
    train_images = sum(
        1 for line in RunDir(run_dir).split.read_text().splitlines() if line.endswith(",train")
    )
    assert int8.calibration.images == train_images  # fewer than calibration_images: all of them
    parity = int8.parity
    assert parity.passed and parity.min_top1_agreement == 0.98 and parity.top1_agreement >= 0.98
    assert parity.reference_accuracy is not None and parity.accuracy is not None
    assert parity.accuracy_change == pytest.approx(parity.accuracy - parity.reference_accuracy)
    fp32 = manifest.artifact("onnx", "fp32")
    assert fp32 is not None and fp32.parity.min_top1_agreement is None
    assert fp32.parity.samples == 8 and parity.samples > fp32.parity.samples  # every held-out image


def test_onnx_int8_model_is_really_quantised(int8_bundle):
    bundle, _ = int8_bundle
    graph = onnx.load(str(bundle / "model.int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [init for init in graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert weights, "no INT8 weights in the quantised model"


def test_service_prefers_int8_on_cpu_unless_a_runtime_is_pinned(int8_bundle):
    bundle, _ = int8_bundle
    manifest = load_manifest(bundle)
    auto = choose_runtime(manifest, bundle, device="cpu")
    assert (auto.name, auto.precision) == ("onnxruntime", "int8")
    pinned = choose_runtime(manifest, bundle, device="cpu", preference="onnxruntime")
    assert (pinned.name, pinned.precision) == ("onnxruntime", "fp32")
    batch = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(auto.infer(batch).sum(axis=1), 1.0, atol=1e-5)


def test_int8_that_fails_parity_stops_a_trained_export_and_writes_nothing(tiny_run, monkeypatch):
    import trainer.artifacts as artifacts_module

    real = artifacts_module._load_back

    def rolled_for_int8(fmt, path, images, config):
        logits = real(fmt, path, images, config)
        return np.roll(logits, 1, axis=1) if path.name == "model.int8.onnx" else logits

    monkeypatch.setattr(artifacts_module, "_load_back", rolled_for_int8)
    result, root = tiny_run
    out = root / "int8-broken"
    with pytest.raises(
        ExportError,
        match=r"onnx-int8 \(int8\) artifact agrees .* below the 98% required; nothing was written. To fix: calibrate",
    ):
        export_bundle(result.run_dir, out_dir=out, name="m", formats=("onnx", "onnx-int8"))
    assert list((out / "m").iterdir()) == []


def test_random_init_keeps_an_int8_artifact_that_failed_parity_but_the_service_skips_it(
    tmp_path, monkeypatch
):
    import trainer.artifacts as artifacts_module

    real = artifacts_module._load_back
    monkeypatch.setattr(
        artifacts_module,
        "_load_back",
        lambda fmt, path, images, config: (
            np.roll(real(fmt, path, images, config), 1, axis=1)
            if path.name == "model.int8.onnx"
            else real(fmt, path, images, config)
        ),
    )
    result = export_random_init(
        "simple_cnn", 4, 16, tmp_path / "models" / "speedy" / "1", formats=("onnx", "onnx-int8")
    )
    int8 = result.manifest.artifact("onnx", "int8")
    assert int8 is not None and not int8.parity.passed and int8.calibration.source == "random"
    raw = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert [a["parity"]["passed"] for a in raw["artifacts"]] == [True, False]
    assert choose_runtime(result.manifest, result.bundle_dir, device="cpu").precision == "fp32"
    pinned = choose_runtime(result.manifest, result.bundle_dir, device="cpu", preference="onnxruntime-int8")
    assert (pinned.name, pinned.precision) == ("onnxruntime", "int8")  # for speed tests, on request


def test_modelopt_int8_calibration_runs_on_cpu_with_training_images(tiny_run):
    from trainer.config import load_config
    from trainer.quantize import calibrate_modelopt, import_modelopt

    try:
        import_modelopt()
    except ImportError as exc:
        pytest.skip(f"{exc} (pip install -e '.[tensorrt]' or '.[dev]')")
    from modelopt.torch.quantization.nn import TensorQuantizer

    from imgcls.preprocess import eval_transform, load_image
    from trainer.transforms import preprocess_spec

    result, _ = tiny_run
    run = RunDir(result.run_dir)
    config = load_config(run.config)
    labels = run.read_labels()
    model = load_eager_model(run, config, labels)
    transform = eval_transform(preprocess_spec(config.preprocess))
    splits = run.read_splits(labels)
    train = torch.stack([transform(load_image(s.path, "RGB")) for s in splits["train"]])
    held_out = torch.stack([transform(load_image(s.path, "RGB")) for s in splits["val"] + splits["test"]])
    with torch.inference_mode():
        reference = model(held_out)
    quantized = calibrate_modelopt(model, train, precision="int8")
    quantizers = [m for m in quantized.modules() if isinstance(m, TensorQuantizer) and m.is_enabled]
    assert quantizers and all(q.amax is not None and bool((q.amax > 0).all()) for q in quantizers)
    with torch.no_grad():
        fake_quantized = quantized(held_out)
    assert (fake_quantized.argmax(1) == reference.argmax(1)).float().mean() >= 0.9
    assert not torch.equal(fake_quantized, reference)  # the quantizers really act on the forward pass

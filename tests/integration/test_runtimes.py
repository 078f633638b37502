"""Runtimes against a real tiny bundle: agreement between them, selection, and parity with the trainer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from imgcls.manifest import MANIFEST_FILENAME, load_manifest
from service.errors import RuntimeUnavailableError
from service.preprocess import Preprocessor
from service.runtimes import OnnxRuntime, TorchScriptRuntime, choose_runtime
from service.runtimes.torchscript import prefer_channels_last
from trainer.config import load_config
from trainer.export import load_eager_model
from trainer.rundir import RunDir


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_onnx_and_torchscript_runtimes_agree_and_return_probabilities(tiny_bundle, batch_size: int):
    bundle, _ = tiny_bundle
    batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, 16, 16)).astype(np.float32)
    onnx = OnnxRuntime(bundle / "model.onnx", intra_op_threads=1).infer(batch)
    scripted = TorchScriptRuntime(bundle / "model.torchscript.pt").infer(batch)
    assert onnx.shape == scripted.shape == (batch_size, 3)
    np.testing.assert_allclose(onnx.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(onnx, scripted, atol=1e-5)


def test_auto_picks_onnx_runtime_on_the_cpu_and_honours_a_preference(tiny_bundle):
    bundle, _ = tiny_bundle
    manifest = load_manifest(bundle)
    assert choose_runtime(manifest, bundle, device="cpu").name == "onnxruntime"
    assert choose_runtime(manifest, bundle, device="cpu", preference="torchscript").name == "torchscript"


def test_a_bundle_without_onnx_falls_back_to_torchscript(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    manifest = load_manifest(bundle)
    only_ts = manifest.model_copy(
        update={"artifacts": tuple(a for a in manifest.artifacts if a.format == "torchscript")}
    )
    shutil.copy(bundle / "model.torchscript.pt", tmp_path)
    (tmp_path / MANIFEST_FILENAME).write_text(only_ts.to_json())
    assert choose_runtime(only_ts, tmp_path, device="cpu").name == "torchscript"


def test_asking_for_tensorrt_without_its_artifact_says_why(tiny_bundle):
    bundle, _ = tiny_bundle
    with pytest.raises(
        RuntimeUnavailableError, match=r"no runtime can serve tiny v1 .*tensorrt: the bundle has no artifact"
    ):
        choose_runtime(load_manifest(bundle), bundle, device="cpu", preference="tensorrt")


def test_service_top1_equals_the_trainer_in_process_prediction(tiny_bundle):
    bundle, run_dir = tiny_bundle
    manifest = load_manifest(bundle)
    run = RunDir(run_dir)
    config = load_config(run.config)
    labels = run.read_labels()
    model = load_eager_model(run, config, labels)
    from imgcls.preprocess import eval_transform, load_image

    transform = eval_transform(manifest.preprocess)
    samples = [s for part in run.read_splits(labels).values() for s in part]
    preprocess = Preprocessor(manifest.preprocess)
    runtime = choose_runtime(manifest, bundle, device="cpu")
    served = runtime.infer(np.stack([preprocess(s.path.read_bytes()) for s in samples]))
    temperature = manifest.temperature or 1.0  # the service serves calibrated scores
    with torch.inference_mode():
        logits = model(torch.stack([transform(load_image(s.path, "RGB")) for s in samples]))
        trained = (logits / temperature).softmax(1).numpy()
    np.testing.assert_array_equal(served.argmax(1), trained.argmax(1))
    np.testing.assert_allclose(served, trained, atol=1e-4)


def test_channels_last_input_switched_on_gives_the_same_probabilities(tiny_bundle):
    bundle, _ = tiny_bundle
    batch = np.random.default_rng(5).standard_normal((5, 3, 16, 16)).astype(np.float32)
    contiguous = TorchScriptRuntime(bundle / "model.torchscript.pt")
    channels_last = TorchScriptRuntime(bundle / "model.torchscript.pt")
    assert channels_last.choose_memory_format(batch, "on") == "channels-last input (channels_last=on)"
    np.testing.assert_allclose(channels_last.infer(batch), contiguous.infer(batch), atol=1e-5)


def test_the_layout_is_measured_only_on_cuda_and_never_changed_when_off(tiny_bundle):
    bundle, _ = tiny_bundle
    batch = np.zeros((4, 3, 16, 16), dtype=np.float32)
    runtime = TorchScriptRuntime(bundle / "model.torchscript.pt")
    assert runtime.choose_memory_format(batch, "auto") is None  # CPU: nothing timed, contiguous kept
    assert runtime.choose_memory_format(batch, "off") is None
    assert not runtime._channels_last
    assert OnnxRuntime(bundle / "model.onnx").choose_memory_format(batch, "on") is None  # one layout


@pytest.mark.parametrize(
    ("contiguous", "channels_last", "keep"), [(1.0, 0.9, True), (1.0, 0.99, False), (1.0, 1.2, False)]
)
def test_channels_last_is_kept_only_when_clearly_faster(contiguous, channels_last, keep):
    assert prefer_channels_last(contiguous, channels_last) is keep


@pytest.mark.cuda
def test_auto_layout_on_cuda_times_both_layouts_and_answers_the_same(tiny_bundle):
    bundle, _ = tiny_bundle
    runtime = choose_runtime(load_manifest(bundle), bundle, device="cuda", preference="torchscript")
    batch = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    note = runtime.choose_memory_format(batch, "auto")
    assert note is not None and "ms channels-last against" in note and "at batch 8" in note
    reference = TorchScriptRuntime(bundle / "model.torchscript.pt").infer(batch)
    np.testing.assert_allclose(runtime.infer(batch), reference, atol=1e-2)


@pytest.mark.cuda
def test_torchscript_serves_fp16_on_cuda(tiny_bundle):
    bundle, _ = tiny_bundle
    runtime = choose_runtime(load_manifest(bundle), bundle, device="cuda", preference="torchscript")
    assert runtime.precision == "fp16"
    batch = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    reference = TorchScriptRuntime(bundle / "model.torchscript.pt").infer(batch)
    np.testing.assert_allclose(runtime.infer(batch), reference, atol=1e-2)


@pytest.mark.tensorrt
def test_tensorrt_runtime_needs_an_engine_artifact(tiny_bundle):
    bundle, _ = tiny_bundle
    with pytest.raises(RuntimeUnavailableError, match="no artifact"):
        choose_runtime(load_manifest(bundle), bundle, device="cuda", preference="tensorrt")


@pytest.mark.cuda
def test_cuda_runtime_stages_through_pinned_buffers_on_its_own_stream_at_any_batch_size(tiny_bundle):
    bundle, _ = tiny_bundle
    runtime = choose_runtime(load_manifest(bundle), bundle, device="cuda", preference="torchscript")
    staging = runtime._staging
    assert staging is not None and staging.stream != torch.cuda.default_stream()
    reference = TorchScriptRuntime(bundle / "model.torchscript.pt")
    rng = np.random.default_rng(1)
    for size in (8, 1, 3, 8):  # grows once, then reuses the pinned buffers
        batch = rng.standard_normal((size, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(runtime.infer(batch), reference.infer(batch), atol=1e-2)
    assert staging._inputs.is_pinned() and staging._inputs.shape[0] == 8
    assert staging._outputs.is_pinned()


def test_torchscript_takes_a_batch_already_on_its_device_and_answers_as_from_host_memory(tiny_bundle):
    bundle, _ = tiny_bundle
    runtime = TorchScriptRuntime(bundle / "model.torchscript.pt")
    assert runtime.accepts_device_tensors and not OnnxRuntime.accepts_device_tensors
    batch = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(runtime.infer_tensor(torch.from_numpy(batch)), runtime.infer(batch))
    onnx = OnnxRuntime(bundle / "model.onnx", intra_op_threads=1)  # the default: through host memory
    np.testing.assert_allclose(onnx.infer_tensor(torch.from_numpy(batch)), onnx.infer(batch), atol=1e-6)

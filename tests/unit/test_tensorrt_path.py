"""The TensorRT path up to the GPU boundary: manifest fields, the compatibility rule, runtime order,
and a clear failure (nothing written) where torch_tensorrt or CUDA is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from benchmarks.artifact_runtimes import served_label
from imgcls.engine_platform import engine_mismatch
from imgcls.errors import ExportError
from imgcls.manifest import Artifact, Calibration, EngineInfo, ParityResult
from service.errors import RuntimeUnavailableError
from service.runtimes import TensorRTRuntime
from service.runtimes import candidates as _candidates
from tests.conftest import skip_if_torch_tensorrt_installed
from trainer.artifacts import artifact_file, artifact_plan, needs_calibration
from trainer.config import ExportConfig, RunConfig
from trainer.tensorrt import TENSORRT_INSTALL_HINT, require_tensorrt

from .test_manifest import _manifest

HERE = {
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "cuda_version": "13.0",
    "tensorrt_version": "11.1.0",
    "torch_tensorrt_version": "2.14.0",
    "abi_version": "10",
}


def _engine(**changes) -> EngineInfo:
    fields = {**HERE, "min_batch_size": 1, "opt_batch_size": 16, "max_batch_size": 32, **changes}
    return EngineInfo(**fields)


def _parity(passed: bool = True) -> ParityResult:
    return ParityResult(
        samples=100,
        top1_agreement=0.99 if passed else 0.5,
        max_abs_diff=0.01,
        tolerance=1e-4,
        min_top1_agreement=0.98,
        passed=passed,
    )


def _artifact(fmt: str, path: str, precision: str = "fp32", passed: bool = True) -> Artifact:
    reduced = precision != "fp32"
    return Artifact(
        format=fmt,
        path=path,
        precision=precision,
        sha256="0" * 64,
        size_bytes=1,
        device="cuda" if fmt == "torchscript_tensorrt" else "cpu",
        parity=_parity(passed)
        if reduced
        else ParityResult(samples=8, top1_agreement=1.0, max_abs_diff=0.0, tolerance=1e-4, passed=True),
        calibration=Calibration(images=64, source="train", method="m") if precision == "int8" else None,
        engine=_engine() if fmt == "torchscript_tensorrt" else None,
    )


def test_an_engine_runs_where_it_was_built():
    assert engine_mismatch(_engine(), HERE) is None


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        ({"abi_version": "9"}, "runtime ABI 9"),
        ({"tensorrt_version": "11.0.3"}, "built with TensorRT 11.0.3, this service has TensorRT 11.1.0"),
        (
            {"compute_capability": "8.0", "gpu_name": "NVIDIA A100"},
            "built for NVIDIA A100 (compute capability 8.0)",
        ),
        (
            {"tensorrt_version": "11.2.0", "version_compatible": True},
            "version-compatible with TensorRT 11.2.0",
        ),
        (
            {"tensorrt_version": "10.9.0", "version_compatible": True},
            "version-compatible with TensorRT 10.9.0",
        ),
    ],
)
def test_an_engine_built_elsewhere_is_refused_with_the_reason(built, expected):
    reason = engine_mismatch(_engine(**built), HERE)
    assert reason is not None and expected in reason


def test_compatibility_flags_widen_what_an_engine_accepts():
    assert engine_mismatch(_engine(tensorrt_version="11.0.1", version_compatible=True), HERE) is None
    assert engine_mismatch(_engine(compute_capability="8.6", hardware_compatible=True), HERE) is None
    turing = {**HERE, "compute_capability": "7.5", "gpu_name": "Tesla T4"}
    assert "Ampere or newer" in engine_mismatch(_engine(hardware_compatible=True), turing)


def test_manifest_keeps_engine_info_to_tensorrt_artifacts_and_requires_calibration_on_int8():
    engine = _artifact("torchscript_tensorrt", "e.ts", "fp16").model_dump()
    Artifact.model_validate({**engine, "engine": None})  # loads; the service then refuses that engine
    with pytest.raises(ValueError, match="engine build info belongs to TensorRT artifacts only"):
        Artifact.model_validate({**_artifact("onnx", "m.onnx").model_dump(), "engine": engine["engine"]})
    with pytest.raises(ValueError, match="must record its calibration"):
        Artifact.model_validate(
            {**_artifact("onnx", "m.int8.onnx", "int8").model_dump(), "calibration": None}
        )
    with pytest.raises(ValueError, match="min <= opt <= max"):
        _engine(opt_batch_size=64)


def test_an_fp32_manifest_is_written_without_the_new_optional_fields():
    raw = _manifest().to_json()
    for field in ("calibration", "engine", "min_top1_agreement", "reference_accuracy", "null"):
        assert field not in raw  # a service that predates them still reads an FP32 bundle


def test_export_config_puts_opt_between_one_and_max():
    assert ExportConfig().tensorrt_batch_range == (1, 16, 32)
    assert ExportConfig(tensorrt_max_batch_size=2).tensorrt_batch_range == (1, 2, 2)
    assert ExportConfig(tensorrt_max_batch_size=64, tensorrt_opt_batch_size=8).tensorrt_batch_range == (
        1,
        8,
        64,
    )
    with pytest.raises(ValueError, match="must not exceed"):
        ExportConfig(tensorrt_max_batch_size=8, tensorrt_opt_batch_size=16)


def test_export_config_takes_one_or_several_tensorrt_precisions():
    assert ExportConfig().tensorrt_precisions == ("fp16",)
    assert ExportConfig(tensorrt_precisions="fp16, int8").tensorrt_precisions == ("fp16", "int8")
    assert ExportConfig(tensorrt_precisions="int8,int8").tensorrt_precisions == ("int8",)
    assert ExportConfig(tensorrt_precisions=["fp8"]).tensorrt_precisions == ("fp8",)
    for bad in ("fp32", "", "fp16,int4"):
        with pytest.raises(ValidationError, match="tensorrt_precisions"):
            ExportConfig(tensorrt_precisions=bad)


def test_each_tensorrt_precision_is_its_own_artifact_written_after_the_fp32_ones():
    config = RunConfig(export={"tensorrt_precisions": "fp16,int8"})
    plan = artifact_plan(("tensorrt", "onnx-int8", "torchscript"), config)
    assert plan == [("torchscript", None), ("tensorrt", "fp16"), ("tensorrt", "int8"), ("onnx-int8", None)]
    assert [artifact_file(fmt, p) for fmt, p in plan[1:3]] == [
        "model.tensorrt-fp16.ts",
        "model.tensorrt-int8.ts",
    ]
    assert needs_calibration(("tensorrt",), config)
    assert not needs_calibration(("tensorrt", "onnx"), RunConfig(export={"tensorrt_precisions": "fp16"}))


def test_the_readme_has_the_step_by_step_guide_the_install_hint_points_to():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "bundle.md").read_text(encoding="utf-8")
    assert (
        "#### TensorRT engines, step by step" in readme
        and "TensorRT engines, step by step" in TENSORRT_INSTALL_HINT
    )
    assert "docker build -t imgcls:0.1.0-gpu ." in readme and "--precision fp16,int8" in readme


def _bundle_with(*artifacts: Artifact):
    return _manifest(artifacts=artifacts)


def _order(manifest, device, preference="auto"):
    return [(name, a.path if a else None) for name, a in _candidates(manifest, device, preference)]


def test_cuda_tries_engines_fastest_precision_first_then_torchscript_then_onnx():
    manifest = _bundle_with(
        _artifact("torchscript", "m.ts"),
        _artifact("onnx", "m.onnx"),
        _artifact("torchscript_tensorrt", "fp16.ts", "fp16"),
        _artifact("torchscript_tensorrt", "int8.ts", "int8"),
        _artifact("torchscript_tensorrt", "bad.ts", "int8", passed=False),
    )
    assert _order(manifest, "cuda") == [
        ("tensorrt", "int8.ts"),
        ("tensorrt", "fp16.ts"),
        ("torchscript", "m.ts"),
        ("onnxruntime", "m.onnx"),
    ]
    pinned = _order(manifest, "cuda", "tensorrt")  # pinned: a failed engine is a last resort, not skipped
    assert pinned == [("tensorrt", "int8.ts"), ("tensorrt", "fp16.ts"), ("tensorrt", "bad.ts")]


def test_the_served_label_follows_the_automatic_order_over_what_loaded():
    manifest = _bundle_with(
        _artifact("torchscript", "m.ts"),
        _artifact("onnx", "m.onnx"),
        _artifact("torchscript_tensorrt", "fp16.ts", "fp16"),
        _artifact("torchscript_tensorrt", "int8.ts", "int8"),
        _artifact("onnx", "m.int8.onnx", "int8"),
    )
    everything = {"torchscript", "onnxruntime", "tensorrt-fp16", "tensorrt-int8", "onnxruntime-int8"}
    assert served_label(manifest, "cuda", everything) == "tensorrt-int8"
    assert served_label(manifest, "cuda", everything - {"tensorrt-int8"}) == "tensorrt-fp16"
    assert served_label(manifest, "cuda", {"onnxruntime", "onnxruntime-int8"}) == "onnxruntime"
    assert served_label(manifest, "cpu", everything) == "onnxruntime-int8"
    assert served_label(manifest, "cpu", set()) is None


def test_cpu_tries_int8_onnx_only_when_it_passed_parity_and_nothing_is_pinned():
    passed = _bundle_with(_artifact("onnx", "m.onnx"), _artifact("onnx", "m.int8.onnx", "int8"))
    assert _order(passed, "cpu") == [
        ("onnxruntime", "m.int8.onnx"),
        ("onnxruntime", "m.onnx"),
        ("torchscript", None),
    ]
    assert _order(passed, "cpu", "onnxruntime") == [("onnxruntime", "m.onnx")]
    failed = _bundle_with(_artifact("onnx", "m.onnx"), _artifact("onnx", "m.int8.onnx", "int8", passed=False))
    assert _order(failed, "cpu")[0] == ("onnxruntime", "m.onnx")
    assert _order(failed, "cpu", "onnxruntime-int8") == [("onnxruntime", "m.int8.onnx")]  # pinned: served
    assert _order(_bundle_with(_artifact("onnx", "m.onnx")), "cpu", "onnxruntime-int8") == [
        ("onnxruntime", None)
    ]


def test_an_engine_for_another_gpu_is_refused_before_it_is_loaded(monkeypatch, tmp_path):
    import torch

    import imgcls.engine_platform as engine_platform

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        engine_platform,
        "platform_info",
        lambda: {**HERE, "compute_capability": "8.9", "gpu_name": "NVIDIA L4"},
    )
    with pytest.raises(
        RuntimeUnavailableError,
        match=r"engine e\.ts built for NVIDIA H100 80GB HBM3 .* this GPU is NVIDIA L4",
    ):
        TensorRTRuntime(tmp_path / "e.ts", precision="fp16", engine=_engine())  # the file need not even exist


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (
            ImportError("torch_tensorrt does not import (ModuleNotFoundError)"),
            "torch_tensorrt does not import",
        ),
        (
            RuntimeError("no ABI_VERSION op"),
            "cannot read the TensorRT platform: RuntimeError: no ABI_VERSION op",
        ),
    ],
)
def test_a_tensorrt_platform_that_cannot_be_read_makes_the_runtime_unavailable_not_the_model_failed(
    monkeypatch, tmp_path, platform, expected
):
    import torch

    import imgcls.engine_platform as engine_platform

    def broken():
        raise platform

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine_platform, "platform_info", broken)
    with pytest.raises(RuntimeUnavailableError, match=expected):
        TensorRTRuntime(tmp_path / "e.ts", precision="fp16", engine=_engine())
    with pytest.raises(RuntimeUnavailableError, match="records no engine build info"):
        TensorRTRuntime(tmp_path / "e.ts", precision="fp16", engine=None)


def test_tensorrt_export_without_torch_tensorrt_says_what_to_install():
    skip_if_torch_tensorrt_installed()
    with pytest.raises(
        ExportError,
        match=r"imgcls:0\.1\.0-gpu.*nvcr\.io/nvidia/pytorch:26\.09-py3.*step by step.*Nothing was written",
    ):
        require_tensorrt(("fp16",))

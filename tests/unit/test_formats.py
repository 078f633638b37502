"""The export-format table (imgcls.formats): one name per format from the config to the manifest to
the service, the manifest's own names unchanged, and the service's old runtime names still accepted."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from imgcls.formats import (
    EXPORT_FORMATS,
    FORMAT_NAMES,
    artifact_label,
    artifacts_of,
    canonical_name,
    format_named,
    format_of,
    runtime_label,
    runtime_of,
)
from imgcls.manifest import Artifact, ArtifactFormat, Calibration, ParityResult
from service.settings import ModelOverrides, Settings
from trainer import artifacts
from trainer.config import ExportConfig, ExportFormat, TensorRTPrecision

from .test_manifest import _manifest


def _artifact(fmt: str, precision: str, path: str = "model.bin") -> Artifact:
    return Artifact(
        format=fmt,
        path=path,
        precision=precision,
        sha256="0" * 64,
        size_bytes=1,
        parity=ParityResult(samples=8, top1_agreement=1.0, max_abs_diff=0.0, tolerance=1e-4, passed=True),
        calibration=Calibration(images=8, source="train", method="minmax") if precision == "int8" else None,
    )


def test_the_config_accepts_exactly_the_formats_in_the_table_in_its_order():
    assert tuple(f.name for f in EXPORT_FORMATS) == FORMAT_NAMES == get_args(ExportFormat)
    assert artifacts.FORMATS == FORMAT_NAMES
    assert ExportConfig(formats=list(FORMAT_NAMES)).formats == FORMAT_NAMES


def test_every_format_maps_to_a_manifest_format_and_back():
    for fmt in EXPORT_FORMATS:
        assert fmt.artifact_format in get_args(ArtifactFormat)
        for precision in fmt.precisions:
            artifact = _artifact(fmt.artifact_format, precision, fmt.file_for(precision))
            assert format_of(artifact) is fmt
            assert runtime_of(artifact) == fmt.runtime


def test_the_manifest_names_stay_what_bundles_already_hold():
    recorded = {f.name: (f.artifact_format, f.precisions) for f in EXPORT_FORMATS}
    assert recorded == {
        "torchscript": ("torchscript", ("fp32",)),
        "onnx": ("onnx", ("fp32",)),
        "onnx-int8": ("onnx", ("int8",)),
        "tensorrt": ("torchscript_tensorrt", ("fp16", "int8", "fp8")),
    }


def test_tensorrt_is_written_in_the_precisions_the_config_offers():
    assert format_named("tensorrt").precisions == get_args(TensorRTPrecision)


def test_each_format_has_its_own_bundle_file():
    files = [f.file_for(p) for f in EXPORT_FORMATS for p in f.precisions]
    assert len(set(files)) == len(files)
    assert format_named("onnx-int8").file_for() == "model.int8.onnx"
    assert format_named("tensorrt").file_for("int8") == "model.tensorrt-int8.ts"
    with pytest.raises(ValueError, match="needs one of its precisions"):
        format_named("tensorrt").file_for()


def test_reduced_precision_formats_are_the_ones_without_fp32():
    assert {"onnx-int8", "tensorrt"} == artifacts.REDUCED_PRECISION_FORMATS


def test_a_format_selects_its_artifacts_by_manifest_format_and_precision():
    manifest = _manifest(
        artifacts=(_artifact("onnx", "fp32", "model.onnx"), _artifact("onnx", "int8", "model.int8.onnx"))
    )
    assert [a.path for a in artifacts_of(manifest, "onnx")] == ["model.onnx"]
    assert [a.path for a in artifacts_of(manifest, "onnx-int8")] == ["model.int8.onnx"]
    assert artifacts_of(manifest, "tensorrt") == []


def test_an_artifact_no_export_writes_has_no_format():
    with pytest.raises(ValueError, match="no export format writes onnx in fp16"):
        format_of(_artifact("onnx", "fp16"))


def test_labels_name_the_engine_and_the_precision_where_one_engine_serves_several():
    labels = {
        f"{f.name}/{p}": artifact_label(_artifact(f.artifact_format, p))
        for f in EXPORT_FORMATS
        for p in f.precisions
    }
    assert labels == {
        "torchscript/fp32": "torchscript",
        "onnx/fp32": "onnxruntime",
        "onnx-int8/int8": "onnxruntime-int8",
        "tensorrt/fp16": "tensorrt-fp16",
        "tensorrt/int8": "tensorrt-int8",
        "tensorrt/fp8": "tensorrt-fp8",
    }
    assert runtime_label("torchscript", "fp16") == "torchscript"  # FP16 on CUDA from the FP32 artifact


def test_the_old_runtime_names_normalise_to_the_format_names():
    assert canonical_name("onnxruntime") == "onnx"
    assert canonical_name("onnxruntime-int8") == "onnx-int8"
    assert [canonical_name(name) for name in FORMAT_NAMES] == list(FORMAT_NAMES)
    assert Settings(runtime="onnxruntime").runtime == "onnx"
    assert Settings(runtime="onnxruntime-int8").runtime == "onnx-int8"
    assert ModelOverrides(runtime="onnxruntime-int8").runtime == "onnx-int8"
    assert [Settings(runtime=name).runtime for name in ("auto", *FORMAT_NAMES)] == ["auto", *FORMAT_NAMES]


def test_an_unknown_name_is_refused_naming_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown export format 'onnx-fp16'; valid: torchscript, onnx, onnx-int8, tensorrt"
    ):
        format_named("onnx-fp16")
    with pytest.raises(ValueError, match="valid: torchscript, onnx, onnx-int8, tensorrt"):
        canonical_name("tensorrt-fp16")
    with pytest.raises(ValidationError, match="'auto', 'torchscript', 'onnx', 'onnx-int8' or 'tensorrt'"):
        Settings(runtime="tensorrt-fp16")
    with pytest.raises(ValidationError, match="'torchscript', 'onnx', 'onnx-int8' or 'tensorrt'"):
        ExportConfig(formats=["onnxruntime"])  # the old names were the service's, never export formats

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgcls.errors import BundleError
from imgcls.manifest import (
    Artifact,
    InputSpec,
    Manifest,
    ParityResult,
    PreprocessSpec,
    SourceInfo,
    load_manifest,
    sha256_file,
    verify_artifacts,
)


def _manifest(bundle: Path | None = None, **changes) -> Manifest:
    payload = b"model bytes"
    if bundle is not None:
        (bundle / "model.onnx").write_bytes(payload)
    import hashlib

    fields = {
        "name": "digits",
        "version": 1,
        "labels": ("0", "1"),
        "preprocess": PreprocessSpec(
            resize=16, crop_height=16, crop_width=16, mean=(0.5,), std=(0.5,), color_mode="L"
        ),
        "input": InputSpec(channels=1, height=16, width=16),
        "artifacts": (
            Artifact(
                format="onnx",
                path="model.onnx",
                sha256=hashlib.sha256(payload).hexdigest(),
                size_bytes=len(payload),
                opset=18,
                parity=ParityResult(
                    samples=8, top1_agreement=1.0, max_abs_diff=1e-7, tolerance=1e-4, passed=True
                ),
            ),
        ),
        "metrics": {"accuracy": 0.99},
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "architecture": "simple_cnn",
        "config_digest": "a" * 64,
        "source": SourceInfo(run_dir="runs/x", imgcls_version="0.1.0", torch_version="2.14.1"),
    }
    fields.update(changes)
    return Manifest(**fields)


def test_manifest_round_trips_through_json(tmp_path: Path):
    manifest = _manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.num_classes == 2
    assert loaded.artifact("onnx").opset == 18
    assert loaded.artifact("torchscript") is None
    verify_artifacts(tmp_path, loaded)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Digits!"}, "model name"),
        ({"labels": ("only",)}, "at least 2 labels"),
        ({"labels": ("a", "a")}, "unique"),
        ({"metrics": {"f1": 0.9}}, "must include 'accuracy'"),
        ({"input": InputSpec(channels=3, height=16, width=16)}, "does not match the preprocess output"),
        ({"version": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_manifests_are_rejected_with_the_reason(changes: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        _manifest(**changes)


def test_a_random_init_bundle_needs_no_accuracy_and_says_so(tmp_path: Path):
    manifest = _manifest(tmp_path, metrics={}, weights="random_init")
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    assert load_manifest(tmp_path).weights == "random_init"


def test_manifests_without_a_weights_field_read_as_trained(tmp_path: Path):
    raw = _manifest(tmp_path).model_dump(mode="json", exclude={"weights"})
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(tmp_path).weights == "trained"


def test_artifact_path_must_stay_inside_the_bundle():
    with pytest.raises(ValidationError, match="plain file name"):
        Artifact(
            format="onnx",
            path="../escape.onnx",
            sha256="0" * 64,
            size_bytes=1,
            parity=ParityResult(samples=1, top1_agreement=1, max_abs_diff=0, tolerance=1e-4, passed=True),
        )


def test_preprocess_needs_one_mean_per_channel():
    with pytest.raises(ValidationError, match="need 3 value"):
        PreprocessSpec(resize=8, crop_height=8, crop_width=8, mean=(0.5,), std=(0.5,), color_mode="RGB")


def test_missing_manifest_says_what_a_bundle_is(tmp_path: Path):
    with pytest.raises(BundleError, match=r"no manifest.*imgcls export"):
        load_manifest(tmp_path)


def test_invalid_manifest_lists_the_fields(tmp_path: Path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(BundleError, match=r"invalid manifest: .*version: Field required"):
        load_manifest(tmp_path)


def test_newer_schema_version_asks_for_an_upgrade(tmp_path: Path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_manifest(tmp_path)


def test_tampered_artifact_fails_verification(tmp_path: Path):
    manifest = _manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"model bytez")
    with pytest.raises(BundleError, match="does not match the manifest"):
        verify_artifacts(tmp_path, manifest)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_artifacts(tmp_path, manifest)


def test_sha256_file_matches_hashlib(tmp_path: Path):
    import hashlib

    (tmp_path / "f").write_bytes(b"x" * 3_000_000)
    assert sha256_file(tmp_path / "f", chunk_bytes=1000) == hashlib.sha256(b"x" * 3_000_000).hexdigest()

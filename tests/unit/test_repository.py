from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgcls.errors import BundleError, ModelNotFoundError
from imgcls.manifest import (
    MANIFEST_FILENAME,
    Artifact,
    InputSpec,
    Manifest,
    ParityResult,
    PreprocessSpec,
    SourceInfo,
)
from imgcls.repository import ModelRepository


def _write_bundle(folder: Path, name: str, version: int) -> None:
    """A bundle the repository accepts: a manifest whose one artifact's size and sha256 match its file
    (what the repository verifies; nothing here loads a model)."""
    payload = f"model {name} v{version}".encode()
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload)
    manifest = Manifest(
        name=name,
        version=version,
        labels=("a", "b", "c"),
        preprocess=PreprocessSpec.resolve(20),
        input=InputSpec(channels=3, height=20, width=20),
        artifacts=(
            Artifact(
                format="onnx",
                path="model.onnx",
                sha256=hashlib.sha256(payload).hexdigest(),
                size_bytes=len(payload),
                parity=ParityResult(
                    samples=4, top1_agreement=1.0, max_abs_diff=0.0, tolerance=1e-4, passed=True
                ),
            ),
        ),
        metrics={"accuracy": 1.0},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        architecture="simple_cnn",
        config_digest="0" * 64,
        source=SourceInfo(run_dir="runs/tiny", imgcls_version="0.1.0", torch_version="2.14.1"),
    )
    (folder / MANIFEST_FILENAME).write_text(manifest.to_json())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """models/tiny/{1,2}/, and a hidden staging folder an export in progress would leave."""
    root = tmp_path / "models"
    for version in (1, 2):
        _write_bundle(root / "tiny" / str(version), "tiny", version)
    (root / "tiny" / ".3.staging-x").mkdir()  # an export in progress: never loaded
    return root


def test_every_version_is_found_and_the_highest_serves_by_default(repo: Path):
    repository = ModelRepository(repo)
    refs = repository.scan()
    assert [(r.name, r.version, r.ok) for r in refs] == [("tiny", 1, True), ("tiny", 2, True)]
    assert repository.get("tiny").version == 2
    assert repository.get("tiny", 1).version == 1


def test_a_tampered_bundle_is_not_ready_with_the_reason_and_the_default_skips_it(repo: Path):
    (repo / "tiny" / "2" / "model.onnx").write_bytes(b"tampered")
    repository = ModelRepository(repo)
    repository.scan()
    broken = repository.get("tiny", 2)
    assert not broken.ok
    assert "model.onnx: size 8 bytes" in broken.error
    assert repository.get("tiny").version == 1


def test_a_manifest_that_names_another_folder_is_refused(repo: Path):
    shutil.copytree(repo / "tiny" / "1", repo / "other" / "1")
    repository = ModelRepository(repo)
    repository.scan()
    assert "manifest says tiny v1 but the folder is other/1" in repository.get("other").error


def test_unknown_models_and_versions_name_what_exists(repo: Path):
    repository = ModelRepository(repo)
    repository.scan()
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nope'; models served here: tiny"):
        repository.get("nope")
    with pytest.raises(ModelNotFoundError, match=r"no version 7; versions: 1, 2"):
        repository.get("tiny", 7)


def test_a_missing_repository_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(BundleError, match=r"model repository not found; .*make demo"):
        ModelRepository(tmp_path / "none").scan()

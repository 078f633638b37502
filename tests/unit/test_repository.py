from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgcls.errors import BundleError, ModelNotFoundError
from imgcls.manifest import MANIFEST_FILENAME, load_manifest
from imgcls.repository import ModelRepository


@pytest.fixture
def repo(tiny_bundle, tmp_path: Path) -> Path:
    """models/tiny/{1,2}/ copies of the real tiny bundle (manifests renumbered to match)."""
    bundle, _ = tiny_bundle
    root = tmp_path / "models"
    for version in (1, 2):
        target = root / "tiny" / str(version)
        shutil.copytree(bundle, target)
        manifest = load_manifest(bundle).model_copy(update={"version": version})
        (target / MANIFEST_FILENAME).write_text(manifest.to_json())
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

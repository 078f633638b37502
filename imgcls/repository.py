"""The model repository: ``<root>/<name>/<version>/manifest.json`` bundles, found and verified.

Every bundle's manifest is validated and its artifacts' sizes and sha256 checked before anything
loads. A bundle that fails is kept, not ready, with the reason, so the others still serve and an
operator can see why. Hidden folders (``.1.staging-…`` written by ``imgcls export``) are skipped.
Version rules live here too: a new export takes :func:`next_version`, an unversioned request
:func:`select_version`'s highest usable one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from imgcls.errors import BundleError, ModelNotFoundError
from imgcls.manifest import Manifest, load_manifest, verify_artifacts

__all__ = ["BundleRef", "ModelRepository", "load_bundle", "next_version", "select_version"]

T = TypeVar("T")


@dataclass
class BundleRef:
    """One version folder, with its manifest when it verified, or the reason it did not."""

    name: str
    version: int
    path: Path
    manifest: Manifest | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.manifest is not None and self.error is None


def load_bundle(path: Path, name: str, version: int) -> Manifest:
    """Validate the manifest, check it names this folder, and verify every artifact's checksum."""
    manifest = load_manifest(path)
    if (manifest.name, manifest.version) != (name, version):
        raise BundleError(
            f"{path}: the manifest says {manifest.name} v{manifest.version} but the folder is {name}/{version}; "
            "move the bundle or re-export it with --out models/<name>/<version>"
        )
    verify_artifacts(path, manifest)
    return manifest


class ModelRepository:
    """All bundles under ``root``; unversioned lookups get the highest version that verified."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bundles: dict[str, dict[int, BundleRef]] = {}

    def require_root(self) -> None:
        if not self.root.is_dir():
            raise BundleError(
                f"{self.root}: model repository not found; train and export a model first "
                "(make demo writes models/digits/1) or set --model-repo / IMGCLS_MODEL_REPO"
            )

    def find(self) -> list[BundleRef]:
        """Every bundle folder ``<name>/<version>/`` (version >= 1, hidden folders skipped), not yet verified:
        what :meth:`scan` verifies, and what ``imgcls serve`` checks for before it starts."""
        self.require_root()
        return [
            BundleRef(model_dir.name, int(version_dir.name), version_dir)
            for model_dir in sorted(
                p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            for version_dir in sorted(
                (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) >= 1),
                key=lambda p: int(p.name),
            )
        ]

    def scan(self) -> list[BundleRef]:
        found = self.find()
        for ref in found:
            try:
                ref.manifest = load_bundle(ref.path, ref.name, ref.version)
            except BundleError as exc:
                ref.error = str(exc)
            self.bundles.setdefault(ref.name, {})[ref.version] = ref
        return found

    @property
    def names(self) -> list[str]:
        return sorted(self.bundles)

    def get(self, name: str, version: int | None = None) -> BundleRef:
        """The bundle for ``name`` (and ``version``); raises :class:`ModelNotFoundError` naming what exists."""
        return select_version(self.bundles, name, version, usable=lambda ref: ref.ok)


def select_version(
    versions_by_name: Mapping[str, Mapping[int, T]],
    name: str,
    version: int | None,
    *,
    usable: Callable[[T], bool],
) -> T:
    """``version`` of ``name``, or without one the highest usable version (the highest of all if none
    is usable, so its state can be reported); :class:`ModelNotFoundError` names what exists."""
    versions = versions_by_name.get(name)
    if not versions:
        known = ", ".join(sorted(versions_by_name)) or "none"
        raise ModelNotFoundError(f"unknown model {name!r}; models served here: {known}")
    if version is None:
        candidates = [v for v, entry in versions.items() if usable(entry)]
        return versions[max(candidates) if candidates else max(versions)]
    if version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; versions: {', '.join(map(str, sorted(versions)))}"
        )
    return versions[version]


def next_version(model_dir: Path) -> int:
    """One above the highest numeric version folder of ``model_dir`` (1 for a new model)."""
    versions = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if model_dir.is_dir()
        else []
    )
    return max(versions, default=0) + 1

"""Every artifact of a bundle loaded as the service would serve it, for measurements that compare
them (``imgcls bench runtimes``, ``bench pipeline``, ``imgcls evaluate``).

Each is keyed by its label (:func:`imgcls.formats.artifact_label`: ``onnxruntime``, ``onnxruntime-int8``,
``tensorrt-fp16``), the name results and reports use.
"""

from __future__ import annotations

import warnings
from collections.abc import Container
from pathlib import Path

from imgcls.errors import describe_error
from imgcls.formats import artifact_label, runtime_of
from imgcls.manifest import Manifest
from service.errors import RuntimeUnavailableError
from service.runtimes import Runtime, build_runtime, candidates

__all__ = ["load_every_artifact", "served_label"]


def load_every_artifact(
    manifest: Manifest, bundle_dir: Path, *, device: str, intra_op_threads: int | None = None
) -> tuple[dict[str, Runtime], dict[str, str]]:
    """Each of the bundle's artifacts loaded as the service would serve it on ``device``, by label, and
    why each of the others did not load (a missing library, an engine built for another GPU)."""
    loaded: dict[str, Runtime] = {}
    failed: dict[str, str] = {}
    for artifact in manifest.artifacts:
        label = artifact_label(artifact)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                loaded[label] = build_runtime(
                    runtime_of(artifact), artifact, bundle_dir, device, intra_op_threads
                )
        except RuntimeUnavailableError as exc:
            failed[label] = str(exc)
        except Exception as exc:  # a provider that fails to create a session, a corrupt file
            failed[label] = describe_error(exc)
    return loaded, failed


def served_label(manifest: Manifest, device: str, loaded: Container[str]) -> str | None:
    """The label of what the service (automatic choice) would serve, given the labels of the artifacts
    that load here (:func:`load_every_artifact`); None if none would."""
    for _, artifact in candidates(manifest, device, "auto"):
        if artifact is not None and artifact_label(artifact) in loaded:
            return artifact_label(artifact)
    return None

"""Which runtime serves a bundle here: the automatic order, a pinned preference, and building it.

On the CPU, ONNX Runtime (the fastest there for these models), its INT8 model first when the bundle
has one that passed parity; on CUDA, Torch-TensorRT when an engine exists, was built for this GPU and
TensorRT, and ``torch_tensorrt`` imports, then TorchScript in FP16. A runtime that cannot run here
says why, and the next one is tried. Artifacts that failed parity (random-init speed bundles) are
used only when the runtime is pinned to their format.

A preference is ``auto`` or an export format's name (``imgcls.formats``); the service's old names
``onnxruntime`` and ``onnxruntime-int8`` still mean ``onnx`` and ``onnx-int8``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imgcls.formats import FormatName, RuntimeName, artifacts_of, canonical_name, format_named
from imgcls.manifest import Artifact, Manifest
from service.errors import RuntimeUnavailableError
from service.runtimes.base import Runtime
from service.runtimes.onnxruntime import OnnxRuntime
from service.runtimes.torchscript import TensorRTRuntime, TorchScriptRuntime

__all__ = ["build_runtime", "candidates", "choose_runtime", "resolve_device"]

log = logging.getLogger("imgcls.runtimes")

Candidate = tuple[RuntimeName, Artifact | None]  # artifact None: the bundle has none for the runtime


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_PRECISION_ORDER = ("int8", "fp8", "fp16", "bf16", "fp32")  # fastest first


def _ranked(artifacts: list[Artifact]) -> list[Artifact]:
    """Those that passed parity first, then the faster precision first."""
    return sorted(artifacts, key=lambda a: (not a.parity.passed, _PRECISION_ORDER.index(a.precision)))


def _tries(name: FormatName, artifacts: list[Artifact]) -> list[Candidate]:
    """``artifacts`` with the runtime that executes format ``name``; one artifact-less try if none."""
    runtime = format_named(name).runtime
    return [(runtime, a) for a in artifacts or [None]]


def candidates(manifest: Manifest, device: str, preference: str = "auto") -> list[Candidate]:
    """(runtime, artifact) pairs in the order to try.

    Automatic choice uses reduced-precision artifacts only where they passed parity; a pinned format
    falls back to one that failed (random-init speed bundles), after any that passed.
    """
    if preference != "auto":
        name = canonical_name(preference)
        return _tries(name, _ranked(artifacts_of(manifest, name)))

    def passed(name: FormatName) -> list[Artifact]:
        return [a for a in _ranked(artifacts_of(manifest, name)) if a.parity.passed]

    def first(name: FormatName) -> list[Artifact]:
        return artifacts_of(manifest, name)[:1]

    if device == "cuda":
        return [
            *_tries("tensorrt", passed("tensorrt")),
            *_tries("torchscript", first("torchscript")),
            *_tries("onnx", first("onnx")),
        ]
    int8 = passed("onnx-int8")  # optional on the CPU: no try, and no reason logged, without one
    return [
        *(_tries("onnx-int8", int8) if int8 else []),
        *_tries("onnx", first("onnx")),
        *_tries("torchscript", first("torchscript")),
    ]


def build_runtime(
    name: RuntimeName, artifact: Artifact, bundle_dir: Path, device: str, threads: int | None
) -> Runtime:
    """Load ``artifact`` with the runtime ``name``, configured as the service serves it."""
    path = Path(bundle_dir) / artifact.path
    if name == "onnxruntime":
        return OnnxRuntime(path, device=device, intra_op_threads=threads, precision=artifact.precision)
    if name == "torchscript":
        return TorchScriptRuntime(path, device=device, half=device == "cuda", intra_op_threads=threads)
    return TensorRTRuntime(path, precision=artifact.precision, engine=artifact.engine)


def choose_runtime(
    manifest: Manifest,
    bundle_dir: Path,
    *,
    preference: str = "auto",
    device: str = "auto",
    intra_op_threads: int | None = None,
) -> Runtime:
    """The runtime to serve this bundle with; raises :class:`RuntimeUnavailableError` listing why none fits.

    ``preference``: ``auto``, or the export format to serve (:data:`imgcls.formats.FORMAT_NAMES`)."""
    device = resolve_device(device)
    reasons: list[str] = []
    for name, artifact in candidates(manifest, device, preference):
        if artifact is None:
            usable = " that passed parity" if preference == "auto" else ""
            reasons.append(f"{name}: the bundle has no artifact for it{usable}")
            continue
        if not artifact.parity.passed:
            log.warning(
                "%s v%d: serving %s, which failed its parity check (pinned runtime %s)",
                manifest.name,
                manifest.version,
                artifact.path,
                name,
            )
        try:
            runtime = build_runtime(name, artifact, bundle_dir, device, intra_op_threads)
        except RuntimeUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            log.warning(
                "%s v%d: %s (%s) unavailable, trying the next runtime: %s",
                manifest.name,
                manifest.version,
                name,
                artifact.path,
                exc,
            )
            continue
        runtime.temperature = manifest.temperature or 1.0
        runtime.multilabel = manifest.task == "multilabel"
        return runtime
    raise RuntimeUnavailableError(
        f"no runtime can serve {manifest.name} v{manifest.version} on {device}: " + "; ".join(reasons)
    )

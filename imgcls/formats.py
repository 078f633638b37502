"""Export formats: one table, so each format has one name from the config to the bundle to the service.

Users name a format the same way everywhere: ``export.formats`` and ``imgcls export --formats`` write
it, ``--runtime`` / ``IMGCLS_RUNTIME`` pin the service to it. The bundle's manifest records it as an
artifact ``format`` and ``precision`` (a persisted schema, kept as it is so every bundle ever written
still loads), and a runtime engine executes it. :data:`EXPORT_FORMATS` says how for each.

``--runtime onnxruntime`` and ``onnxruntime-int8``, the service's names before there was one table,
still select ``onnx`` and ``onnx-int8`` (:data:`OLD_RUNTIME_NAMES`).

Labels (:func:`runtime_label`) name what serves, for measurements and metrics: the runtime engine,
with the precision where one engine serves several of a bundle's artifacts (``onnxruntime-int8``,
``tensorrt-fp16``). Published results and dashboards use them, so they stay in that form.

This module imports only the standard library and the manifest's types: the service uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from imgcls.manifest import Artifact, ArtifactFormat, Manifest, Precision

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_NAMES",
    "OLD_RUNTIME_NAMES",
    "Format",
    "FormatName",
    "RuntimeName",
    "artifact_label",
    "artifacts_of",
    "canonical_name",
    "format_named",
    "format_of",
    "runtime_label",
    "runtime_of",
]

FormatName = Literal["torchscript", "onnx", "onnx-int8", "tensorrt"]
RuntimeName = Literal["onnxruntime", "torchscript", "tensorrt"]  # the engine that executes an artifact


@dataclass(frozen=True)
class Format:
    """One export format: what users call it, how the manifest records it, what runs it."""

    name: FormatName
    artifact_format: ArtifactFormat  # the manifest's ``Artifact.format``
    precisions: tuple[Precision, ...]  # the manifest's ``Artifact.precision`` values it is written in
    runtime: RuntimeName
    file_name: str  # in the bundle; ``{precision}`` stands for the precision where there are several

    @property
    def reduced_precision(self) -> bool:
        """Checked against the eager model on top-1 agreement, not numerically (``trainer.parity``)."""
        return "fp32" not in self.precisions

    def file_for(self, precision: str | None = None) -> str:
        """The bundle file name of this format's artifact in ``precision``."""
        if "{precision}" not in self.file_name:
            return self.file_name
        if precision not in self.precisions:
            raise ValueError(
                f"a {self.name} artifact's file name needs one of its precisions "
                f"({', '.join(self.precisions)}), got {precision!r}"
            )
        return self.file_name.format(precision=precision)

    def holds(self, artifact: Artifact) -> bool:
        """Whether ``artifact`` (a manifest entry) is one of this format's."""
        return artifact.format == self.artifact_format and artifact.precision in self.precisions


EXPORT_FORMATS: tuple[Format, ...] = (
    Format("torchscript", "torchscript", ("fp32",), "torchscript", "model.torchscript.pt"),
    Format("onnx", "onnx", ("fp32",), "onnxruntime", "model.onnx"),
    Format("onnx-int8", "onnx", ("int8",), "onnxruntime", "model.int8.onnx"),
    Format(
        "tensorrt",
        "torchscript_tensorrt",
        ("fp16", "int8", "fp8"),
        "tensorrt",
        "model.tensorrt-{precision}.ts",
    ),
)
FORMAT_NAMES: tuple[FormatName, ...] = get_args(FormatName)  # in the table's order (a unit test checks)

# The service's --runtime values that named an ONNX format by its engine, before this table.
OLD_RUNTIME_NAMES: dict[str, FormatName] = {"onnxruntime": "onnx", "onnxruntime-int8": "onnx-int8"}

_BY_NAME = {f.name: f for f in EXPORT_FORMATS}
# Each manifest format is executed by one engine, whatever its precision.
_RUNTIME_OF_ARTIFACT_FORMAT: dict[str, RuntimeName] = {f.artifact_format: f.runtime for f in EXPORT_FORMATS}


def format_named(name: str) -> Format:
    """The format users call ``name``; ValueError naming the valid ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown export format {name!r}; valid: {', '.join(FORMAT_NAMES)}") from None


def canonical_name(name: str) -> FormatName:
    """``name``, or the format an old runtime name (``onnxruntime``, ``onnxruntime-int8``) meant."""
    return format_named(OLD_RUNTIME_NAMES.get(name, name)).name


def format_of(artifact: Artifact) -> Format:
    """The format a manifest entry is one of; ValueError for a format and precision no export writes."""
    for fmt in EXPORT_FORMATS:
        if fmt.holds(artifact):
            return fmt
    written = ", ".join(f"{f.artifact_format} in {'/'.join(f.precisions)}" for f in EXPORT_FORMATS)
    raise ValueError(
        f"{artifact.path}: no export format writes {artifact.format} in {artifact.precision}; they write {written}"
    )


def artifacts_of(manifest: Manifest, name: str) -> list[Artifact]:
    """The bundle's artifacts of the format ``name``, in manifest order."""
    fmt = format_named(name)
    return [a for a in manifest.artifacts if fmt.holds(a)]


def runtime_of(artifact: Artifact) -> RuntimeName:
    """The engine that executes ``artifact``."""
    return _RUNTIME_OF_ARTIFACT_FORMAT[artifact.format]


def runtime_label(runtime: str, precision: str) -> str:
    """What serves, in one word: the engine where it serves one of a bundle's artifacts (``onnxruntime``,
    ``torchscript``, which serves FP16 on CUDA from the FP32 artifact), the engine and precision where it
    serves several (``onnxruntime-int8``, every ``tensorrt-<precision>`` engine)."""
    return runtime if runtime != "tensorrt" and precision in ("fp32", "fp16") else f"{runtime}-{precision}"


def artifact_label(artifact: Artifact) -> str:
    """The :func:`runtime_label` of ``artifact`` served by its own engine."""
    return runtime_label(runtime_of(artifact), artifact.precision)

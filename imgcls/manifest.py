"""The model bundle manifest: the one contract between the trainer and the service.

A bundle is a directory ``models/<name>/<version>/`` holding ``manifest.json`` and the model
files it lists. The trainer writes it (``trainer.export``); the service reads it with
:func:`load_manifest` and :func:`verify_artifacts`, and builds its preprocessing from
``manifest.preprocess`` (``imgcls.preprocess``) rather than from copied constants.

This module imports only pydantic and the standard library, so the service can use it
without pulling in the trainer's dependencies.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgcls.errors import BundleError, describe_validation_errors

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MANIFEST_FILENAME",
    "MODEL_NAME_PATTERN",
    "SCHEMA_VERSION",
    "Artifact",
    "BaselineCheck",
    "Calibration",
    "EngineInfo",
    "ExplainSpec",
    "InputSpec",
    "Manifest",
    "ParityResult",
    "Precision",
    "PreprocessSpec",
    "SourceInfo",
    "load_manifest",
    "sha256_file",
    "verify_artifacts",
]

SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"

Interpolation = Literal["nearest", "bilinear", "bicubic"]
ColorMode = Literal["RGB", "L"]
ArtifactFormat = Literal["torchscript", "onnx", "torchscript_tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]

MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Strict):
    """The evaluation transform, applied in this order to a decoded image.

    1. convert to ``color_mode`` (``RGB`` or ``L``);
    2. resize so the shorter side is ``resize`` pixels (aspect ratio kept), with
       ``interpolation`` and antialiasing, on the uint8 image;
    3. center-crop to ``crop_height`` × ``crop_width``;
    4. scale to [0, 1] and normalise per channel with ``mean`` and ``std``.
    """

    resize: Annotated[int, Field(ge=1, le=4096)]
    crop_height: Annotated[int, Field(ge=1, le=4096)]
    crop_width: Annotated[int, Field(ge=1, le=4096)]
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_mode: ColorMode = "RGB"

    @classmethod
    def resolve(
        cls,
        image_size: int,
        *,
        resize: int | None = None,
        interpolation: Interpolation = "bilinear",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        color_mode: ColorMode = "RGB",
    ) -> PreprocessSpec:
        """The spec for a square ``image_size`` input, defaults filled in: ImageNet's mean and std for RGB
        (0.5 for grayscale), and the timm/torchvision resize of the shorter side to ``image_size / 0.875``
        (224 -> 256) before the center crop. The one place those defaults live."""
        rgb = color_mode == "RGB"
        return cls(
            resize=resize if resize is not None else round(image_size / 0.875),
            crop_height=image_size,
            crop_width=image_size,
            interpolation=interpolation,
            mean=tuple(float(m) for m in (mean if mean is not None else IMAGENET_MEAN if rgb else (0.5,))),
            std=tuple(float(s) for s in (std if std is not None else IMAGENET_STD if rgb else (0.5,))),
            color_mode=color_mode,
        )

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "RGB" else 1

    @model_validator(mode="after")
    def _check_consistent(self) -> PreprocessSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} value(s) for color_mode {self.color_mode!r}, "
                f"got mean={list(self.mean)} std={list(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {list(self.std)}")
        if self.resize < min(self.crop_height, self.crop_width):
            raise ValueError(
                f"resize ({self.resize}) is smaller than the crop "
                f"({self.crop_height}x{self.crop_width}); the crop would pad the image"
            )
        return self


class InputSpec(_Strict):
    """The tensor the model takes: ``[batch, channels, height, width]`` float32, batch dynamic."""

    channels: Literal[1, 3]
    height: Annotated[int, Field(ge=1)]
    width: Annotated[int, Field(ge=1)]
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW"] = "NCHW"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``: one image, without the batch axis."""
        return self.channels, self.height, self.width


def _plain_file_name(value: str) -> str:
    if not value or "/" in value or "\\" in value or value in {".", ".."} or value.startswith("."):
        raise ValueError(f"a bundle file must be a plain file name inside the bundle, got {value!r}")
    return value


class ParityResult(_Strict):
    """How an exported artifact compares with the eager model on validation images.

    FP32 artifacts must match numerically (``max_abs_diff <= tolerance``). Reduced-precision ones
    (FP16, INT8) cannot, so they pass on ``top1_agreement >= min_top1_agreement`` instead, and the
    accuracy of both models on the same labelled images is recorded beside it.
    """

    samples: Annotated[int, Field(ge=1)]
    top1_agreement: Annotated[float, Field(ge=0.0, le=1.0)]
    max_abs_diff: Annotated[float, Field(ge=0.0)]  # largest |softmax(eager) - softmax(artifact)|
    tolerance: Annotated[float, Field(gt=0.0)]
    # Set for reduced precision: the top-1 agreement needed to pass.
    min_top1_agreement: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # "label_set" for multilabel bundles: top1_agreement is then the share of images whose thresholded
    # label set is the same, max_abs_diff is over sigmoid scores, and accuracy is subset accuracy
    agreement_on: Literal["label_set"] | None = None
    reference_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # eager model, same images
    accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # None: the images had no labels
    passed: bool

    @property
    def accuracy_change(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.accuracy - self.reference_accuracy


class Calibration(_Strict):
    """The data a quantised artifact's ranges were calibrated on."""

    images: Annotated[int, Field(ge=1)]
    source: Literal["train", "random"]  # the training split through the eval transform, or seeded noise
    method: str  # e.g. "onnxruntime minmax", "modelopt int8_default"


class EngineInfo(_Strict):
    """What a TensorRT engine was built for; a service elsewhere refuses it rather than crash."""

    gpu_name: str
    compute_capability: Annotated[str, Field(pattern=r"^\d+\.\d+$")]  # e.g. "9.0"
    cuda_version: str
    tensorrt_version: str
    torch_tensorrt_version: str
    abi_version: str  # the Torch-TensorRT runtime ABI the serialized engine needs
    hardware_compatible: bool = False  # built to run on any Ampere-or-newer GPU
    version_compatible: bool = False  # built to run on later TensorRT versions
    min_batch_size: Annotated[int, Field(ge=1)]
    opt_batch_size: Annotated[int, Field(ge=1)]
    max_batch_size: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered_batch_sizes(self) -> EngineInfo:
        if not self.min_batch_size <= self.opt_batch_size <= self.max_batch_size:
            raise ValueError(
                f"engine batch sizes must satisfy min <= opt <= max, got "
                f"{self.min_batch_size}/{self.opt_batch_size}/{self.max_batch_size}"
            )
        return self


class Artifact(_Strict):
    """One model file in the bundle."""

    format: ArtifactFormat
    path: str  # relative to the bundle directory, a plain file name
    precision: Precision = "fp32"
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: Annotated[int, Field(ge=1)]
    device: Literal["cpu", "cuda"] = "cpu"  # where the parity check ran (TensorRT engines are GPU-bound)
    opset: int | None = None  # ONNX only
    parity: ParityResult
    calibration: Calibration | None = None  # INT8 artifacts
    engine: EngineInfo | None = None  # TensorRT artifacts

    @field_validator("path")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        return _plain_file_name(value)

    @model_validator(mode="after")
    def _check_kind(self) -> Artifact:
        if self.precision == "int8" and self.calibration is None:
            raise ValueError(f"{self.path}: an int8 artifact must record its calibration")
        # A TensorRT artifact without it still loads (the service refuses that engine and falls back).
        if self.engine is not None and self.format != "torchscript_tensorrt":
            raise ValueError(f"{self.path}: engine build info belongs to TensorRT artifacts only")
        return self


class BaselineCheck(_Strict):
    """The test accuracy against what a model that learned nothing scores (``trainer.baselines``).

    ``passed`` is False when the model is not clearly better than the better of two baselines:
    always answering the training split's most frequent class, and guessing uniformly.
    """

    accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    samples: Annotated[int, Field(ge=0)]
    majority_class: str
    majority_accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    uniform_accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    skill: float  # (accuracy - best baseline) / (1 - best baseline): 0 at the baseline, 1 perfect
    p_value: Annotated[float, Field(ge=0.0, le=1.0)]  # one-sided binomial test against the best baseline
    passed: bool
    warning: str | None = None


class ExplainSpec(_Strict):
    """What explanations need (``imgcls.explain``): the eager model's weights, which the frozen artifacts
    no longer expose to hooks, and the layer Grad-CAM reads. A bundle without it is not explainable.

    The eager model is ``Manifest.architecture`` with ``len(labels)`` classes and ``input.channels``
    input channels at ``input.height`` px, its weights loaded from ``weights``.
    """

    weights: str  # plain file name: the state dict, saved with torch.save and read with weights_only
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: Annotated[int, Field(ge=1)]
    target_layer: Annotated[str, Field(min_length=1)]  # dotted module path in the eager model
    layout: Literal["NCHW", "tokens"] = "NCHW"  # tokens: a ViT's [N, prefix + h*w, C] sequence
    token_grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    prefix_tokens: Annotated[int, Field(ge=0)] = 0  # class and register tokens before the patch tokens
    methods: tuple[Literal["gradcam", "rollout"], ...] = ("gradcam",)

    @field_validator("weights")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        return _plain_file_name(value)

    @model_validator(mode="after")
    def _grid_for_tokens(self) -> ExplainSpec:
        if self.layout == "tokens" and self.token_grid is None:
            raise ValueError("a tokens layout needs token_grid (the patch grid's height and width)")
        return self


class SourceInfo(_Strict):
    """Where the bundle came from, for audit."""

    run_dir: str
    git_sha: str | None = None
    imgcls_version: str
    torch_version: str


class Manifest(_Strict):
    """``manifest.json``: everything needed to load, preprocess for, and trust a model."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    version: Annotated[int, Field(ge=1)]
    # multiclass: one label per image, softmax over the logits. multilabel: any number of labels per
    # image, a sigmoid per logit; a label is predicted when its score reaches its threshold.
    task: Literal["multiclass", "multilabel"] = "multiclass"
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    input: InputSpec
    # artifacts return raw logits; softmax (multiclass) or sigmoid (multilabel) gives the scores
    output: Literal["logits"] = "logits"
    artifacts: tuple[Artifact, ...]
    metrics: dict[str, float]
    baseline_check: BaselineCheck | None = None  # None: random-init bundles, and runs before the check
    # "random_init": a speed bundle from `imgcls export --random-init`; its predictions mean nothing.
    weights: Literal["trained", "random_init"] = "trained"
    # Temperature scaling fitted on the validation split (Guo et al. 2017): served probabilities are
    # softmax(logits / temperature). None: softmax(logits), as bundles written before it.
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    # multilabel only: each label's threshold on its sigmoid score, in the order of ``labels``, tuned on
    # the validation split to maximise that label's F1
    thresholds: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] | None = None
    explain: ExplainSpec | None = None  # None: the bundle cannot be explained (re-export it)
    created_at: datetime
    architecture: str
    config_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # sha256 of the resolved training config
    source: SourceInfo

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not MODEL_NAME_PATTERN.match(value):
            raise ValueError(
                f"model name {value!r} must be 1-64 characters of lowercase letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:  # at least 2 for multiclass: checked with the task below
            raise ValueError("a classifier needs labels, got none")
        if len(set(value)) != len(value):
            raise ValueError("labels must be unique")
        return value

    @model_validator(mode="after")
    def _check_consistent(self) -> Manifest:
        if self.weights == "trained" and "accuracy" not in self.metrics:
            raise ValueError("metrics must include 'accuracy' (the test-split accuracy) for trained weights")
        if not self.artifacts:
            raise ValueError("a bundle needs at least one artifact")
        if self.task == "multilabel":
            if self.thresholds is None or len(self.thresholds) != len(self.labels):
                raise ValueError(
                    f"a multilabel bundle needs one threshold per label ({len(self.labels)}), got "
                    f"{None if self.thresholds is None else len(self.thresholds)}"
                )
            if self.temperature is not None:
                raise ValueError(
                    "temperature scaling is for multiclass bundles; multilabel ones use thresholds"
                )
        elif self.thresholds is not None:
            raise ValueError(
                "thresholds are for task: multilabel; a multiclass bundle predicts the top score"
            )
        elif len(self.labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {list(self.labels)}")
        paths = [a.path for a in self.artifacts] + ([self.explain.weights] if self.explain else [])
        if len(set(paths)) != len(paths):
            raise ValueError(f"artifact paths must be unique, got {paths}")
        spec = self.preprocess
        if (self.input.channels, self.input.height, self.input.width) != (
            spec.channels,
            spec.crop_height,
            spec.crop_width,
        ):
            raise ValueError(
                f"input {self.input.channels}x{self.input.height}x{self.input.width} does not match the "
                f"preprocess output {spec.channels}x{spec.crop_height}x{spec.crop_width}"
            )
        return self

    @property
    def quality_warning(self) -> str | None:
        """Why this model's predictions should not be trusted, or None: random weights, or a test
        accuracy not clearly better than the baselines."""
        if self.weights == "random_init":
            return "random weights (imgcls export --random-init): for speed tests only, its predictions mean nothing"
        if self.baseline_check is not None and not self.baseline_check.passed:
            return self.baseline_check.warning
        return None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def artifact(self, fmt: ArtifactFormat, precision: Precision | None = None) -> Artifact | None:
        """The first artifact of this format (and precision, when given), or None."""
        for artifact in self.artifacts:
            if artifact.format == fmt and (precision is None or artifact.precision == precision):
                return artifact
        return None

    def to_json(self) -> str:
        # Unset optional fields are left out, so an FP32 bundle reads in services that predate them.
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``; raise :class:`BundleError` naming the problem."""
    path = Path(bundle_dir) / MANIFEST_FILENAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{path}: no manifest; is {bundle_dir} a bundle written by 'imgcls export'?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc}); re-export the bundle") from None
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BundleError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this imgcls reads {SCHEMA_VERSION}); upgrade imgcls or re-export the bundle"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = describe_validation_errors(exc.errors(), with_input=False)
        raise BundleError(f"{path}: invalid manifest: {problems}") from None


def verify_artifacts(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every listed artifact exists with its recorded size and sha256."""
    for artifact in manifest.artifacts:
        path = Path(bundle_dir) / artifact.path
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing; re-export the bundle")
        size = path.stat().st_size
        if size != artifact.size_bytes:
            raise BundleError(
                f"{path}: size {size} bytes, manifest says {artifact.size_bytes}; the file was changed or "
                "truncated, re-export the bundle"
            )
        actual = sha256_file(path)
        if actual != artifact.sha256:
            raise BundleError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {artifact.sha256[:12]}…; "
                "the file was changed after export, re-export the bundle"
            )

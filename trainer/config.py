"""The training configuration: one pydantic model, loaded from YAML, overridden from the CLI.

Precedence: the defaults here < the YAML file < ``--set section.field=value`` overrides.
The resolved config is written into every run directory (``config.yaml``) and its digest
into every bundle manifest, so a model can always be traced back to how it was trained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgcls.errors import ConfigError, describe_validation_errors
from imgcls.formats import FormatName

__all__ = [
    "RESUMABLE_FIELDS",
    "AugmentConfig",
    "DataConfig",
    "EvalTransformConfig",
    "ExportConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "check_resume_overrides",
    "config_digest",
    "load_config",
]

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
ExportFormat = FormatName  # the names in imgcls.formats' table
TensorRTPrecision = Literal["fp16", "int8", "fp8"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: Path = Path("data/digits")  # an ImageFolder directory, or a CSV file with columns path,label
    format: Literal["auto", "imagefolder", "csv"] = (
        "auto"  # auto: a .csv file is CSV, a directory ImageFolder
    )
    val_fraction: Fraction = 0.1  # used when the data has no val/ folder
    test_fraction: Fraction = 0.2  # used when the data has no test/ folder
    split_seed: int | None = None  # None: use train.seed
    split_file: Path | None = None  # reuse another run's split.csv instead of splitting (exact reproduction)
    # CSV only: the column naming each image's group (camera, patient, session). No group spans two
    # splits; classes stay stratified as far as the groups allow.
    group_column: str | None = None
    group_share_warning: float = Field(
        default=0.25, gt=0.0, le=1.0
    )  # warn when one group holds more of a split
    strict: bool = False  # stop before training when any image is unreadable, instead of skipping it
    num_workers: int = Field(default=0, ge=0)  # DataLoader worker processes; 0 loads in the main process
    # keep decoded images in memory so epochs skip decoding; auto: when they fit in 1 GiB
    cache_images: Literal["auto", "on", "off"] = "auto"

    @field_validator("group_column")
    @classmethod
    def _group_column_is_its_own(cls, value: str | None) -> str | None:
        if value is not None and value.strip() in ("", "path", "label"):
            raise ValueError(f"group_column must name a CSV column other than path and label, got {value!r}")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves under 10% "
                "for training; lower them"
            )
        return self


class EvalTransformConfig(_Section):
    """The evaluation transform; written into the bundle as ``manifest.preprocess``."""

    image_size: int = Field(default=224, ge=8, le=4096)  # crop size (square)
    resize: int | None = Field(
        default=None, ge=8, le=4096
    )  # shorter side before the crop; None: image_size/0.875
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    color_mode: Literal["RGB", "L"] = "RGB"
    mean: tuple[float, ...] | None = None  # None: ImageNet mean (RGB) or 0.5 (L)
    std: tuple[float, ...] | None = None  # None: ImageNet std (RGB) or 0.5 (L)

    @model_validator(mode="after")
    def _consistent(self) -> EvalTransformConfig:
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(
                f"resize ({self.resize}) must be at least image_size ({self.image_size}); set both"
            )
        channels = 3 if self.color_mode == "RGB" else 1
        for field_name in ("mean", "std"):
            values = getattr(self, field_name)
            if values is not None and len(values) != channels:
                raise ValueError(
                    f"{field_name} needs {channels} value(s) for color_mode {self.color_mode}, got {list(values)}"
                )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {list(self.std)}")
        return self


class AugmentConfig(_Section):
    preset: Literal["none", "light", "standard", "strong"] = "standard"
    hflip: bool = True  # off for data where mirroring changes the class (digits, text)
    mixup_alpha: float = Field(default=0.0, ge=0.0)  # 0 disables MixUp
    cutmix_alpha: float = Field(default=0.0, ge=0.0)  # 0 disables CutMix
    random_erasing: float | None = Field(default=None, ge=0.0, le=1.0)  # None: the preset's choice


class ModelConfig(_Section):
    name: str = "simple_cnn"  # see `imgcls models`; any timm model as timm:<name>
    pretrained: bool = False  # load pretrained weights from `weights` or the local torch/timm cache
    weights: Path | None = None  # a local checkpoint file (state dict); implies pretrained
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    freeze_backbone_epochs: int = Field(default=0, ge=0)  # train only the new head for this many epochs
    # backbone lr = lr * this when fine-tuning (pretrained weights or a freeze phase); 1.0 from scratch
    backbone_lr_scale: float = Field(default=0.1, gt=0.0, le=1.0)


class OptimConfig(_Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)  # peak learning rate, reached after warm-up
    weight_decay: float = Field(default=0.05, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # SGD only
    nesterov: bool = True  # SGD only
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1.0, ge=0.0)  # linear warm-up from warmup_start_factor * lr
    warmup_start_factor: float = Field(default=0.1, gt=0.0, le=1.0)
    min_lr_factor: float = Field(default=0.01, ge=0.0, le=1.0)  # cosine floor, as a fraction of lr
    step_epochs: int = Field(default=10, ge=1)  # step: multiply lr by step_gamma every step_epochs
    step_gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Imbalanced classes (trainer/losses.py, docs/training.md): the loss, and per-class weights from
    # the training split's counts (inverse frequency, or Cui et al.'s effective number of samples)
    # cross_entropy and focal (softmax) for one class per image; bce, asymmetric and focal (sigmoid, per
    # label) for task: multilabel, whose default is bce
    loss: Literal["cross_entropy", "focal", "bce", "asymmetric"] = "cross_entropy"
    focal_gamma: float = Field(default=2.0, ge=0.0)  # focal only; 0 is cross-entropy
    # asymmetric (Ridnik et al., 2021): easy negatives down-weighted by p ** gamma_neg after shifting
    # their probability down by asymmetric_clip; positives by (1 - p) ** gamma_pos
    asymmetric_gamma_neg: float = Field(default=4.0, ge=0.0)
    asymmetric_gamma_pos: float = Field(default=0.0, ge=0.0)
    asymmetric_clip: float = Field(default=0.05, ge=0.0, lt=1.0)
    class_weights: Literal["none", "inverse_frequency", "effective_number"] = "none"
    effective_number_beta: float = Field(default=0.999, gt=0.0, lt=1.0)
    grad_clip_norm: float | None = Field(default=None, gt=0.0)  # None: no clipping


class TrainConfig(_Section):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # CUDA only; auto: bf16 where supported
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)  # e.g. 0.999; validate and export the EMA
    # class_balanced: draw training images with probability 1/(their class's count), with replacement
    sampler: Literal["shuffle", "class_balanced"] = "shuffle"
    # on the validation split; balanced_accuracy (mean per-class recall) or f1_macro for imbalanced classes
    # multilabel: map (mean average precision over labels, the default there); accuracy is then the
    # share of images whose whole label set is right at threshold 0.5
    early_stopping_metric: Literal["accuracy", "loss", "f1_macro", "balanced_accuracy", "map"] = "accuracy"
    early_stopping_patience: int | None = Field(default=None, ge=1)  # None: train all epochs
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0)
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower on CUDA
    threads: int | None = Field(default=None, ge=1)  # torch intra-op threads on CPU; None: torch's default
    # Several forward passes per optimizer step: batch_size stays the images per step, each pass takes
    # batch_size / (processes x grad_accumulation_steps). For a global batch that does not fit in memory.
    grad_accumulation_steps: int = Field(default=1, ge=1)
    # With several processes on CUDA: batch norm statistics over the global batch, not each process's share
    sync_batchnorm: bool = False


class DistributedRecord(_Section):
    """How the run was run: written into its config.yaml by the run, replaced (never read) when
    a run starts or resumes. ``train.batch_size`` is the global batch whatever the processes."""

    world_size: int = Field(default=1, ge=1)  # training processes (torchrun's WORLD_SIZE)
    backend: str | None = None  # gloo (CPU) or nccl (CUDA); None for one process
    micro_batch_size: int = Field(ge=1)  # images per process per forward pass
    global_batch_size: int = Field(ge=1)  # images per optimizer step, all processes and accumulation steps


class ExportConfig(_Section):
    enabled: bool = True  # export a bundle at the end of `imgcls train`
    name: str | None = None  # None: the data folder's name
    version: int | None = Field(default=None, ge=1)  # None: one above the highest existing version
    out_dir: Path = Path("models")  # the model repository: bundles go to out_dir/name/version
    # onnx-int8: ONNX Runtime static INT8 for CPUs; tensorrt: a Torch-TensorRT engine (CUDA + TensorRT)
    formats: tuple[ExportFormat, ...] = ("torchscript", "onnx")
    # Refuse to export (exit 2) a run whose test accuracy is below this, or that is not clearly better
    # than always answering the most frequent class; None: export anyway, with a warning. 0 refuses
    # only runs no better than the baselines.
    min_test_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    parity_samples: int = Field(default=64, ge=1)  # validation images compared eager vs exported (fp32)
    parity_tolerance: float = Field(default=1e-4, gt=0.0)  # max |softmax difference| allowed (fp32)
    # FP16 and INT8 artifacts pass on top-1 agreement, so they are checked on more validation images
    reduced_precision_parity_samples: int = Field(default=512, ge=1)
    onnx_opset: int = Field(default=18, ge=17)
    calibration_images: int = Field(default=256, ge=1)  # INT8: training images the ranges come from
    onnx_int8_calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    # per-channel weight scales: usually more accurate, but some models (MobileNetV3) lose accuracy
    onnx_int8_per_channel: bool = True
    # One engine per precision, all in the same bundle; the service prefers INT8, FP8, then FP16.
    # "fp16,int8" or a list; fp8 needs compute capability 8.9+ (Ada, Hopper).
    tensorrt_precisions: Annotated[tuple[TensorRTPrecision, ...], Field(min_length=1)] = ("fp16",)
    # The engine's batch range: min 1, tuned for opt, allocated for max. Keep max equal to the
    # service's max_batch_size (it caps batches at the engine's max either way).
    tensorrt_max_batch_size: int = Field(default=32, ge=2, le=4096)
    tensorrt_opt_batch_size: int | None = Field(default=None, ge=2)  # None: half of max (at least 2)
    tensorrt_hardware_compatible: bool = False  # True: one engine for every Ampere-or-newer GPU (slower)
    # Carry the eager weights (weights.pt) so the bundle can be explained (imgcls explain, the report,
    # the service's explanations); false saves the space of a second copy of the weights.
    explainable: bool = True

    @model_validator(mode="before")
    @classmethod
    def _renamed_tensorrt_precision(cls, data: Any) -> Any:
        # Runs trained before one bundle could hold several engines wrote `tensorrt_precision`.
        if isinstance(data, dict) and "tensorrt_precision" in data:
            data = dict(data)
            old = data.pop("tensorrt_precision")
            if "tensorrt_precisions" in data:
                raise ValueError("give tensorrt_precisions only (tensorrt_precision is its old name)")
            data["tensorrt_precisions"] = old
        return data

    @field_validator("tensorrt_precisions", mode="before")
    @classmethod
    def _comma_separated_precisions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            value = tuple(dict.fromkeys(value))  # "fp16,fp16" builds one engine
        return value

    @model_validator(mode="after")
    def _opt_within_max(self) -> ExportConfig:
        if (
            self.tensorrt_opt_batch_size is not None
            and self.tensorrt_opt_batch_size > self.tensorrt_max_batch_size
        ):
            raise ValueError(
                f"tensorrt_opt_batch_size ({self.tensorrt_opt_batch_size}) must not exceed "
                f"tensorrt_max_batch_size ({self.tensorrt_max_batch_size})"
            )
        return self

    @property
    def tensorrt_batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) over the batch axis; opt >= 2 avoids a torch.export specialisation bug."""
        maximum = self.tensorrt_max_batch_size
        return 1, self.tensorrt_opt_batch_size or max(2, maximum // 2), maximum


class RunConfig(_Section):
    """The whole training config (``configs/*.yaml``)."""

    run_name: str | None = None  # None: <config name>-<timestamp>
    runs_dir: Path = Path("runs")
    # multiclass: one class per image (softmax). multilabel: any number of labels per image (sigmoid per
    # label, thresholds tuned on validation); the data's label cells hold ;-separated labels.
    task: Literal["multiclass", "multilabel"] = "multiclass"
    data: DataConfig = DataConfig()
    preprocess: EvalTransformConfig = EvalTransformConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    distributed: DistributedRecord | None = None  # written by the run (see DistributedRecord)

    @model_validator(mode="after")
    def _fits_the_task(self) -> RunConfig:
        optim, train = self.optim, self.train
        if self.task == "multiclass":
            if optim.loss in ("bce", "asymmetric"):
                raise ValueError(
                    f"optim.loss={optim.loss} scores each label on its own, for task: multilabel; with one class "
                    "per image use cross_entropy or focal"
                )
            if train.early_stopping_metric == "map":
                raise ValueError(
                    "train.early_stopping_metric=map is for task: multilabel; use f1_macro or accuracy"
                )
            return self
        # multilabel: the task's own defaults where the config says nothing
        if "loss" not in optim.model_fields_set:
            optim.loss = "bce"
        if "early_stopping_metric" not in train.model_fields_set:
            train.early_stopping_metric = "map"
        refused = {
            "optim.loss=cross_entropy": optim.loss == "cross_entropy",
            "optim.class_weights=effective_number": optim.class_weights == "effective_number",
            "train.sampler=class_balanced": train.sampler == "class_balanced",
            "augment.mixup_alpha": self.augment.mixup_alpha > 0,
            "augment.cutmix_alpha": self.augment.cutmix_alpha > 0,
        }
        named = [name for name, wrong in refused.items() if wrong]
        if named:
            raise ValueError(
                f"task: multilabel does not support {', '.join(named)}. Use optim.loss bce, asymmetric or focal; "
                "optim.class_weights=inverse_frequency weighs each label's positives by its negatives/positives; "
                "MixUp/CutMix and the class-balanced sampler are single-label only"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides; values are parsed as YAML (``1e-3``, ``[a, b]``, ``null``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.field=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _format_validation_error(exc: ValidationError, source: str) -> str:
    return f"{source}: invalid config: {describe_validation_errors(exc.errors())}"


def load_config(
    path: Path | None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> RunConfig:
    """Build the run config: defaults < YAML file < ``overrides`` (``key=value``, YAML-typed) < ``values``.

    ``values`` maps dotted keys to values taken as they are (the CLI's named options: a run name
    like ``2024-01-01`` stays a string).
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; see configs/ for examples") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read YAML: {exc}".splitlines()[0]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (data:, model:, ...), got {type(loaded).__name__}"
            )
        tree = loaded
    if overrides:
        tree = apply_overrides(tree, overrides)
        source += " + overrides"
    for key, value in (values or {}).items():
        _set_dotted(tree, key, str(value) if isinstance(value, Path) else value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


# What may change when a run is resumed: how long and where it runs, not what it trains.
RESUMABLE_FIELDS = (
    "train.epochs",
    "train.early_stopping_patience",
    "train.early_stopping_min_delta",
    "train.device",
    "train.threads",
    "train.grad_accumulation_steps",
    "data.num_workers",
    "export.",
)


def check_resume_overrides(keys: list[str]) -> None:
    refused = [
        k for k in keys if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUMABLE_FIELDS)
    ]
    if refused:
        raise ConfigError(
            f"cannot change {', '.join(refused)} when resuming: the checkpoint was trained with the run's own "
            f"config.yaml. Resumable fields: {', '.join(RESUMABLE_FIELDS)}; start a new run to change the rest"
        )


def config_digest(config: RunConfig) -> str:
    """sha256 of the training recipe's canonical JSON: not where the run is written, nor how it is
    exported (export options are not part of what was trained)."""
    payload = config.model_dump(mode="json", exclude={"run_name", "runs_dir", "export", "distributed"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

"""``imgcls export``: a run's best checkpoint -> a verified model bundle.

Formats: ``torchscript`` and ``onnx`` (FP32), ``onnx-int8`` (ONNX Runtime static INT8 for CPUs,
calibrated on training images) and ``tensorrt`` (a Torch-TensorRT engine in FP16, INT8 or FP8;
``trainer.tensorrt``). Each artifact is written, loaded back from disk with nothing but its own
runtime, and compared with the eager model on validation images: FP32 artifacts numerically,
reduced-precision ones on top-1 agreement (``trainer.parity``). The comparison is recorded in the
manifest and a failure stops the export. The bundle is assembled in a hidden staging folder and
renamed into place, so a service never sees a half-written bundle.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

import imgcls
from imgcls.errors import ConfigError, ExportError, QualityGateError, describe_validation_errors
from imgcls.formats import format_named
from imgcls.manifest import (
    MANIFEST_FILENAME,
    MODEL_NAME_PATTERN,
    Artifact,
    BaselineCheck,
    InputSpec,
    Manifest,
    ParityResult,
    PreprocessSpec,
    SourceInfo,
    sha256_file,
)
from imgcls.preprocess import eval_transform, load_image
from imgcls.repository import next_version
from trainer.artifacts import (
    ARTIFACT_FILES,
    FORMATS,
    REDUCED_PRECISION_FORMATS,
    ExportImages,
    artifact_file,
    artifact_plan,
    build_artifact,
    in_chunks,
    needs_calibration,
)
from trainer.config import ExportConfig, RunConfig, config_digest, load_config
from trainer.data import label_matrix
from trainer.explain_weights import write_explain_weights
from trainer.models import create_model
from trainer.parity import compare
from trainer.rundir import RunDir, git_sha
from trainer.transforms import preprocess_spec

__all__ = [
    "ARTIFACT_FILES",
    "ExportResult",
    "export_bundle",
    "export_random_init",
    "load_eager_model",
]

log = logging.getLogger("imgcls.export")


@dataclass
class ExportResult:
    bundle_dir: Path
    manifest: Manifest


def default_bundle_name(config: RunConfig) -> str:
    raw = config.export.name or Path(config.data.path).stem or "model"
    name = re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-._") or "model"
    return name[:64]


def load_eager_model(run: RunDir, config: RunConfig, labels: list[str]) -> nn.Module:
    """The run's best weights in the eager model, on CPU, in eval mode."""
    spec = preprocess_spec(config.preprocess)
    built = create_model(
        config.model.name,
        len(labels),
        in_chans=spec.channels,
        image_size=spec.crop_height,
        drop_rate=config.model.drop_rate,
    )
    if not run.best_checkpoint.is_file():
        raise ExportError(f"{run.best_checkpoint}: no best checkpoint; did the run finish an epoch?")
    state = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    built.model.load_state_dict(state["model"])
    return built.model.eval()


def _parity_count(config: RunConfig, formats: tuple[str, ...]) -> int:
    export_cfg = config.export
    reduced = any(f in REDUCED_PRECISION_FORMATS for f in formats)
    return max(export_cfg.parity_samples, export_cfg.reduced_precision_parity_samples if reduced else 0)


def _load_images(samples: list, spec: PreprocessSpec, where: Path) -> torch.Tensor:
    transform = eval_transform(spec)
    try:
        return torch.stack([transform(load_image(s.path, spec.color_mode)) for s in samples])
    except OSError as exc:
        raise ExportError(
            f"cannot read the images listed in {where} ({exc}); export where the training data is"
        ) from None


def _run_images(
    run: RunDir, config: RunConfig, labels: list[str], spec: PreprocessSpec, formats: tuple[str, ...]
) -> ExportImages:
    splits = run.read_splits(labels)
    samples = (splits["val"] + splits["test"])[: _parity_count(config, formats)]
    if not samples:
        raise ExportError(f"{run.split}: no validation images to check the exported model against")
    calibration = None
    if needs_calibration(formats, config):
        train = splits["train"]
        if not train:
            raise ExportError(f"{run.split}: no training images to calibrate the INT8 model on")
        # A seeded sample across the whole split, so every class is likely in the ranges.
        order = np.random.default_rng(0).permutation(len(train))[: config.export.calibration_images]
        calibration = _load_images([train[i] for i in sorted(order)], spec, run.split)
    return ExportImages(
        parity=_load_images(samples, spec, run.split),
        # multilabel: [N, labels] of 0/1, compared with the thresholded label sets
        labels=(
            label_matrix(samples, len(labels))
            if config.task == "multilabel"
            else np.array([s.label for s in samples])
        ),
        calibration=calibration,
    )


def _random_images(
    config: RunConfig, spec: PreprocessSpec, formats: tuple[str, ...], seed: int
) -> ExportImages:
    generator = torch.Generator().manual_seed(seed)
    shape = (spec.channels, spec.crop_height, spec.crop_width)
    count = min(16, config.export.parity_samples)
    if any(f in REDUCED_PRECISION_FORMATS for f in formats):
        count = min(64, config.export.reduced_precision_parity_samples)
    parity = torch.randn((count, *shape), generator=generator)
    calibration = None
    if needs_calibration(formats, config):
        calibration = torch.randn((min(64, config.export.calibration_images), *shape), generator=generator)
    return ExportImages(parity=parity, labels=None, calibration=calibration, calibration_source="random")


def _check_name(name: str) -> None:
    if not MODEL_NAME_PATTERN.match(name):
        raise ConfigError(
            f"bundle name {name!r} must be 1-64 characters of lowercase letters, digits, '_', '.', '-', "
            "starting with a letter or digit; choose another --out or export.name"
        )


def _check_formats(formats: tuple[str, ...], config: RunConfig) -> None:
    """Reject unknown formats, and formats this machine cannot build, before anything is written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; valid: {', '.join(FORMATS)}")
    if "tensorrt" in formats:
        from trainer.tensorrt import require_tensorrt

        require_tensorrt(config.export.tensorrt_precisions)


def split_bundle_path(out: Path) -> tuple[Path, str, int]:
    """``models/NAME/VERSION`` -> (the model repository, NAME, VERSION); ConfigError if it is not one."""
    out = Path(out)
    if not out.name.isdigit() or int(out.name) < 1:
        raise ConfigError(f"{out}: the last folder must be the version number, e.g. models/digits/1")
    return out.parent.parent, out.parent.name, int(out.name)


def _check_quality_gate(
    source: Path, metrics: dict, baseline_check: BaselineCheck | None, min_test_accuracy: float | None
) -> None:
    """With ``export.min_test_accuracy`` set, refuse a run below it or no better than the baselines."""
    if min_test_accuracy is None:
        return
    accuracy = float(metrics.get("accuracy", 0.0))
    if accuracy < min_test_accuracy:
        raise QualityGateError(
            f"{source}: test accuracy {accuracy:.4f} is below export.min_test_accuracy={min_test_accuracy}; "
            "nothing was exported. Improve the run (see its warnings), or lower the threshold"
        )
    if baseline_check is not None and not baseline_check.passed:
        raise QualityGateError(
            f"{source}: {baseline_check.warning}. Nothing was exported (export.min_test_accuracy is set); "
            "unset it to export anyway"
        )


def _final_dir(model_dir: Path, version: int | None, force: bool) -> Path:
    final_dir = model_dir / str(version or next_version(model_dir))
    if final_dir.exists() and not force:
        raise ExportError(
            f"{final_dir}: already exists; pick another --version, omit it for the next free one, or pass --force"
        )
    return final_dir


def _parity_failure(fmt: str, precision: str, parity: ParityResult) -> ExportError:
    label_sets = parity.agreement_on == "label_set"  # multilabel: whole label sets, sigmoid scores
    decision = "label set at the bundle's thresholds" if label_sets else "top-1 class"
    scores = "sigmoid" if label_sets else "softmax"
    if parity.min_top1_agreement is not None:
        if fmt == "onnx-int8":
            fix = (
                "calibrate on more images (--calib-images), try export.onnx_int8_calibration=entropy or "
                "percentile, or export.onnx_int8_per_channel=false"
            )
        elif precision == "fp16":
            fix = "the model overflows or loses too much in half precision; try --precision int8, or serve it in FP32"
        else:
            fix = "calibrate on more images (--calib-images), or try --precision fp16"
        return ExportError(
            f"{fmt} ({precision}) artifact agrees with the eager model's {decision} on "
            f"{parity.top1_agreement:.2%} of {parity.samples} held-out images, below the "
            f"{parity.min_top1_agreement:.0%} required; nothing was written. To fix: {fix}; or serve the "
            "full-precision artifacts"
        )
    return ExportError(
        f"{fmt} artifact disagrees with the eager model on {parity.samples} images: "
        f"max |{scores} diff| {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:.0e}), "
        f"{'label-set' if label_sets else 'top-1'} agreement {parity.top1_agreement:.4f}; nothing was written. "
        "Check the model for "
        "data-dependent control flow, or raise export.parity_tolerance if the difference is expected"
    )


def _write_bundle(
    model: nn.Module,
    images: ExportImages,
    *,
    config: RunConfig,
    digest: str,
    labels: list[str],
    final_dir: Path,
    formats: tuple[str, ...],
    metrics: dict[str, float],
    weights: str,
    run_dir: str,
    baseline_check: BaselineCheck | None = None,
    temperature: float | None = None,
    thresholds: tuple[float, ...] | None = None,
) -> ExportResult:
    """Export ``model`` in each format, check each artifact against the eager model on the parity
    images, and rename the finished bundle into ``final_dir``."""
    spec = preprocess_spec(config.preprocess)
    with torch.inference_mode():
        reference = in_chunks(lambda chunk: model(chunk).float().numpy(), images.parity)
    model_dir, version = final_dir.parent, int(final_dir.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_dir)
    )  # hidden: services skip dot-folders
    try:
        artifacts = []
        for fmt, precision in artifact_plan(formats, config):
            path = staging / artifact_file(fmt, precision)
            built = build_artifact(fmt, model, images, path, config, precision)
            count = len(built.logits)
            parity = compare(
                reference[:count],
                built.logits,
                tolerance=config.export.parity_tolerance,
                precision=built.precision,
                labels=None if images.labels is None else images.labels[:count],
                thresholds=None if thresholds is None else np.asarray(thresholds),
            )
            if not parity.passed:
                if weights == "trained" or parity.min_top1_agreement is None:
                    raise _parity_failure(fmt, built.precision, parity)
                # Random weights give near-uniform outputs whose top-1 class flips on rounding alone;
                # the artifact is still right for measuring speed, and the service will not pick it.
                log.warning(
                    "%s: top-1 agreement %.2f%% on seeded noise, below the %.0f%% required; kept for speed "
                    "tests of this random-init bundle (serve it with --runtime %s), never chosen automatically",
                    path.name,
                    100 * parity.top1_agreement,
                    100 * parity.min_top1_agreement,
                    fmt,
                )
            artifacts.append(
                Artifact(
                    format=format_named(fmt).artifact_format,
                    path=path.name,
                    precision=built.precision,
                    sha256=sha256_file(path),
                    size_bytes=path.stat().st_size,
                    device=built.device,
                    opset=built.opset,
                    parity=parity,
                    calibration=built.calibration,
                    engine=built.engine,
                )
            )
        explain = (
            write_explain_weights(model, config.model.name, images.parity[:1], staging)
            if config.export.explainable
            else None
        )
        manifest = Manifest(
            name=model_dir.name,
            version=version,
            task="multilabel" if thresholds is not None else "multiclass",
            labels=tuple(labels),
            thresholds=thresholds,
            preprocess=spec,
            input=InputSpec(channels=spec.channels, height=spec.crop_height, width=spec.crop_width),
            artifacts=tuple(artifacts),
            metrics=metrics,
            baseline_check=baseline_check,
            weights=weights,
            temperature=temperature,
            explain=explain,
            created_at=datetime.now(UTC),
            architecture=config.model.name,
            config_digest=digest,
            source=SourceInfo(
                run_dir=run_dir,
                git_sha=git_sha(),
                imgcls_version=imgcls.__version__,
                torch_version=torch.__version__,
            ),
        )
        (staging / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
        # mkdtemp made it 0700; a bundle is read by services running as other users (containers).
        staging.chmod(0o755)
        if final_dir.exists():  # --force: swap the old bundle out only once the new one is complete
            retired = Path(tempfile.mkdtemp(prefix=f".{version}.retired-", dir=model_dir))
            final_dir.rename(retired / "bundle")
            staging.rename(final_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(final_dir, manifest)


# ExportConfig field -> the `imgcls export` flag that sets it, for error messages.
EXPORT_OPTION_FLAGS = {
    "tensorrt_precisions": "--precision",
    "calibration_images": "--calib-images",
    "tensorrt_max_batch_size": "--max-batch-size",
}


def _with_export_options(config: RunConfig, options: dict[str, Any] | None) -> RunConfig:
    """``config`` with export options from the command line (``--precision``, ``--calib-images``...)."""
    if not options:
        return config
    try:
        export_cfg = ExportConfig.model_validate({**config.export.model_dump(), **options})
    except ValidationError as exc:
        problems = describe_validation_errors(
            exc.errors(),
            name=lambda loc: EXPORT_OPTION_FLAGS.get(str(loc[0]), f"export.{loc[0]}") if loc else "export",
            with_input=False,
        )
        raise ConfigError(f"invalid export options: {problems}") from None
    return config.model_copy(update={"export": export_cfg})


def export_bundle(
    run_path: Path,
    *,
    out_dir: Path | None = None,
    name: str | None = None,
    version: int | None = None,
    formats: tuple[str, ...] | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> ExportResult:
    """Write ``out_dir/name/version/`` from the run at ``run_path``; see the module docstring.

    ``options`` override fields of the run's ``export`` config section for this export only.
    """
    run = RunDir(Path(run_path))
    trained_config = run.read_config()
    config = _with_export_options(trained_config, options)
    labels = run.read_labels()
    out_dir = Path(out_dir) if out_dir is not None else config.export.out_dir
    name = name or default_bundle_name(config)
    _check_name(name)
    formats = tuple(formats or config.export.formats)
    _check_formats(formats, config)
    try:
        summary = json.loads(run.metrics_json.read_text(encoding="utf-8"))
        metrics = summary["test"]
    except (OSError, ValueError, KeyError):
        raise ExportError(
            f"{run.metrics_json}: no test metrics; the run did not finish its evaluation"
        ) from None
    baseline_check = (
        BaselineCheck.model_validate(summary["baseline_check"]) if "baseline_check" in summary else None
    )
    _check_quality_gate(run.metrics_json, metrics, baseline_check, config.export.min_test_accuracy)
    final_dir = _final_dir(out_dir / name, version, force)
    spec = preprocess_spec(config.preprocess)
    model = load_eager_model(run, config, labels)
    return _write_bundle(
        model,
        _run_images(run, config, labels, spec, formats),
        config=config,
        digest=config_digest(trained_config),  # the training recipe's identity, not this export's options
        labels=labels,
        final_dir=final_dir,
        formats=formats,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        weights="trained",
        run_dir=str(run.path),
        baseline_check=baseline_check,
        temperature=(summary.get("calibration") or {}).get("temperature"),
        thresholds=_thresholds(summary, labels, run) if config.task == "multilabel" else None,
    )


def _thresholds(summary: dict, labels: list[str], run: RunDir) -> tuple[float, ...]:
    """A multilabel run's per-label thresholds (metrics.json), in the order of its labels."""
    recorded = summary.get("thresholds") or {}
    missing = [label for label in labels if label not in recorded]
    if missing:
        raise ExportError(
            f"{run.metrics_json}: no threshold for label(s) {', '.join(missing[:10])}; the run did not finish "
            "its evaluation (rerun it with --resume)"
        )
    return tuple(float(recorded[label]) for label in labels)


def export_random_init(
    model_name: str,
    num_classes: int,
    image_size: int,
    out: Path,
    *,
    color_mode: str = "RGB",
    formats: tuple[str, ...] | None = None,
    seed: int = 0,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> ExportResult:
    """A complete bundle of ``model_name`` with random weights at ``out`` (``models/NAME/VERSION``).

    Speed does not depend on trained weights, so this is what benchmarks and capacity tests serve.
    Parity is checked on seeded random inputs; labels are ``class_0 .. class_{n-1}``; the manifest
    says ``weights: random_init`` so no one mistakes it for a trained model. INT8 artifacts are
    calibrated on seeded noise and kept even when their top-1 agreement is short (random weights
    make near-ties of every output); the manifest records that they did not pass.
    """
    if num_classes < 2:
        raise ConfigError(f"--num-classes {num_classes}: a classifier needs at least 2 classes")
    out_dir, name, version = split_bundle_path(out)
    _check_name(name)
    values: dict[str, Any] = {
        "model.name": model_name,
        "preprocess.image_size": image_size,
        "preprocess.color_mode": color_mode,
        "export.name": name,
        "export.out_dir": out_dir,
    }
    values.update({f"export.{key}": value for key, value in (options or {}).items()})
    config = load_config(None, values=values)
    formats = tuple(formats or config.export.formats)
    _check_formats(formats, config)
    final_dir = _final_dir(out_dir / name, version, force)
    spec = preprocess_spec(config.preprocess)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes, in_chans=spec.channels, image_size=image_size).model.eval()
    return _write_bundle(
        model,
        _random_images(config, spec, formats, seed),
        config=config,
        digest=config_digest(config),
        labels=[f"class_{i}" for i in range(num_classes)],
        final_dir=final_dir,
        formats=formats,
        metrics={},
        weights="random_init",
        run_dir="",
    )

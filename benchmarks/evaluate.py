"""Evaluate a bundle as it is served: every artifact, loaded by the runtime the service would use,
on a labelled split of the run it was exported from, beside the run's eager model.

This answers what the export's parity check does not: the accuracy of an INT8 or FP16 artifact on
the whole test split (parity covers at most ``export.reduced_precision_parity_samples`` held-out
images), on the device it will serve from. Images go through the bundle's own eval transform on
the CPU, decoded once per batch for all artifacts (on CUDA the service may decode JPEGs on the GPU,
whose output differs from the CPU decoder's by a rounding step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from benchmarks.artifact_runtimes import load_every_artifact
from imgcls.errors import BundleError, ConfigError, ImgclsError
from imgcls.manifest import Manifest, load_manifest, verify_artifacts
from imgcls.preprocess import eval_transform, load_image
from service.runtimes import resolve_device
from trainer.data import label_matrix
from trainer.export import load_eager_model
from trainer.multilabel import multilabel_metrics
from trainer.report import classification_metrics
from trainer.rundir import RunDir

__all__ = ["ArtifactScore", "BundleEvaluation", "evaluate_bundle"]

SplitName = Literal["train", "val", "test"]
_SUMMARY_METRICS = ("accuracy", "top5_accuracy", "f1_macro")


@dataclass(frozen=True)
class ArtifactScore:
    """One runtime's results on the split. ``label`` is ``eager`` or the artifact's label
    (:func:`imgcls.formats.artifact_label`: ``onnxruntime-int8``, ``tensorrt-fp16``)."""

    label: str
    precision: str
    device: str
    # accuracy, f1_macro, top5_accuracy (more than 5 classes); multilabel: subset accuracy, map, f1_micro
    metrics: dict[str, float]
    # share of images whose top-1 class (multilabel: whole label set) matches the eager model's
    agreement_with_eager: float
    accuracy_change: float  # accuracy minus the eager model's


@dataclass(frozen=True)
class BundleEvaluation:
    bundle_dir: str
    run_dir: str
    split: str
    samples: int
    scores: tuple[ArtifactScore, ...]
    not_loaded: dict[str, str]  # artifact label -> why it could not be loaded here

    def to_dict(self) -> dict:
        return asdict(self)


def _usable_device(device: str) -> str:
    """``auto``, ``cpu`` or ``cuda`` -> the device to run on; ConfigError naming the fix otherwise."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False); use cpu"
        )
    return resolve_device(device)


def _check_bundle_matches_run(manifest: Manifest, labels: list[str], architecture: str, run: RunDir) -> None:
    if tuple(labels) != manifest.labels:
        raise ConfigError(
            f"{run.path}: its classes {labels[:5]}... differ from the bundle's {list(manifest.labels[:5])}...; "
            "evaluate a bundle with the run it was exported from (the manifest's source.run_dir)"
        )
    if manifest.architecture and manifest.architecture != architecture:
        raise ConfigError(
            f"{run.path}: trains {architecture!r}, the bundle holds {manifest.architecture!r}; evaluate a "
            "bundle with the run it was exported from (the manifest's source.run_dir)"
        )


def _batches(samples: list, manifest: Manifest, batch_size: int, where: Path):
    transform = eval_transform(manifest.preprocess)
    color_mode = manifest.preprocess.color_mode
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        try:
            images = torch.stack([transform(load_image(s.path, color_mode)) for s in chunk])
        except OSError as exc:
            raise ConfigError(
                f"cannot read the images listed in {where} ({exc}); evaluate where the run's data is"
            ) from None
        if manifest.task == "multilabel":
            yield images, label_matrix(chunk, manifest.num_classes)
        else:
            yield images, np.array([s.label for s in chunk])


def _summary(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], thresholds: np.ndarray | None
) -> dict[str, float]:
    if thresholds is not None:  # multilabel: sigmoid scores, decided at the bundle's thresholds
        metrics = multilabel_metrics(probabilities, labels, class_names, thresholds)
        return {name: metrics[name] for name in ("accuracy", "map", "f1_micro", "f1_macro")}
    # classification_metrics takes logits; log-probabilities rank the classes the same way.
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-30, None))
    metrics = classification_metrics(logits, labels, class_names)
    return {name: metrics[name] for name in _SUMMARY_METRICS if name in metrics}


def _decisions(probabilities: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """The top-1 class of each image, or (multilabel) its label set at the thresholds."""
    return probabilities >= thresholds if thresholds is not None else probabilities.argmax(axis=1)


def _agreement(decisions: np.ndarray, reference: np.ndarray) -> float:
    same = decisions == reference
    return float((same.all(axis=1) if same.ndim == 2 else same).mean())


def evaluate_bundle(
    bundle_dir: Path,
    run_dir: Path,
    *,
    split: SplitName = "test",
    device: str = "auto",
    batch_size: int = 64,
    intra_op_threads: int | None = None,
) -> BundleEvaluation:
    """Score the run's eager model and each artifact of the bundle on ``split`` of the run."""
    bundle_dir, run = Path(bundle_dir), RunDir(Path(run_dir))
    manifest = load_manifest(bundle_dir)
    verify_artifacts(bundle_dir, manifest)
    if manifest.weights == "random_init":
        raise ConfigError(
            f"{bundle_dir}: holds random weights (exported with --random-init), so there is no run and no "
            "accuracy to evaluate; it is a bundle for speed tests"
        )
    device = _usable_device(device)
    config = run.read_config()
    labels = run.read_labels()
    _check_bundle_matches_run(manifest, labels, config.model.name, run)
    samples = run.read_splits(labels)[split]
    if not samples:
        raise ConfigError(f"{run.split}: the {split} split is empty; choose another --split")
    try:
        eager = load_eager_model(run, config, labels).to(device)
    except ImgclsError:
        raise
    except Exception as exc:
        raise BundleError(f"{run.best_checkpoint}: the eager model does not load ({exc})") from exc
    runtimes, not_loaded = load_every_artifact(
        manifest, bundle_dir, device=device, intra_op_threads=intra_op_threads
    )
    thresholds = np.asarray(manifest.thresholds) if manifest.thresholds is not None else None
    for runtime in runtimes.values():  # the scores the service serves
        runtime.multilabel = thresholds is not None
        runtime.temperature = 1.0  # accuracy and agreement do not depend on it
    outputs: dict[str, list[np.ndarray]] = {"eager": [], **{label: [] for label in runtimes}}
    truth: list[np.ndarray] = []
    try:
        for images, batch_labels in _batches(samples, manifest, batch_size, run.split):
            truth.append(batch_labels)
            with torch.inference_mode():
                logits = eager(images.to(device)).float()
                scores = torch.sigmoid(logits) if thresholds is not None else torch.softmax(logits, dim=1)
                outputs["eager"].append(scores.cpu().numpy())
            host = images.numpy()
            for label, runtime in runtimes.items():
                step = min(batch_size, runtime.max_batch_size or batch_size)
                outputs[label].extend(runtime.infer(host[i : i + step]) for i in range(0, len(host), step))
    finally:
        for runtime in runtimes.values():
            runtime.close()
    labels_array = np.concatenate(truth)
    eager_probabilities = np.concatenate(outputs["eager"])
    eager_decisions = _decisions(eager_probabilities, thresholds)
    eager_accuracy = _summary(eager_probabilities, labels_array, labels, thresholds)["accuracy"]
    scores = []
    for label, chunks in outputs.items():
        probabilities = np.concatenate(chunks)
        if not np.isfinite(probabilities).all():
            not_loaded[label] = "produced NaN or infinite outputs"
            continue
        summary = _summary(probabilities, labels_array, labels, thresholds)
        runtime = runtimes.get(label)
        scores.append(
            ArtifactScore(
                label=label,
                precision=runtime.precision if runtime else "fp32",
                device=runtime.device if runtime else device,
                metrics=summary,
                agreement_with_eager=_agreement(_decisions(probabilities, thresholds), eager_decisions),
                accuracy_change=summary["accuracy"] - eager_accuracy,
            )
        )
    return BundleEvaluation(
        bundle_dir=str(bundle_dir),
        run_dir=str(run.path),
        split=split,
        samples=len(labels_array),
        scores=tuple(scores),
        not_loaded=not_loaded,
    )

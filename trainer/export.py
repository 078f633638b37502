"""``imgcls export``: a run's best checkpoint -> a verified model bundle.

Each artifact is written, loaded back from disk with nothing but its own runtime
(``torch.jit.load`` / ``onnxruntime``), and compared with the eager model on validation
images; the comparison is recorded in the manifest and a failure stops the export. The bundle
is assembled in a hidden staging folder and renamed into place, so a service never sees a
half-written bundle.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

import trainer
from trainer.config import RunConfig, config_digest, load_config
from trainer.errors import ConfigError, ExportError
from trainer.manifest import (
    MANIFEST_FILENAME,
    MODEL_NAME_PATTERN,
    Artifact,
    InputSpec,
    Manifest,
    ParityResult,
    PreprocessSpec,
    SourceInfo,
    sha256_file,
)
from trainer.models import create_model
from trainer.rundir import RunDir, git_sha
from trainer.transforms import eval_transform, load_image, preprocess_spec

__all__ = [
    "ARTIFACT_FILES",
    "ExportResult",
    "export_bundle",
    "export_random_init",
    "load_eager_model",
    "next_version",
]

ARTIFACT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


@dataclass
class ExportResult:
    bundle_dir: Path
    manifest: Manifest


def default_bundle_name(config: RunConfig) -> str:
    raw = config.export.name or Path(config.data.path).stem or "model"
    name = re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-._") or "model"
    return name[:64]


def next_version(model_dir: Path) -> int:
    """One above the highest numeric version folder (1 for a new model)."""
    versions = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if model_dir.is_dir()
        else []
    )
    return max(versions, default=0) + 1


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


def _parity_batch(
    run: RunDir, config: RunConfig, labels: list[str], spec: PreprocessSpec, count: int
) -> torch.Tensor:
    splits = run.read_splits(labels)
    samples = (splits["val"] + splits["test"])[:count]
    if not samples:
        raise ExportError(f"{run.split}: no validation images to check the exported model against")
    transform = eval_transform(spec)
    try:
        return torch.stack([transform(load_image(s.path, spec.color_mode)) for s in samples])
    except OSError as exc:
        raise ExportError(
            f"cannot read the validation images listed in {run.split} ({exc}); export where the training data is"
        ) from None


def _compare(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> ParityResult:
    """Softmax outputs compared; a top-1 flip only fails when the reference was not a near-tie."""
    ref = torch.softmax(torch.from_numpy(reference).double(), dim=1).numpy()
    cand = torch.softmax(torch.from_numpy(candidate).double(), dim=1).numpy()
    max_abs_diff = float(np.abs(ref - cand).max())
    ref_top, cand_top = ref.argmax(axis=1), cand.argmax(axis=1)
    agreement = float((ref_top == cand_top).mean())
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive_flip = bool(((ref_top != cand_top) & ((top2[:, 1] - top2[:, 0]) > 2 * tolerance)).any())
    return ParityResult(
        samples=len(reference),
        top1_agreement=agreement,
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        passed=max_abs_diff <= tolerance and not decisive_flip,
    )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; we pin <2.15
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        torch.jit.save(frozen, str(path))


def _run_torchscript(path: Path, batch: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        # Two calls with different batch sizes prove the batch axis stayed dynamic.
        first = loaded(batch[:1])
        rest = loaded(batch[1:]) if len(batch) > 1 else first[:0]
    return torch.cat([first, rest]).float().numpy()


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        input_names=["input"],
        output_names=["logits"],
        external_data=False,
        verbose=False,
    )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    array = batch.numpy()
    first = session.run(None, {name: array[:1]})[0]
    rest = session.run(None, {name: array[1:]})[0] if len(array) > 1 else first[:0]
    return np.concatenate([first, rest]).astype(np.float32)


_EXPORTERS = {
    "torchscript": (_export_torchscript, _run_torchscript),
    "onnx": (_export_onnx, _run_onnx),
}


def _check_name(name: str) -> None:
    if not MODEL_NAME_PATTERN.match(name):
        raise ConfigError(
            f"bundle name {name!r} must be 1-64 characters of lowercase letters, digits, '_', '.', '-', "
            "starting with a letter or digit; choose another --out or export.name"
        )


def _check_formats(formats: tuple[str, ...]) -> None:
    unknown = [f for f in formats if f not in _EXPORTERS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; valid: {', '.join(_EXPORTERS)}")


def split_bundle_path(out: Path) -> tuple[Path, str, int]:
    """``models/NAME/VERSION`` -> (the model repository, NAME, VERSION); ConfigError if it is not one."""
    out = Path(out)
    if not out.name.isdigit() or int(out.name) < 1:
        raise ConfigError(f"{out}: the last folder must be the version number, e.g. models/digits/1")
    return out.parent.parent, out.parent.name, int(out.name)


def _final_dir(model_dir: Path, version: int | None, force: bool) -> Path:
    final_dir = model_dir / str(version or next_version(model_dir))
    if final_dir.exists() and not force:
        raise ExportError(
            f"{final_dir}: already exists; pick another --version, omit it for the next free one, or pass --force"
        )
    return final_dir


def _write_artifact(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, config: RunConfig) -> None:
    write, _ = _EXPORTERS[fmt]
    try:
        if fmt == "onnx":
            write(model, example, path, config.export.onnx_opset)
        else:
            write(model, example, path)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"{fmt} export of {config.model.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc


def _write_bundle(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    config: RunConfig,
    labels: list[str],
    final_dir: Path,
    formats: tuple[str, ...],
    metrics: dict[str, float],
    weights: str,
    run_dir: str,
) -> ExportResult:
    """Export ``model`` in each format, check each artifact against the eager model on ``batch``, and
    rename the finished bundle into ``final_dir``."""
    export_cfg = config.export
    spec = preprocess_spec(config.preprocess)
    with torch.inference_mode():
        reference = model(batch).float().numpy()
    # torch.export specialises a dimension of size 1, so the example batch must hold at least 2 images.
    example = batch[:2].clone() if len(batch) >= 2 else batch.repeat(2, 1, 1, 1)
    model_dir, version = final_dir.parent, int(final_dir.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_dir)
    )  # hidden: services skip dot-folders
    try:
        artifacts = []
        for fmt in formats:
            path = staging / ARTIFACT_FILES[fmt]
            _write_artifact(fmt, model, example, path, config)
            try:
                produced = _EXPORTERS[fmt][1](path, batch)
            except Exception as exc:
                raise ExportError(
                    f"the {fmt} artifact of {config.model.name} does not load back: {type(exc).__name__}: {exc}".splitlines()[
                        0
                    ]
                ) from exc
            parity = _compare(reference, produced, export_cfg.parity_tolerance)
            if not parity.passed:
                raise ExportError(
                    f"{fmt} artifact disagrees with the eager model on {parity.samples} images: "
                    f"max |softmax diff| {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:.0e}), "
                    f"top-1 agreement {parity.top1_agreement:.4f}; nothing was written. Check the model for "
                    "data-dependent control flow, or raise export.parity_tolerance if the difference is expected"
                )
            artifacts.append(
                Artifact(
                    format=fmt,
                    path=path.name,
                    precision="fp32",
                    sha256=sha256_file(path),
                    size_bytes=path.stat().st_size,
                    device="cpu",
                    opset=export_cfg.onnx_opset if fmt == "onnx" else None,
                    parity=parity,
                )
            )
        manifest = Manifest(
            name=model_dir.name,
            version=version,
            labels=tuple(labels),
            preprocess=spec,
            input=InputSpec(channels=spec.channels, height=spec.crop_height, width=spec.crop_width),
            artifacts=tuple(artifacts),
            metrics=metrics,
            weights=weights,
            created_at=datetime.now(UTC),
            architecture=config.model.name,
            config_digest=config_digest(config),
            source=SourceInfo(
                run_dir=run_dir,
                git_sha=git_sha(),
                imgcls_version=trainer.__version__,
                torch_version=torch.__version__,
            ),
        )
        (staging / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
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


def export_bundle(
    run_path: Path,
    *,
    out_dir: Path | None = None,
    name: str | None = None,
    version: int | None = None,
    formats: tuple[str, ...] | None = None,
    force: bool = False,
) -> ExportResult:
    """Write ``out_dir/name/version/`` from the run at ``run_path``; see the module docstring."""
    run = RunDir(Path(run_path))
    config = run.read_config()
    labels = run.read_labels()
    out_dir = Path(out_dir) if out_dir is not None else config.export.out_dir
    name = name or default_bundle_name(config)
    _check_name(name)
    formats = tuple(formats or config.export.formats)
    _check_formats(formats)
    final_dir = _final_dir(out_dir / name, version, force)
    try:
        metrics = json.loads(run.metrics_json.read_text(encoding="utf-8"))["test"]
    except (OSError, ValueError, KeyError):
        raise ExportError(
            f"{run.metrics_json}: no test metrics; the run did not finish its evaluation"
        ) from None
    spec = preprocess_spec(config.preprocess)
    model = load_eager_model(run, config, labels)
    batch = _parity_batch(run, config, labels, spec, config.export.parity_samples)
    return _write_bundle(
        model,
        batch,
        config=config,
        labels=labels,
        final_dir=final_dir,
        formats=formats,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        weights="trained",
        run_dir=str(run.path),
    )


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
) -> ExportResult:
    """A complete bundle of ``model_name`` with random weights at ``out`` (``models/NAME/VERSION``).

    Speed does not depend on trained weights, so this is what benchmarks and capacity tests serve.
    Parity is checked on seeded random inputs; labels are ``class_0 .. class_{n-1}``; the manifest
    says ``weights: random_init`` so no one mistakes it for a trained model.
    """
    if num_classes < 2:
        raise ConfigError(f"--num-classes {num_classes}: a classifier needs at least 2 classes")
    out_dir, name, version = split_bundle_path(out)
    _check_name(name)
    config = load_config(
        None,
        values={
            "model.name": model_name,
            "preprocess.image_size": image_size,
            "preprocess.color_mode": color_mode,
            "export.name": name,
            "export.out_dir": out_dir,
        },
    )
    formats = tuple(formats or config.export.formats)
    _check_formats(formats)
    final_dir = _final_dir(out_dir / name, version, force)
    spec = preprocess_spec(config.preprocess)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes, in_chans=spec.channels, image_size=image_size).model.eval()
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(
        (min(16, config.export.parity_samples), spec.channels, spec.crop_height, spec.crop_width),
        generator=generator,
    )
    return _write_bundle(
        model,
        batch,
        config=config,
        labels=[f"class_{i}" for i in range(num_classes)],
        final_dir=final_dir,
        formats=formats,
        metrics={},
        weights="random_init",
        run_dir="",
    )

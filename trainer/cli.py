"""The ``imgcls`` command line: the one place where errors become messages and exit codes.

Exit codes: 0 success; 1 a failure while running (export parity, a crashed epoch);
2 bad input the user can fix (config, data, model name, bundle); 130 interrupted.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated

import click as click_package
import typer

from benchmarks.cli import bench_app
from trainer.errors import ImgclsError

# Newer typer vendors click as typer._click: its parser raises, and fills in the usage line for, its own
# exception classes, which are not the click package's. `click` here is the module of the classes the
# installed typer uses, so the usage errors our commands raise get a usage line and main() catches them.
try:
    from typer._click import exceptions as click
except ImportError:  # an older typer runs on the click package itself
    from click import exceptions as click  # type: ignore[no-redef]

__all__ = ["app", "main", "run"]

app = typer.Typer(
    name="imgcls",
    help="Train, evaluate, export and serve image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Write the embedded datasets to disk.", no_args_is_help=True)
app.add_typer(data_app, name="data")

log = logging.getLogger("imgcls")


@data_app.command("digits")
def data_digits(
    out: Annotated[Path, typer.Option("--out", help="Folder to write <out>/<digit>/<n>.png into.")] = Path(
        "data/digits"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace the folder if it already has files.")] = False,
) -> None:
    """Write scikit-learn's handwritten digits (1,797 8x8 images, 10 classes) as an ImageFolder of PNGs."""
    from trainer.digits import write_digits

    counts = write_digits(out, overwrite=overwrite)
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {out}")


@app.command()
def models(
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            help="List the bundles of this model repository instead: version, architecture, weights, "
            "test accuracy, the check against the baselines, and any warning.",
        ),
    ] = None,
) -> None:
    """List the model names `imgcls train` accepts (model.name), or with --repo the bundles a server
    would load from that repository and whether to trust them.

    Example: imgcls models --repo models
    """
    if repo is None:
        from trainer.models import describe_models

        for name in describe_models():
            typer.echo(name)
        return
    from service.repository import ModelRepository
    from trainer.errors import BundleError

    found = ModelRepository(repo).scan()
    if not found:
        raise BundleError(f"{repo}: no bundles (<name>/<version>/manifest.json); imgcls train exports one")
    typer.echo(f"{'model':<20} {'version':>7}  {'architecture':<20} {'weights':<11} {'test acc':>8}  check")
    for ref in found:
        if ref.manifest is None:
            typer.echo(f"{ref.name:<20} {ref.version:>7}  not loadable: {ref.error}")
            continue
        manifest = ref.manifest
        accuracy = manifest.metrics.get("accuracy")
        check = manifest.baseline_check
        typer.echo(
            f"{ref.name:<20} {ref.version:>7}  {manifest.architecture:<20} {manifest.weights:<11} "
            f"{'-' if accuracy is None else f'{accuracy:.4f}':>8}  "
            f"{'-' if check is None else 'passed' if check.passed else 'FAILED'}"
        )
        if manifest.quality_warning is not None:
            typer.echo(f"    WARNING: {manifest.quality_warning}")


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML training config (see configs/).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="SECTION.FIELD=VALUE",
            help="Override any config field (repeatable), e.g. optim.lr=0.01.",
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Image folder or CSV (data.path).")] = None,
    run_name: Annotated[str | None, typer.Option(help="Run folder name under runs_dir (run_name).")] = None,
    model: Annotated[str | None, typer.Option(help="Architecture (model.name); see `imgcls models`.")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local pretrained weights file (model.weights).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs (train.epochs).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (train.device).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (train.seed).")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop before training if any image is unreadable (data.strict).")
    ] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this folder from its last checkpoint.")
    ] = None,
    export: Annotated[
        bool | None, typer.Option("--export/--no-export", help="Export a bundle at the end (export.enabled).")
    ] = None,
) -> None:
    """Train a classifier on a folder of labelled images, evaluate it on the test split, and export a bundle.

    Precedence: config defaults < --config YAML < --set overrides < the named options.

    Example: imgcls train --config configs/digits.yaml --set augment.preset=strong --epochs 40
    """
    from trainer.export import export_bundle
    from trainer.rundir import RunDir
    from trainer.train import train as run_training

    named = {
        "data.path": data,
        "run_name": run_name,
        "model.name": model,
        "model.weights": weights,
        "train.epochs": epochs,
        "train.device": device,
        "train.seed": seed,
        "data.strict": True if strict else None,
        "export.enabled": export,
    }
    values = {k: v for k, v in named.items() if v is not None}
    if resume is not None:
        if config is not None:
            raise click.UsageError(
                "--resume uses the run's own config.yaml; drop --config (--set still applies)"
            )
        resolved = RunDir(resume).resume_config(overrides, values)
    else:
        from trainer.config import load_config

        resolved = load_config(config, overrides, values)
    config_name = config.stem if config is not None else "run"
    result = run_training(resolved, config_name=config_name, resume=resume)
    accuracy = result.test_metrics["accuracy"]
    samples = result.test_metrics["samples"]
    typer.echo(f"test accuracy: {accuracy:.4f} ({round(accuracy * samples)}/{samples} images)")
    typer.echo(f"run: {result.run_dir}")
    if resolved.export.enabled:
        exported = export_bundle(result.run_dir)
        typer.echo(
            f"bundle: {exported.bundle_dir} ({', '.join(a.path for a in exported.manifest.artifacts)})"
        )
    check = result.baseline_check
    if check is not None and not check.passed:  # last, so it is the line a user reads
        typer.echo(
            f"WARNING: not clearly better than chance (test accuracy {check.accuracy:.4f}, always "
            f"{check.majority_class!r} {check.majority_accuracy:.4f}); causes and fixes in "
            f"{result.run_dir / 'metrics.json'} and above",
            err=True,
        )


@app.command()
def export(
    run_dir: Annotated[
        Path | None, typer.Option("--run", help="The run folder (runs/<name>) to export.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Bundle folder models/NAME/VERSION (default: from the config)."),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: torchscript, onnx, onnx-int8 (CPU INT8), tensorrt (CUDA + TensorRT) "
            "(default: export.formats)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="With tensorrt: fp16, int8, fp8, or several comma-separated (fp16,int8) for one "
            "engine each in the bundle (default: export.tensorrt_precisions)."
        ),
    ] = None,
    calib_images: Annotated[
        int | None,
        typer.Option(
            help="With onnx-int8 or tensorrt int8/fp8: training images to calibrate on (default 256)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(help="With tensorrt: the engine's largest batch; match the service's (default 32)."),
    ] = None,
    min_test_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Refuse (exit 2) a run whose test accuracy is below this, or that is no better than "
            "always answering its most frequent class (default: export.min_test_accuracy, off)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle of the same version.")] = False,
    random_init: Annotated[
        bool,
        typer.Option(
            "--random-init", help="No run: a speed bundle of --model with random weights (needs --out)."
        ),
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="With --random-init: architecture; see `imgcls models`.")
    ] = None,
    num_classes: Annotated[int, typer.Option(help="With --random-init: number of classes.")] = 1000,
    image_size: Annotated[int, typer.Option(help="With --random-init: input size in pixels (square).")] = 224,
    color_mode: Annotated[str, typer.Option(help="With --random-init: RGB or L.")] = "RGB",
) -> None:
    """Export a run's best checkpoint to a verified model bundle (manifest, TorchScript, ONNX).

    Every artifact is loaded back and checked against the eager model on held-out images: FP32
    ones numerically, onnx-int8 and tensorrt on top-1 agreement (98% for INT8, 99% for FP16).

    With --random-init, write a complete bundle for any registry model with random weights instead:
    speed does not depend on trained weights, so benchmarks and capacity tests need no training.

    Example: imgcls export --random-init --model mobilenet_v3_small --num-classes 1000 --image-size 224 --out models/mobilenet_v3_small/1
    """
    from trainer.export import export_bundle, export_random_init, split_bundle_path

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else None
    options = {
        key: value
        for key, value in (
            ("tensorrt_precisions", precision),
            ("calibration_images", calib_images),
            ("tensorrt_max_batch_size", max_batch_size),
            ("min_test_accuracy", min_test_accuracy),
        )
        if value is not None
    }
    if random_init:
        if run_dir is not None:
            raise click.UsageError("--random-init exports no run; drop --run")
        if model is None or out is None:
            raise click.UsageError("--random-init needs --model and --out (models/NAME/VERSION)")
        result = export_random_init(
            model,
            num_classes,
            image_size,
            out,
            color_mode=color_mode,
            formats=chosen,
            force=force,
            options=options,
        )
    else:
        if run_dir is None:
            raise click.UsageError("give --run RUN_DIR, or --random-init --model NAME for a speed bundle")
        out_dir, name, version = split_bundle_path(out) if out is not None else (None, None, None)
        result = export_bundle(
            run_dir, out_dir=out_dir, name=name, version=version, formats=chosen, force=force, options=options
        )
    for artifact in result.manifest.artifacts:
        parity = artifact.parity
        line = (
            f"{artifact.path} ({artifact.precision}): parity on {parity.samples} images: top-1 agreement "
            f"{parity.top1_agreement:.4f}, max |softmax diff| {parity.max_abs_diff:.1e}"
        )
        if parity.accuracy_change is not None and artifact.precision != "fp32":
            line += f", accuracy {parity.accuracy:.4f} ({parity.accuracy_change:+.4f} vs eager)"
        if not parity.passed:
            line += " - FAILED parity: kept for speed tests only, the service will not choose it"
        typer.echo(line)
    typer.echo(f"bundle: {result.bundle_dir}")


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Option("--bundle", help="The bundle folder models/NAME/VERSION.")],
    run_dir: Annotated[
        Path | None,
        typer.Option("--run", help="The run it was exported from (default: the manifest's source.run_dir)."),
    ] = None,
    split: Annotated[str, typer.Option(help="The run's split to score: test, val or train.")] = "test",
    device: Annotated[
        str,
        typer.Option(help="auto, cpu or cuda: where the eager model and the artifacts run (engines: cuda)."),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference call.")] = 64,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
) -> None:
    """Score a bundle as it is served: the run's eager model and every artifact of the bundle, each
    through the runtime the service would load it with, on a split of the run (accuracy, macro F1,
    top-5, top-1 agreement with the eager model). Shows what INT8 or FP16 costs on the whole test split.

    Example: imgcls evaluate --bundle models/digits/3
    """
    import json

    from benchmarks.evaluate import evaluate_bundle
    from trainer.manifest import load_manifest

    if split not in ("test", "val", "train"):
        raise click.BadParameter(f"{split!r} is not a split; use test, val or train", param_hint="--split")
    if json_out is not None:  # fail before the evaluation, not after it
        json_out.parent.mkdir(parents=True, exist_ok=True)
    if run_dir is None:
        manifest = load_manifest(bundle)
        if not manifest.source.run_dir and manifest.weights != "random_init":
            raise click.UsageError(f"{bundle}: the manifest records no run; pass --run runs/<name>")
        run_dir = Path(manifest.source.run_dir)
    result = evaluate_bundle(bundle, run_dir, split=split, device=device, batch_size=batch_size)
    typer.echo(f"{bundle} on the {result.split} split of {result.run_dir}: {result.samples} images")
    typer.echo(
        f"{'runtime':<20} {'precision':<9} {'device':<6} {'accuracy':>8} {'change':>8} {'agreement':>9} {'f1_macro':>8}"
    )
    for score in result.scores:
        typer.echo(
            f"{score.label:<20} {score.precision:<9} {score.device:<6} {score.metrics['accuracy']:>8.4f} "
            f"{score.accuracy_change:>+8.4f} {score.agreement_with_eager:>9.4f} {score.metrics['f1_macro']:>8.4f}"
        )
    for label, why in result.not_loaded.items():
        typer.echo(f"{label}: not evaluated: {why}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


@app.command()
def serve(
    model_repo: Annotated[
        Path | None, typer.Option(help="Model repository: <repo>/<name>/<version>/manifest.json.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    runtime: Annotated[
        str | None,
        typer.Option(help="auto, onnxruntime, onnxruntime-int8, torchscript or tensorrt (default auto)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default auto).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json (one object per line) or text.")] = None,
) -> None:
    """Serve every bundle in the model repository over HTTP: KServe v1 and the Open Inference Protocol v2
    (Triton's clients), with dynamic batching, Prometheus metrics at /metrics and graceful shutdown.

    Every setting can also come from the environment: IMGCLS_MODEL_REPO, IMGCLS_PORT,
    IMGCLS_BATCHING__MAX_BATCH_SIZE, IMGCLS_MODELS='{"digits": {"max_batch_size": 16}}', ...
    """
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.preflight import check_can_start
    from service.settings import Settings
    from trainer.errors import ConfigError

    given = {
        "model_repo": model_repo,
        "host": host,
        "port": port,
        "runtime": runtime,
        "device": device,
        "log_level": log_level,
        "log_format": log_format,
    }
    flags = {k: v for k, v in given.items() if v is not None}

    def setting_name(loc: tuple[int | str, ...]) -> str:
        """The flag the user gave, else the environment variable the value came from."""
        if len(loc) == 1 and loc[0] in flags:
            return f"--{str(loc[0]).replace('_', '-')}"
        return f"IMGCLS_{'__'.join(str(p) for p in loc).upper()}"

    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{setting_name(err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from None
    except SettingsError as exc:  # an IMGCLS_* variable that holds an object or a list is not JSON
        field = re.search(r'field "(\w+)"', str(exc))  # pydantic-settings names the field only in its message
        name = f"IMGCLS_{field.group(1).upper()}" if field else "an IMGCLS_* variable"
        raise ConfigError(
            f"invalid service settings: {name} is not valid JSON ({exc.__cause__ or exc}); objects and lists "
            """are JSON, e.g. IMGCLS_MODELS='{"digits": {"max_batch_size": 16}}', IMGCLS_API_KEYS='["key"]'"""
        ) from None
    # Everything that can be known before the server starts is checked here, so that a mistake is one
    # line and exit code 2, not a failed start-up in the log.
    check_can_start(settings)
    from service.server import serve as run_server

    run_server(settings)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    url: Annotated[str, typer.Option(help="The service's base URL.")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option(help="Model name in the repository.")] = "digits",
    version: Annotated[int | None, typer.Option(help="Model version (default: the highest ready).")] = None,
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
    multipart: Annotated[bool, typer.Option(help="Upload as multipart/form-data instead of JSON.")] = False,
) -> None:
    """Send images to a running `imgcls serve` and print the predicted classes."""
    from service.client import predict_files

    answer = predict_files(url, model, files, version=version, top_k=top_k, multipart=multipart)
    width = max(len(str(f)) for f in files)
    for path, prediction in zip(files, answer["predictions"], strict=True):
        ranked = "  ".join(f"{p['label']} {p['score']:.3f}" for p in prediction["top_k"])
        typer.echo(f"{path!s:<{width}}  {prediction['label']:<8} {ranked}")
    typer.echo(f"model {answer['model_name']} v{answer['model_version']}")


app.add_typer(bench_app, name="bench")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (tests swap it; a stored stream may be closed)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this directly).

    A usage error (unknown command or option, a bad value, a command's own UsageError) prints click's
    usage line, the error and any close matches, and returns 2; a bare group (``imgcls``, ``imgcls
    bench``) prints its help on stderr and returns 2, as click's ``no_args_is_help`` does.
    """
    # Our progress lines at INFO; libraries (the ONNX exporter's passes, tensorboard) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[_StderrHandler()], force=True)
    logging.getLogger("imgcls").setLevel(logging.INFO)
    try:
        # Without standalone mode, typer returns the code of a typer.Exit (--help: 0) instead of exiting.
        code = app(args=argv, prog_name="imgcls", standalone_mode=False)
    except ImgclsError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    # typer's classes, and the click package's for any code that raises those (their usage line is missing
    # then, their message is not).
    except (click.ClickException, click_package.ClickException) as exc:
        exc.show()
        return exc.exit_code
    except (typer.Abort, click_package.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except FloatingPointError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    if code == 130:  # typer turns a Ctrl-C inside a command into Exit(130)
        typer.echo("interrupted", err=True)
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())

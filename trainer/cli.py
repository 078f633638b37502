"""``imgcls data|models|train|cv|tune|lr-find|export|report``: the trainer's commands.

``imgcls.cli`` puts them on the ``imgcls`` command line beside the service's and the benchmarks', and
turns errors into exit codes there. Each command imports the training libraries only when it runs,
after checking the ``train`` extra is installed, so that a serving install still starts the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgcls.extras import require_extra
from imgcls.usage import click

__all__ = ["app"]

app = typer.Typer()
data_app = typer.Typer(help="Write the embedded datasets to disk.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# The options train, cv and lr-find share: the same recipe, overridden the same way.
_CONFIG_HELP = "YAML training config (see configs/)."
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help=_CONFIG_HELP)]
RequiredConfigOption = Annotated[Path, typer.Option("--config", "-c", help=_CONFIG_HELP)]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="SECTION.FIELD=VALUE",
        help="Override any config field (repeatable), e.g. optim.lr=0.01.",
    ),
]
DataOption = Annotated[Path | None, typer.Option(help="Image folder or CSV (data.path).")]


@data_app.command("digits")
def data_digits(
    out: Annotated[Path, typer.Option("--out", help="Folder to write <out>/<digit>/<n>.png into.")] = Path(
        "data/digits"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace the folder if it already has files.")] = False,
) -> None:
    """Write scikit-learn's handwritten digits (1,797 8x8 images, 10 classes) as an ImageFolder of PNGs."""
    require_extra("train", "imgcls data digits")
    from trainer.digits import write_digits

    counts = write_digits(out, overwrite=overwrite)
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {out}")


@data_app.command("digit-grid")
def data_digit_grid(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write <out>/images/<n>.png and <out>/labels.csv into.")
    ] = Path("data/digit_grid"),
    overwrite: Annotated[bool, typer.Option(help="Replace the folder if it already has files.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the grids' layout.")] = 0,
) -> None:
    """Write a multilabel dataset from the same digits: 16x16 grids of 2x2 cells, each a digit or empty;
    the labels are the digits present (labels.csv, ;-separated). For configs/digit_grid.yaml."""
    require_extra("train", "imgcls data digit-grid")
    from trainer.digits import write_digit_grid

    counts = write_digit_grid(out, overwrite=overwrite, seed=seed)
    images = sum(1 for _ in (out / "images").iterdir())
    typer.echo(
        f"wrote {images} images to {out}/images with labels in {out}/labels.csv "
        f"({', '.join(f'{k}: {v}' for k, v in counts.items())})"
    )


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
        require_extra("train", "imgcls models")
        from trainer.models import describe_models

        for name in describe_models():
            typer.echo(name)
        return
    from imgcls.errors import BundleError
    from imgcls.repository import ModelRepository

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
    context: typer.Context,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
    data: DataOption = None,
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
    report: Annotated[
        bool,
        typer.Option("--report/--no-report", help="Write the evaluation report into the run at the end."),
    ] = True,
    resume_if_exists: Annotated[
        bool,
        typer.Option(
            "--resume-if-exists",
            help="Continue the run named by --run-name if it has a checkpoint, else start it: for commands "
            "that are rerun as they are (a restarted pod).",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train in this many data-parallel processes on this machine (torchrun; one per GPU on "
            "CUDA). train.batch_size stays the global batch.",
        ),
    ] = 1,
) -> None:
    """Train a classifier on a folder of labelled images, evaluate it on the test split, and export a bundle.

    Precedence: config defaults < --config YAML < --set overrides < the named options.

    Example: imgcls train --config configs/digits.yaml --set augment.preset=strong --epochs 40

    Several processes: imgcls train --nproc 4 ... or torchrun --nproc-per-node 4 -m imgcls train ...
    """
    require_extra("train", "imgcls train")
    if nproc > 1:
        import os

        from trainer.launch import relaunch_with_torchrun

        if "WORLD_SIZE" in os.environ:
            raise click.UsageError("already started by torchrun (WORLD_SIZE is set): drop --nproc")

        raise typer.Exit(relaunch_with_torchrun(nproc, _without_nproc(context)))
    if resume is not None and resume_if_exists:
        raise click.UsageError("--resume names the run to continue; drop --resume-if-exists")
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
    result = run_training(resolved, config_name=config_name, resume=resume, resume_if_exists=resume_if_exists)
    if result is None:  # a rank other than 0 of a distributed run: rank 0 reports, exports and prints
        return
    accuracy = result.test_metrics["accuracy"]
    samples = result.test_metrics["samples"]
    if "map" in result.test_metrics:  # multilabel: accuracy is the share of whole label sets right
        typer.echo(
            f"test mAP: {result.test_metrics['map']:.4f}, micro F1 {result.test_metrics['f1_micro']:.4f}, "
            f"subset accuracy {accuracy:.4f} ({round(accuracy * samples)}/{samples} images)"
        )
    else:
        typer.echo(f"test accuracy: {accuracy:.4f} ({round(accuracy * samples)}/{samples} images)")
    typer.echo(f"run: {result.run_dir}")
    if resolved.export.enabled:
        exported = export_bundle(result.run_dir)
        typer.echo(
            f"bundle: {exported.bundle_dir} ({', '.join(a.path for a in exported.manifest.artifacts)})"
        )
    if report:
        from trainer.reporting.build import ReportOptions, write_report

        bundle = exported.bundle_dir if resolved.export.enabled else None
        page = write_report(result.run_dir, ReportOptions(bundle=bundle))
        typer.echo(f"report: {page}")
    check = result.baseline_check
    if check is not None and not check.passed:  # last, so it is the line a user reads
        typer.echo(
            f"WARNING: not clearly better than chance (test accuracy {check.accuracy:.4f}, always "
            f"{check.majority_class!r} {check.majority_accuracy:.4f}); causes and fixes in "
            f"{result.run_dir / 'metrics.json'} and above",
            err=True,
        )


def _without_nproc(context: typer.Context) -> list[str]:
    """``imgcls train``'s arguments as given, less --nproc: what each torchrun process runs."""
    args: list[str] = []
    for param in context.command.params:
        value = context.params.get(param.name)
        if param.name == "nproc" or value is None or value == param.default or not param.opts:
            continue
        if param.is_flag:
            if param.secondary_opts and not value:
                args.append(param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    return args


@app.command()
def cv(
    config: ConfigOption = None,
    folds: Annotated[int, typer.Option("--folds", "-k", min=2, help="Number of folds (K).")] = 5,
    overrides: OverridesOption = None,
    data: DataOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the folds' runs and the results (default: RUNS_DIR/<config name>-cv<K>). "
            "Rerun with the same folder to continue where it stopped."
        ),
    ] = None,
) -> None:
    """Cross-validate the recipe: K stratified folds (group-aware with data.group_column), one full
    training run per fold on the other folds, tested on its own; per-fold test metrics, mean ± sd and
    a 95 % interval in cv.json and cv.md. A rerun skips finished folds and resumes an interrupted one.

    Example: imgcls cv --config configs/digits.yaml --folds 5
    """
    require_extra("train", "imgcls cv")
    from trainer.config import load_config
    from trainer.cv import CV_METRICS, cross_validate

    resolved = load_config(config, overrides, {"data.path": data} if data is not None else None)
    config_name = config.stem if config is not None else "run"
    out_dir = out if out is not None else resolved.runs_dir / f"{config_name}-cv{folds}"
    result = cross_validate(resolved, num_folds=folds, out_dir=out_dir, config_name=config_name)
    skipped = len(result.folds) - len(result.trained)
    if skipped:
        typer.echo(f"{skipped} fold(s) had finished before and were not retrained")
    for key, name in CV_METRICS:
        if key in result.summary:
            row = result.summary[key]
            typer.echo(
                f"{name}: {row['mean']:.4f} ± {row['sd']:.4f} (95 % interval {row['ci95_low']:.4f} to "
                f"{row['ci95_high']:.4f}; folds: {', '.join(f'{r[key]:.4f}' for r in result.folds)})"
            )
    typer.echo(f"results: {result.markdown_path}, {result.json_path}")


@app.command()
def tune(
    config: RequiredConfigOption,
    space: Annotated[
        Path,
        typer.Option(help="YAML search space: config fields and their ranges or choices (docs/training.md)."),
    ],
    trials: Annotated[
        int,
        typer.Option(min=1, help="The study's total trials: a rerun with more runs only the missing ones."),
    ],
    study: Annotated[
        str | None,
        typer.Option(help="Study name (default: <config name>-tune); workers on one study share it."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            envvar="IMGCLS_TUNE_STORAGE",
            help="Optuna storage URL, e.g. postgresql+psycopg://user:pw@host/db for several workers "
            "(default: SQLite in the study folder).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Study folder: trials' runs, summary.md, importance.png, best.yaml (default: RUNS_DIR/<study>)."
        ),
    ] = None,
    overrides: OverridesOption = None,
    data: DataOption = None,
    heartbeat_s: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds between a running trial's heartbeats; a trial silent for twice this is failed and rerun.",
        ),
    ] = 60,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the TPE sampler (one worker's choices repeat).")
    ] = None,
) -> None:
    """Search hyperparameters with Optuna: TPE over the space's fields, each trial a training run judged
    on validation, poor trials pruned between epochs; resumable, and several workers can share a study.

    Example: imgcls tune --config configs/digits.yaml --space configs/digits_space.yaml --trials 20
    """
    require_extra("train", "imgcls tune")
    from trainer.tune import TuneRequest
    from trainer.tune import tune as run_search

    study_name = study or f"{config.stem}-tune"
    result = run_search(
        TuneRequest(
            config_path=config,
            space_path=space,
            trials=trials,
            study_name=study_name,
            overrides=tuple(overrides or ()),
            values=(("data.path", data),) if data is not None else (),
            storage=storage,
            out_dir=out,
            heartbeat_s=heartbeat_s,
            seed=seed,
        )
    )
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.states.items()))
    typer.echo(f"study {study_name}: {states}")
    if result.best_trial is not None:
        typer.echo(f"best: trial {result.best_trial}, val {result.metric} {result.best_value:.4f}")
        typer.echo(f"best config: {result.best_config} (imgcls train --config {result.best_config})")
    else:
        typer.echo("no trial has finished yet", err=True)
    typer.echo(f"summary: {result.study_dir / 'summary.md'}")


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
    require_extra("train", "imgcls export")
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
            f"{artifact.path} ({artifact.precision}): parity on {parity.samples} images: "
            f"{'label-set' if parity.agreement_on == 'label_set' else 'top-1'} agreement "
            f"{parity.top1_agreement:.4f}, max |{'sigmoid' if parity.agreement_on else 'softmax'} diff| "
            f"{parity.max_abs_diff:.1e}"
        )
        if parity.accuracy_change is not None and artifact.precision != "fp32":
            line += f", accuracy {parity.accuracy:.4f} ({parity.accuracy_change:+.4f} vs eager)"
        if not parity.passed:
            line += " - FAILED parity: kept for speed tests only, the service will not choose it"
        typer.echo(line)
    typer.echo(f"bundle: {result.bundle_dir}")


@app.command()
def report(
    run: Annotated[Path, typer.Option("--run", help="The run folder (runs/<name>) to report on.")],
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Review this bundle's weights and temperature (models/NAME/VERSION) instead of the run's."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate on this labelled folder or CSV (a new site, a new camera) instead of a split."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="The run's split to evaluate: train, val or test.")] = "test",
    compare: Annotated[
        Path | None, typer.Option(help="Another run with a report: every metric and class F1 side by side.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/report).")] = None,
    max_images: Annotated[
        int, typer.Option(min=1, help="At most this many images for robustness and the mistakes gallery.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap, the subsets and the corruptions.")] = 0,
) -> None:
    """Write the evaluation report: metrics with bootstrap intervals, per class, confusion, calibration,
    the most confident mistakes with Grad-CAM, robustness to corruptions, subgroups, baselines, an
    optional comparison, and a model card. index.html opens from disk; metrics.json is the same data.

    Example: imgcls report --run runs/digits-20261203-101500 --compare runs/digits-20261201-090000
    """
    require_extra("train", "imgcls report")
    from trainer.reporting.build import ReportOptions, write_report

    page = write_report(
        run,
        ReportOptions(
            bundle=bundle, data=data, split=split, compare=compare, out=out, max_images=max_images, seed=seed
        ),
    )
    typer.echo(f"report: {page}")
    typer.echo(f"data: {page.parent / 'metrics.json'}, model card: {page.parent / 'model_card.md'}")


@app.command("lr-find")
def lr_find(
    config: RequiredConfigOption,
    overrides: OverridesOption = None,
    data: DataOption = None,
    start_lr: Annotated[float, typer.Option(help="The sweep's first learning rate.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="The sweep's last learning rate.")] = 10.0,
    steps: Annotated[
        int, typer.Option(help="Training batches in the sweep, one rate each (the split repeats if needed).")
    ] = 100,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: runs_dir/lr-find-<config name>-<timestamp>)."),
    ] = None,
    write_config: Annotated[
        bool,
        typer.Option("--write-config", help="Write the suggested rate into the config file (optim.lr)."),
    ] = False,
) -> None:
    """Find a learning rate with the range test (Smith 2017; fastai's lr_find): train a throw-away
    copy of the model for --steps batches while the rate grows exponentially from --start-lr to
    --end-lr, and suggest where the smoothed loss falls longest (fastai's valley). Writes
    lr_find.csv, lr_find.json and lr_find.png; nothing of a run.

    Example: imgcls lr-find --config configs/digits.yaml --write-config
    """
    require_extra("train", "imgcls lr-find")
    from datetime import datetime

    from trainer.config import load_config
    from trainer.config_edit import format_lr, write_lr_into_config
    from trainer.lr_find import find_lr, write_outputs

    resolved = load_config(config, overrides, {"data.path": data} if data is not None else None)
    result = find_lr(resolved, start_lr=start_lr, end_lr=end_lr, num_steps=steps)
    out_dir = out or resolved.runs_dir / f"lr-find-{config.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = write_outputs(result, out_dir)
    stopped = {
        "completed": "all steps run",
        "diverged": "stopped: loss diverged",
        "non_finite": "stopped: loss not finite",
    }
    typer.echo(
        f"lr-find: {result.steps} steps, lr {result.lrs[0]:.2g} to {result.lrs[-1]:.2g} "
        f"({stopped[result.stop_reason]}); the config has optim.lr={format_lr(result.config_lr)}"
    )
    for name, lr in result.suggestions.as_dict().items():
        if lr is not None:
            typer.echo(f"  {name:<9} {format_lr(lr):>9}" + ("  <- suggested" if name == "valley" else ""))
    typer.echo(f"wrote: {paths['csv']}, {paths['json']}, {paths['png']}")
    suggested = format_lr(result.suggested_lr)
    if write_config:
        write_lr_into_config(config, result.suggested_lr)
        typer.echo(f"written into {config}: optim.lr={suggested}")
        if overrides:  # the rate fits the overridden recipe, which the file does not hold
            typer.echo(
                f"note: found with --set {' '.join(overrides)}; the file keeps its own values for those"
            )
    else:
        typer.echo(
            f"to use it: rerun with --write-config, or train with --set optim.lr={suggested} "
            "(a starting point: the peak rate after warm-up)"
        )

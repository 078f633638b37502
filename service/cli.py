"""``imgcls serve|predict|feedback``: the service's commands.

``imgcls.cli`` puts them on the ``imgcls`` command line and turns errors into exit codes there.
``serve`` validates the settings and checks what can be checked before the server starts, so a
mistake is one line and exit code 2, not a failed start-up in the log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from imgcls.usage import click
from service.feedback import cli as feedback_cli

__all__ = ["app"]

app = typer.Typer()
app.add_typer(feedback_cli.app)  # feedback list|export


@app.command()
def serve(
    model_repo: Annotated[
        Path | None, typer.Option(help="Model repository: <repo>/<name>/<version>/manifest.json.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="auto, or the export format to serve: torchscript, onnx, onnx-int8 or tensorrt (default auto)."
        ),
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

    from imgcls.errors import ConfigError, describe_validation_errors
    from service.preflight import check_can_start
    from service.settings import Settings

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
        problems = describe_validation_errors(exc.errors(), name=setting_name)
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
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image files; with --bundle also a folder, a CSV with a path column, or a list file; "
            "'merge PART...' joins shard outputs into --out.",
            show_default=False,
        ),
    ],
    url: Annotated[str, typer.Option(help="The service's base URL.")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option(help="Model name in the repository.")] = "digits",
    version: Annotated[int | None, typer.Option(help="Model version (default: the highest ready).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show (or write) per image.")] = 3,
    multipart: Annotated[bool, typer.Option(help="Upload as multipart/form-data instead of JSON.")] = False,
    bundle: Annotated[
        Path | None,
        typer.Option(help="Predict in-process with this bundle (models/NAME/VERSION), no server: bulk mode."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Bulk mode and merge: the output file, .csv, .jsonl or .parquet.")
    ] = None,
    output_format: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or parquet (default: from --out's suffix).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Bulk mode: images per batch (bench runtimes prints the best).")
    ] = 16,
    device: Annotated[str, typer.Option(help="Bulk mode: auto, cpu or cuda.")] = "auto",
    runtime: Annotated[str, typer.Option(help="Bulk mode: auto, or an export format to run.")] = "auto",
    decode_threads: Annotated[
        int | None, typer.Option(min=1, help="Bulk mode: decode threads (default: half the cores).")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Bulk mode: I/N predicts every N-th input from the I-th (0-based); N alone takes I from "
            "JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)."
        ),
    ] = None,
) -> None:
    """Classify images: send them to a running `imgcls serve` (in requests the server accepts), or with
    --bundle predict a folder, CSV or list in-process and write every row to --out (resumable: a rerun
    skips rows already written; unreadable files get an error row).

    Examples: imgcls predict photo.jpg --url http://127.0.0.1:8000 --model digits
              imgcls predict data/digits --bundle models/digits/1 --out predictions.csv --shard 0/4
              imgcls predict merge part-0.csv part-1.csv --out predictions.csv
    """
    if inputs and str(inputs[0]) == "merge" and bundle is None:
        _merge(inputs[1:], out, output_format)
        return
    if bundle is not None:
        _predict_bulk(
            inputs, bundle, out, output_format, top_k, batch_size, device, runtime, decode_threads, shard
        )
        return
    from service.client import predict_files

    answer = predict_files(url, model, inputs, version=version, top_k=top_k, multipart=multipart)
    width = max(len(str(f)) for f in inputs)
    for path, prediction in zip(inputs, answer["predictions"], strict=True):
        ranked = "  ".join(f"{p['label']} {p['score']:.3f}" for p in prediction["top_k"])
        if "labels" in prediction:  # a multilabel model: every label above its threshold, maybe none
            chosen = ";".join(p["label"] for p in prediction["labels"]) or "(none)"
            typer.echo(f"{path!s:<{width}}  {chosen:<12} {ranked}")
        else:
            typer.echo(f"{path!s:<{width}}  {prediction['label']:<8} {ranked}")
    typer.echo(f"model {answer['model_name']} v{answer['model_version']}")


def _merge(parts: list[Path], out: Path | None, output_format: str | None) -> None:
    from service.bulk import merge_outputs

    if not parts or out is None:
        raise click.UsageError("merge needs the shard outputs and --out, e.g. merge part-*.csv --out all.csv")
    rows = merge_outputs(parts, out, output_format)
    typer.echo(f"merged {rows} rows from {len(parts)} file(s) into {out}")


def _predict_bulk(
    inputs: list[Path],
    bundle: Path,
    out: Path | None,
    output_format: str | None,
    top_k: int,
    batch_size: int,
    device: str,
    runtime: str,
    decode_threads: int | None,
    shard_text: str | None,
) -> None:
    from tqdm import tqdm

    from service.bulk import list_inputs, parse_shard, predict_bulk

    if out is None:
        raise click.UsageError("--bundle writes its predictions to --out FILE (.csv, .jsonl or .parquet)")
    listed = list_inputs(inputs[0]) if len(inputs) == 1 and not _is_image_file(inputs[0]) else sorted(inputs)
    shard = parse_shard(shard_text)
    chosen = shard.take(listed)
    with tqdm(total=len(chosen), unit="image", desc="predict", disable=None, dynamic_ncols=True) as bar:
        result = predict_bulk(
            bundle,
            chosen,
            out,
            fmt=output_format,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            runtime=runtime,
            decode_threads=decode_threads,
            progress=bar.update,
        )
    part = f" (shard {shard.index}/{shard.count} of {len(listed)})" if shard.count > 1 else ""
    typer.echo(
        f"{result.written} images predicted with {result.runtime}{part} in {result.seconds:.1f} s "
        f"({result.images_per_second:.0f} images/s); {result.skipped} already in {out}; "
        f"{result.unreadable} unreadable (their rows say why)"
    )
    typer.echo(f"predictions: {result.out}")


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() not in (".csv", ".txt", ".lst", ".list")

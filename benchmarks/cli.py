"""``imgcls bench`` (load, runtimes, batching, compare, pipeline) and ``imgcls evaluate``.

``imgcls.cli`` puts them on the ``imgcls`` command line and turns errors into exit codes there.
The measurements themselves live in the modules beside this one; this module parses options,
picks the images, and writes the result folders. ``evaluate`` is here because it needs both halves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgcls.errors import describe_error
from imgcls.extras import require_extra
from imgcls.usage import click

if TYPE_CHECKING:
    from imgcls.manifest import Manifest

__all__ = ["app", "bench_app"]

bench_app = typer.Typer(
    help="Measure: load-test a service, time runtimes in-process, compare batching settings and peer servers.",
    no_args_is_help=True,
)
# What imgcls.cli merges into the command line: `imgcls evaluate` and the `imgcls bench` group.
app = typer.Typer()
app.add_typer(bench_app, name="bench")

_IMAGES_HELP = "A folder of images to cycle through."
_JPEG_HELP = "Synthetic photo-like JPEGs of this size instead, e.g. 320x240."
_PROTOCOL_HELP = (
    "v1, v1-multipart, v2, v2-binary (image bytes) or v2-pixels (the images as preprocessed FP32 "
    "tensors in binary: no decoding on the server)."
)


def _bench_images(images: Path | None, jpeg: str | None, default: str) -> tuple[list[bytes], str]:
    """The request images and a description of them, from --images or --jpeg (else ``default``)."""
    from benchmarks.images import digits_images, folder_images, parse_size, synthetic_jpegs

    if images is not None and jpeg is not None:
        raise click.UsageError("give --images or --jpeg, not both")
    if images is not None:
        try:
            return folder_images(images), f"files from {images}"
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--images") from None
    spec = jpeg or (None if default == "digits" else default)
    if spec is None:
        return digits_images(), "scikit-learn digits, 8x8 PNG"
    try:
        width, height = parse_size(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--jpeg") from None
    return synthetic_jpegs(16, width, height), f"synthetic {width}x{height} JPEG (quality 90)"


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of positive integers", param_hint=option
        )
    return values


@bench_app.command("load")
def bench_load(
    url: Annotated[
        str, typer.Option(help="The service's base URL (any imgcls, local or remote).")
    ] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option(help="Model name.")] = "digits",
    protocol: Annotated[str, typer.Option(help=_PROTOCOL_HELP)] = "v1",
    concurrency: Annotated[
        str, typer.Option(help="Closed loop: comma-separated client counts, e.g. 1,8,32.")
    ] = "1,8,32",
    rate: Annotated[
        float | None, typer.Option(help="Open loop instead: Poisson arrivals at this many requests/s.")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds measured per step.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds of load before measuring each step.")] = 2.0,
    images_per_request: Annotated[int, typer.Option(help="Images in each request.")] = 1,
    images: Annotated[Path | None, typer.Option(help=_IMAGES_HELP + " Default: the embedded digits.")] = None,
    jpeg: Annotated[str | None, typer.Option(help=_JPEG_HELP)] = None,
    name: Annotated[str, typer.Option(help="Result folder suffix.")] = "load",
    out: Annotated[Path, typer.Option(help="Where results go.")] = Path("benchmarks/results"),
) -> None:
    """Load-test an imgcls URL (closed or open loop); write JSON, Markdown and a latency plot."""
    from datetime import date

    from benchmarks.load import (
        PROTOCOLS,
        build_payloads,
        model_input_shape,
        run,
        run_closed_loop,
        run_open_loop,
        write_report,
    )
    from benchmarks.machine import machine, result_folder

    if protocol not in PROTOCOLS:
        raise click.BadParameter(f"{protocol!r}; valid: {', '.join(PROTOCOLS)}", param_hint="--protocol")
    steps = _int_list(concurrency, "--concurrency")
    pictures, described = _bench_images(images, jpeg, "digits")
    pixel_shape = None
    if protocol == "v2-pixels":
        try:
            pixel_shape = model_input_shape(url, model)
        except Exception as exc:  # connection refused, 404 for an unknown model, no pixels input
            raise click.UsageError(
                f"v2-pixels needs the model's input shape from {url}/v2/models/{model}: {describe_error(exc)}; "
                "start the server first and check --url and --model"
            ) from None
        pictures, described = _as_pixels(pictures, described, pixel_shape)
    payloads = build_payloads(protocol, model, pictures, images_per_request, pixel_shape=pixel_shape)
    results = []
    if rate is not None:
        results.append(run(run_open_loop(url, payloads, rate, warmup, duration)))
    else:
        for clients in steps:
            results.append(run(run_closed_loop(url, payloads, clients, warmup, duration)))
    summaries = [result.summary() for result in results]
    for summary in summaries:
        typer.echo(
            f"{summary['mode']:>16}  {summary['requests_per_s']:>8} req/s  {summary['images_per_s']:>8} img/s  "
            f"p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  errors {sum(summary['errors'].values())}  "
            f"client CPU {summary['client_cpu_percent']}%"
        )
    meta = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "url": url,
        "model": model,
        "protocol": protocol,
        "images_per_request": images_per_request,
        "images": described,
        "warmup_s": warmup,
        "duration_s": duration,
    }
    folder = write_report(summaries, meta, result_folder(out, name))
    typer.echo(f"wrote {folder}")


@bench_app.command("runtimes")
def bench_runtimes_command(
    bundle: Annotated[Path, typer.Option(help="Bundle folder models/NAME/VERSION.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,2,4,8,16,32,64",
    seconds: Annotated[float, typer.Option(help="Seconds timed per runtime and batch size.")] = 2.0,
    ceiling_seconds: Annotated[float, typer.Option(help="Seconds per pipeline setting.")] = 4.0,
    intra_op_threads: Annotated[
        int | None, typer.Option(help="Runtime threads (default: the runtime's own, all cores).")
    ] = None,
    images: Annotated[Path | None, typer.Option(help=_IMAGES_HELP)] = None,
    jpeg: Annotated[str | None, typer.Option(help=_JPEG_HELP + " Default: 320x240.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Result folder suffix (default: runtimes-MODEL-DEVICE).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where results go.")] = Path("benchmarks/results"),
) -> None:
    """Time every runtime for a bundle in-process (batch 1..64), preprocessing per decoder, and the
    in-process ceiling (decode + preprocess + inference with all cores) the service is measured against."""
    from datetime import date

    from benchmarks.machine import machine, result_folder
    from benchmarks.runtimes import bench_runtimes, write_runtimes_report
    from imgcls.manifest import load_manifest

    load_manifest(bundle)  # a clear error before any timing
    pictures, described = _bench_images(images, jpeg, "320x240")
    document = bench_runtimes(
        bundle,
        pictures,
        device=device,
        batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        seconds=seconds,
        ceiling_seconds=ceiling_seconds,
        intra_op_threads=intra_op_threads,
        log=typer.echo,
    )
    document = {"date": date.today().isoformat(), "machine": machine(), "images": described, **document}
    folder = write_runtimes_report(
        document, result_folder(out, name or f"runtimes-{document['model']}-{document['device']}")
    )
    best = document["ceiling"]
    typer.echo(
        f"in-process ceiling: {best['images_per_s']} images/s ({best['runtime']}, {best['intra_op_threads']} runtime "
        f"threads, {best['decode_threads']} decode threads, batch <= {best['batch_size']}); single image p50 "
        f"{document['single_image_latency_ms']['p50']} ms"
    )
    typer.echo(f"wrote {folder}")


def _single_model_repo(bundle: Path) -> tuple[Path, Manifest]:
    """A temporary model repository holding only ``bundle`` (a link), so a started server loads nothing
    else; and the bundle's manifest."""
    import atexit
    import shutil
    import tempfile

    from imgcls.manifest import load_manifest

    manifest = load_manifest(bundle)
    repo = Path(tempfile.mkdtemp(prefix="imgcls-bench-repo-"))
    atexit.register(shutil.rmtree, repo, ignore_errors=True)  # the link only: the bundle stays
    (repo / manifest.name).mkdir()
    (repo / manifest.name / str(manifest.version)).symlink_to(bundle.resolve(), target_is_directory=True)
    return repo, manifest


def _as_pixels(pictures: list[bytes], described: str, shape: tuple[int, int, int]) -> tuple[list[bytes], str]:
    from benchmarks.images import pixel_tensors

    channels, height, width = shape
    return pixel_tensors(pictures, shape), f"{described}, sent as FP32 pixels {channels}x{height}x{width}"


def _server_payloads(
    protocol: str, model: str, images: Path | None, jpeg: str | None, input_shape: tuple[int, int, int]
):
    from benchmarks.load import PROTOCOLS, build_payloads

    if protocol not in PROTOCOLS:
        raise click.BadParameter(f"{protocol!r}; valid: {', '.join(PROTOCOLS)}", param_hint="--protocol")
    pictures, described = _bench_images(images, jpeg, "320x240")
    if protocol == "v2-pixels":
        pictures, described = _as_pixels(pictures, described, input_shape)
    payloads = build_payloads(protocol, model, pictures, 1, pixel_shape=input_shape)
    return payloads, pictures, described


@bench_app.command("batching")
def bench_batching(
    bundle: Annotated[Path, typer.Option(help="Bundle folder models/NAME/VERSION.")],
    settings: Annotated[
        str,
        typer.Option(
            help="Comma-separated MAX_BATCH_SIZE[@MAX_QUEUE_DELAY_MS[fixed]]; 1 is batching off; "
            "'fixed' waits whether or not more images are being decoded (Triton's wait).",
        ),
    ] = "1,8@5,32@0,32@5,32@5fixed",
    concurrency: Annotated[int, typer.Option(help="Closed-loop clients.")] = 32,
    protocol: Annotated[str, typer.Option(help=_PROTOCOL_HELP)] = "v1",
    duration: Annotated[float, typer.Option(help="Seconds measured per setting.")] = 15.0,
    warmup: Annotated[float, typer.Option(help="Seconds of load before measuring.")] = 3.0,
    images: Annotated[Path | None, typer.Option(help=_IMAGES_HELP)] = None,
    jpeg: Annotated[str | None, typer.Option(help=_JPEG_HELP + " Default: 320x240.")] = None,
    name: Annotated[str | None, typer.Option(help="Result folder suffix (default: batching-MODEL).")] = None,
    out: Annotated[Path, typer.Option(help="Where results go.")] = Path("benchmarks/results"),
) -> None:
    """Start `imgcls serve` with batching off and with each setting, drive the same load, tabulate."""
    from datetime import date

    from benchmarks.batching import parse_settings, run_setting
    from benchmarks.machine import machine, result_folder
    from benchmarks.report import LOAD_COLUMNS, machine_line, write_table_report

    try:
        chosen = parse_settings(settings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--settings") from None
    repo, manifest = _single_model_repo(bundle)
    model = manifest.name
    payloads, _, described = _server_payloads(protocol, model, images, jpeg, manifest.input.shape)
    rows = []
    for setting in chosen:
        row = run_setting(
            setting, repo, payloads, concurrency=concurrency, warmup_s=warmup, duration_s=duration
        )
        rows.append(row)
        typer.echo(
            f"{row['setting']:<50} {row['requests_per_s']:>8} req/s  p50 {row['p50_ms']} ms  "
            f"p99 {row['p99_ms']} ms  mean batch {row['mean_batch']}  errors {sum(row['errors'].values())}"
        )
    document = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "bundle": str(bundle),
        "model": model,
        "protocol": protocol,
        "images": described,
        "concurrency": concurrency,
        "warmup_s": warmup,
        "duration_s": duration,
        "rows": rows,
    }
    folder = write_table_report(
        result_folder(out, name or f"batching-{model}"),
        document,
        title=f"Dynamic batching: {model}, {concurrency} closed-loop clients over {protocol}",
        intro=[
            f"{machine_line(document)}. Images: {described}, one per request. Each setting starts a fresh "
            f"`imgcls serve`; warm-up {warmup} s, then {duration} s measured. Mean batch is what the service "
            "formed (its imgcls_batch_size histogram, warm-up included)."
        ],
        label_key="setting",
        columns=(("setting", "setting"), *LOAD_COLUMNS, ("mean batch", "mean_batch")),
    )
    typer.echo(f"wrote {folder}")


@bench_app.command("compare")
def bench_compare(
    bundle: Annotated[Path, typer.Option(help="Bundle folder models/NAME/VERSION.")],
    concurrency: Annotated[str, typer.Option(help="Comma-separated closed-loop client counts.")] = "1,32",
    max_batch_size: Annotated[
        int, typer.Option(help="Batching limit, for imgcls and every batching peer.")
    ] = 32,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="Batch wait, for imgcls and every batching peer.")
    ] = 5.0,
    duration: Annotated[float, typer.Option(help="Seconds measured per server and step.")] = 15.0,
    warmup: Annotated[float, typer.Option(help="Seconds of load before measuring.")] = 3.0,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(help="Runtime threads for every server (default: what `imgcls serve` picks here)."),
    ] = None,
    ceiling: Annotated[
        bool, typer.Option("--ceiling/--no-ceiling", help="Measure the in-process ceiling first.")
    ] = True,
    images: Annotated[Path | None, typer.Option(help=_IMAGES_HELP)] = None,
    jpeg: Annotated[str | None, typer.Option(help=_JPEG_HELP + " Default: 320x240.")] = None,
    name: Annotated[str | None, typer.Option(help="Result folder suffix (default: compare-MODEL).")] = None,
    out: Annotated[Path, typer.Option(help="Where results go.")] = Path("benchmarks/results"),
) -> None:
    """Run imgcls and each peer server (plain FastAPI, LitServe, Ray Serve; see benchmarks/peers/) one
    after another on the same bundle and load; write one table. Peers need `pip install -e .[peers]`."""
    from datetime import date

    from benchmarks.compare import run_server, specs
    from benchmarks.machine import machine, result_folder
    from benchmarks.report import LOAD_COLUMNS, machine_line, write_table_report
    from service.settings import Settings

    steps = _int_list(concurrency, "--concurrency")
    repo, manifest = _single_model_repo(bundle)
    model = manifest.name
    payloads, pictures, described = _server_payloads("v1", model, images, jpeg, manifest.input.shape)
    reference: dict = {}
    if ceiling:
        from benchmarks.ceiling import measure_ceiling

        reference = measure_ceiling(bundle, pictures, seconds=3.0, log=typer.echo)
        typer.echo(
            f"in-process ceiling {reference['ceiling']['images_per_s']} images/s; single image p50 "
            f"{reference['single_image_latency_ms']['p50']} ms"
        )
    rows, skipped = [], {}
    threads = intra_op_threads or Settings().for_model(model).intra_op_threads
    for spec, label, port, reason in specs(
        repo,
        model,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        intra_op_threads=threads,
    ):
        if spec is None:
            skipped[label] = reason
            typer.echo(f"skipped {label}: {reason}")
            continue
        for clients in steps:
            row = {"server": label, "concurrency": clients}
            row.update(
                run_server(spec, port, payloads, concurrency=clients, warmup_s=warmup, duration_s=duration)
            )
            if reference:
                row["share_of_ceiling"] = round(row["images_per_s"] / reference["ceiling"]["images_per_s"], 3)
            rows.append(row)
            typer.echo(
                f"{label:<24} c={clients:<4} {row['requests_per_s']:>8} req/s  p50 {row['p50_ms']} ms  "
                f"p99 {row['p99_ms']} ms  errors {sum(row['errors'].values())}"
            )
    for row in rows:
        row["label"] = f"{row['server']} c={row['concurrency']}"
    document = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "bundle": str(bundle),
        "model": model,
        "protocol": "v1",
        "images": described,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "intra_op_threads": threads,
        "warmup_s": warmup,
        "duration_s": duration,
        "reference": reference,
        "skipped": skipped,
        "rows": rows,
    }
    intro = [
        f"{machine_line(document)}. Images: {described}, one per request, v1 JSON (base64). Same bundle, "
        f"preprocessing, runtime ({threads} runtime thread(s)) and load for every server, one after another; "
        f"batching servers get max_batch_size {max_batch_size}, max_queue_delay_ms {max_queue_delay_ms:g}. "
        f"Warm-up {warmup} s, then {duration} s measured."
    ]
    if reference:
        best = reference["ceiling"]
        intro.append(
            f"\nIn-process ceiling in this run: **{best['images_per_s']:,} images/s** ({best['runtime']} with "
            f"{best['intra_op_threads'] or 'its default'} thread(s), {best['decode_threads']} decode threads, "
            f"batches up to {best['batch_size']}); one image decoded "
            f"and inferred in-process: p50 {reference['single_image_latency_ms']['p50']} ms."
        )
    folder = write_table_report(
        result_folder(out, name or f"compare-{model}"),
        document,
        title=f"imgcls and peers: {model} ({document['images']})",
        intro=intro,
        label_key="label",
        columns=(
            ("server", "server"),
            ("clients", "concurrency"),
            *LOAD_COLUMNS,
            ("of ceiling", "share_of_ceiling"),
        ),
        outro=[f"Not run: {label}: {reason}." for label, reason in skipped.items()],
    )
    typer.echo(f"wrote {folder}")


@bench_app.command("pipeline")
def bench_pipeline(
    bundle: Annotated[Path, typer.Option(help="Bundle folder models/NAME/VERSION.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_sizes: Annotated[
        str, typer.Option(help="In-process batch sizes; the best one becomes the server's max batch.")
    ] = "1,8,32,64",
    seconds: Annotated[float, typer.Option(min=0.01, help="Seconds timed per runtime and batch size.")] = 2.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop HTTP clients.")] = 64,
    images_per_request: Annotated[int, typer.Option(min=1, help="Images in each request.")] = 1,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds measured per input kind.")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Seconds of load before measuring.")] = 3.0,
    decode_threads: Annotated[
        int | None, typer.Option(min=1, help="The server's decode threads (default: as `imgcls serve`).")
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(min=1, help="Runtime threads, in-process and served (default: as `imgcls serve`)."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help=_IMAGES_HELP)] = None,
    jpeg: Annotated[str | None, typer.Option(help=_JPEG_HELP + " Default: 320x240.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Result folder suffix (default: pipeline-MODEL-DEVICE).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where results go.")] = Path("benchmarks/results"),
) -> None:
    """The serving pipeline against its runtime: the served runtime's best in-process images/s and its
    speed-up over eager FP32, then `imgcls serve` over HTTP with preprocessed FP32 pixels (serving
    overhead alone) and with JPEG bytes, each with how busy the decode threads and the runtime were and
    which stage bounds throughput."""
    from datetime import date

    from benchmarks.machine import machine, result_folder
    from benchmarks.pipeline import BatchSizeError, run_pipeline, write_pipeline_report
    from service.runtimes import resolve_device
    from service.settings import default_decode_threads, default_intra_op_threads

    decode_threads = decode_threads or default_decode_threads()
    if device not in ("auto", "cpu", "cuda"):
        raise click.BadParameter(f"{device!r}; use auto, cpu or cuda", param_hint="--device")
    repo, manifest = _single_model_repo(bundle)
    pictures, described = _bench_images(images, jpeg, "320x240")
    device = resolve_device(device)
    try:
        document = run_pipeline(
            bundle,
            repo,
            pictures,
            device=device,
            batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
            seconds=seconds,
            concurrency=concurrency,
            images_per_request=images_per_request,
            warmup_s=warmup,
            duration_s=duration,
            decode_threads=decode_threads,
            intra_op_threads=intra_op_threads or default_intra_op_threads(decode_threads),
            log=typer.echo,
        )
    except BatchSizeError as exc:
        raise click.BadParameter(str(exc), param_hint="--batch-sizes") from None
    document = {"date": date.today().isoformat(), "machine": machine(), "images": described, **document}
    folder = write_pipeline_report(document, result_folder(out, name or f"pipeline-{manifest.name}-{device}"))
    typer.echo(f"wrote {folder}")


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

    require_extra("train", "imgcls evaluate")  # it scores the run's eager model too
    from benchmarks.evaluate import evaluate_bundle
    from imgcls.manifest import load_manifest

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

"""Predictions beside explanations: does explaining slow down predicting, and does memory stay flat?

    python -m benchmarks.mixed_load --prediction-clients 32 --explain-clients 2 --alone-s 30 --mixed-s 120

Starts its own `imgcls serve` over models/ (digits from `make demo`), then measures three phases in
a row on kept-alive connections: predictions alone, predictions with explanations beside them (the
two-minute soak, the server's RSS sampled every ``--window-s``), and predictions alone again (the
baseline is the mean of the two, so drift over the run does not count as interference). Each client
sends its next request when the last one answers; every answer is checked. Writes
benchmarks/results/<date>-<host>-mixed-load/ with results.json and results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from benchmarks.http1 import Connection, Target, encode_request
from benchmarks.machine import machine, result_folder
from benchmarks.servers import free_port, imgcls_server, running
from benchmarks.soak import rss_bytes
from benchmarks.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT_BUDGET = 0.15  # the bar: prediction throughput within 15 % of predictions alone
P99_BUDGET = 0.20  # and prediction p99 within 20 %


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self, seconds: float) -> dict:
        taken = sorted(self.latencies_s)
        return {
            "requests": len(taken),
            "rps": round(len(taken) / seconds, 1),
            "p50_ms": round(percentile(taken, 0.50) * 1000, 2) if taken else None,
            "p99_ms": round(percentile(taken, 0.99) * 1000, 2) if taken else None,
            "errors": dict(self.errors),
        }


async def _client(connection: Connection, raw: bytes, key: str, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = await connection.send(raw)
        except (OSError, asyncio.IncompleteReadError) as exc:
            tally.errors[type(exc).__name__] = tally.errors.get(type(exc).__name__, 0) + 1
            await asyncio.sleep(0.1)
            continue
        elapsed = time.perf_counter() - started
        ok = response.status == 200 and len(json.loads(response.body).get(key, [])) == 1
        if ok:
            tally.latencies_s.append(elapsed)
        else:
            tally.errors[str(response.status)] = tally.errors.get(str(response.status), 0) + 1


async def phase(
    url: str,
    requests: dict[str, bytes],
    prediction_clients: int,
    explain_clients: int,
    seconds: float,
    window_s: float,
    pid: int,
) -> dict:
    """One measured phase; RSS and per-window throughput are sampled as it runs."""
    target = Target.parse(url)
    predictions, explanations = Tally(), Tally()
    stop = asyncio.Event()
    clients = [
        _client(Connection(target), requests["predict"], "predictions", predictions, stop)
        for _ in range(prediction_clients)
    ] + [
        _client(Connection(target), requests["explain"], "explanations", explanations, stop)
        for _ in range(explain_clients)
    ]
    windows: list[dict] = []

    async def sampler() -> None:
        began = time.monotonic()
        seen = 0
        while not stop.is_set():
            await asyncio.sleep(window_s)
            done = len(predictions.latencies_s)
            windows.append(
                {
                    "t_s": round(time.monotonic() - began, 1),
                    "rss_mib": round(rss_bytes(pid) / 2**20, 1),
                    "prediction_rps": round((done - seen) / window_s, 1),
                    "explanations": len(explanations.latencies_s),
                }
            )
            seen = done
            print(json.dumps(windows[-1]), flush=True)
            if time.monotonic() - began >= seconds:
                stop.set()

    await asyncio.gather(sampler(), *clients)
    return {
        "seconds": seconds,
        "predictions": predictions.summary(seconds),
        "explanations": explanations.summary(seconds) if explain_clients else None,
        "windows": windows,
    }


def _requests(url: str, model: str, image: bytes) -> dict[str, bytes]:
    target = Target.parse(url)
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    headers = {"content-type": "application/json"}
    return {
        "predict": encode_request(target, f"/v1/models/{model}:predict", body, headers),
        "explain": encode_request(target, f"/v1/models/{model}:explain", body, headers),
    }


async def measure(url: str, model: str, image: bytes, args: argparse.Namespace, pid: int) -> dict:
    requests = _requests(url, model, image)
    # warm-up: the first explanation loads the eager model and pytorch-grad-cam
    await phase(url, requests, args.prediction_clients, args.explain_clients, 15, 15, pid)
    first = await phase(url, requests, args.prediction_clients, 0, args.alone_s, args.window_s, pid)
    mixed = await phase(
        url, requests, args.prediction_clients, args.explain_clients, args.mixed_s, args.window_s, pid
    )
    second = await phase(url, requests, args.prediction_clients, 0, args.alone_s, args.window_s, pid)
    return {"alone_before": first, "mixed": mixed, "alone_after": second}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prediction-clients", type=int, default=32)
    parser.add_argument("--explain-clients", type=int, default=2)
    parser.add_argument("--alone-s", type=float, default=30.0)
    parser.add_argument("--mixed-s", type=float, default=120.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--model-repo", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--image", type=Path, default=ROOT / "data" / "digits" / "7" / "0007.png")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="IMGCLS_NAME=VALUE",
        help="A setting for the server (repeatable), e.g. IMGCLS_EXPLAIN__NICE=19.",
    )
    args = parser.parse_args()
    server_env = dict(item.split("=", 1) for item in args.server_env)
    if not args.image.is_file():
        parser.error(f"{args.image} does not exist; run `make demo` first, or pass --image")

    image = args.image.read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    probe = (
        f"/v1/models/{args.model}:predict",
        json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode(),
        {"content-type": "application/json"},
    )
    with running(imgcls_server(args.model_repo, port, env=server_env), url, *probe) as server:
        phases = asyncio.run(measure(url, args.model, image, args, server.pid))

    alone = [phases["alone_before"]["predictions"], phases["alone_after"]["predictions"]]
    mixed = phases["mixed"]["predictions"]
    alone_rps = sum(p["rps"] for p in alone) / 2
    alone_p99 = sum(p["p99_ms"] for p in alone) / 2
    steady = phases["mixed"]["windows"][1:] or phases["mixed"]["windows"]
    summary = {
        "alone_rps": round(alone_rps, 1),
        "mixed_rps": mixed["rps"],
        "throughput_change": round(mixed["rps"] / alone_rps - 1, 3),
        "alone_p99_ms": round(alone_p99, 2),
        "mixed_p99_ms": mixed["p99_ms"],
        "p99_change": round(mixed["p99_ms"] / alone_p99 - 1, 3),
        "explanations_rps": phases["mixed"]["explanations"]["rps"],
        "explain_p50_ms": phases["mixed"]["explanations"]["p50_ms"],
        "explain_p99_ms": phases["mixed"]["explanations"]["p99_ms"],
        "rss_mib_first": steady[0]["rss_mib"],
        "rss_mib_last": steady[-1]["rss_mib"],
        "rss_mib_growth": round(steady[-1]["rss_mib"] - steady[0]["rss_mib"], 1),
        "errors": {
            name: phases[name][kind]["errors"]
            for name in phases
            for kind in ("predictions", "explanations")
            if phases[name][kind] and phases[name][kind]["errors"]
        },
    }
    summary["throughput_within_budget"] = summary["throughput_change"] >= -THROUGHPUT_BUDGET
    summary["p99_within_budget"] = summary["p99_change"] <= P99_BUDGET
    info = machine()
    result = {
        "benchmark": "mixed-load",
        "date": date.today().isoformat(),
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summary": summary,
        "phases": phases,
    }
    folder = result_folder(args.out, "mixed-load")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")

    def row(name: str, label: str) -> str:
        p = phases[name]["predictions"]
        e = phases[name]["explanations"]
        explain = f"{e['rps']} | {e['p50_ms']} | {e['p99_ms']}" if e else "– | – | –"
        return f"| {label} | {p['rps']} | {p['p50_ms']} | {p['p99_ms']} | {explain} |"

    verdict = lambda ok: "within" if ok else "OUTSIDE"  # noqa: E731
    lines = [
        f"# Mixed load: {args.prediction_clients} prediction clients, {args.explain_clients} explanation clients",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {result['date']}; server and load "
        f"generator on the same machine; model {args.model}, one image per request ({args.image.name}).",
        "",
        "| phase | predictions/s | p50 (ms) | p99 (ms) | explanations/s | explain p50 (ms) | explain p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("alone_before", f"predictions alone ({args.alone_s:g} s)"),
        row("mixed", f"with explanations ({args.mixed_s:g} s)"),
        row("alone_after", f"predictions alone again ({args.alone_s:g} s)"),
        "",
        f"Prediction throughput {summary['throughput_change']:+.1%} against the mean alone "
        f"({verdict(summary['throughput_within_budget'])} the 15 % budget); p99 {summary['p99_change']:+.1%} "
        f"({verdict(summary['p99_within_budget'])} the 20 % budget).",
        "",
        "Server RSS during the mixed phase, after its first window: "
        f"{summary['rss_mib_first']} -> {summary['rss_mib_last']} MiB ({summary['rss_mib_growth']:+} MiB).",
        "",
        "| t (s) | RSS (MiB) | predictions/s | explanations so far |",
        "|---:|---:|---:|---:|",
        *(
            f"| {w['t_s']} | {w['rss_mib']} | {w['prediction_rps']} | {w['explanations']} |"
            for w in phases["mixed"]["windows"]
        ),
        "",
        f"Errors: {summary['errors'] or 'none'}.",
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines[6:14]))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

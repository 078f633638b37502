"""A bounded soak: constant load on `imgcls serve` for a few minutes, sampling the server's memory
and the latency over time, to show that neither grows.

    python benchmarks/soak.py --minutes 3 --concurrency 8

Starts its own server on 127.0.0.1 (a free port) over models/, sends held-back digits through the
v1 JSON route, and stops by itself. Writes benchmarks/results/<date>-<host>-soak/ with results.json,
results.md and soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import httpx

from benchmarks.machine import machine, result_folder
from benchmarks.report import figure_line, plotting_available, saved_figure
from benchmarks.servers import free_port, imgcls_server, running
from benchmarks.stats import percentile

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def drive(
    url: str, model: str, bodies: list[dict], seconds: float, concurrency: int, window_s: float, pid: int
) -> list[dict]:
    windows: list[dict] = []
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def worker(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        turn = index
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            response = await http.post(f"/v1/models/{model}:predict", json=bodies[turn % len(bodies)])
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1
            turn += concurrency

    async def sampler() -> None:
        nonlocal errors
        began = time.monotonic()
        while time.monotonic() < stop_at:
            await asyncio.sleep(window_s)
            taken, errs = sorted(latencies), errors
            latencies.clear()
            errors = 0
            windows.append(
                {
                    "t_s": round(time.monotonic() - began, 1),
                    "rss_mib": round(rss_bytes(pid) / 2**20, 1),
                    "requests": len(taken),
                    "rps": round(len(taken) / window_s, 1),
                    "p50_ms": round(percentile(taken, 0.50) * 1000, 2) if taken else None,
                    "p99_ms": round(percentile(taken, 0.99) * 1000, 2) if taken else None,
                    "errors": errs,
                }
            )
            print(json.dumps(windows[-1]), flush=True)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        await asyncio.gather(sampler(), *(worker(i, http) for i in range(concurrency)))
    return windows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images-per-request", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--model-repo", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.minutes > 30:
        parser.error("--minutes is capped at 30: this is a bounded soak, not a service")

    found = sorted(args.data.rglob("*.png"))
    files = found[:: max(1, len(found) // 64)][:64]
    if not files:
        parser.error(f"no images under {args.data}; run `make demo` first")
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    bodies = [
        {"instances": [{"b64": images[(i + j) % len(images)]} for j in range(args.images_per_request)]}
        for i in range(len(images))
    ]  # encoded once, up front: the client must not be the bottleneck

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    probe = (
        f"/v1/models/{args.model}:predict",
        json.dumps(bodies[0]).encode(),
        {"content-type": "application/json"},
    )
    with running(imgcls_server(args.model_repo, port), url, *probe) as server:
        windows = asyncio.run(
            drive(url, args.model, bodies, args.minutes * 60, args.concurrency, args.window_s, server.pid)
        )

    steady = windows[1:] or windows  # the first window includes warm-up allocations
    rss = [w["rss_mib"] for w in steady]
    summary = {
        "rss_mib_first": rss[0],
        "rss_mib_last": rss[-1],
        "rss_mib_growth": round(rss[-1] - rss[0], 1),
        "p99_ms_first": steady[0]["p99_ms"],
        "p99_ms_last": steady[-1]["p99_ms"],
        "rps_mean": round(statistics.mean(w["rps"] for w in steady), 1),
        "errors": sum(w["errors"] for w in windows),
    }
    info = machine()
    result = {
        "benchmark": "soak",
        "date": date.today().isoformat(),
        "machine": info,
        "settings": vars(args)
        | {"model_repo": str(args.model_repo), "data": str(args.data), "out": str(args.out)},
        "summary": summary,
        "windows": windows,
    }
    folder = result_folder(args.out, "soak")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")

    t = [w["t_s"] for w in windows]
    if plotting_available():
        with saved_figure(folder / "soak.png", ncols=2, figsize=(11, 4)) as (_, (memory_ax, latency_ax)):
            memory_ax.plot(t, [w["rss_mib"] for w in windows], marker="o")
            memory_ax.set(title="Server RSS", xlabel="seconds", ylabel="MiB")
            latency_ax.plot(t, [w["p50_ms"] for w in windows], marker="o", label="p50")
            latency_ax.plot(t, [w["p99_ms"] for w in windows], marker="o", label="p99")
            latency_ax.set(title="Request latency", xlabel="seconds", ylabel="ms")
            latency_ax.legend()
            for ax in (memory_ax, latency_ax):
                ax.grid(alpha=0.3)

    lines = [
        f"# Soak: {args.minutes:g} min, {args.concurrency} concurrent clients, {args.images_per_request} images per request",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {result['date']}; server and load generator on the same machine.",
        "",
        "| t (s) | RSS (MiB) | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {w['t_s']} | {w['rss_mib']} | {w['rps']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} |"
            for w in windows
        ),
        "",
        f"RSS {summary['rss_mib_first']} -> {summary['rss_mib_last']} MiB after warm-up ({summary['rss_mib_growth']:+} MiB); "
        f"p99 {summary['p99_ms_first']} -> {summary['p99_ms_last']} ms; {summary['rps_mean']} requests/s; {summary['errors']} errors.",
        "",
        figure_line("soak", "soak.png"),
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines[-4:]))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

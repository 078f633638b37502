"""`imgcls bench load`: an HTTP load generator for any imgcls URL.

Closed loop (`--concurrency 1,8,32`: that many clients, each sending its next request when the last
one answers) or open loop (`--rate R`: Poisson arrivals at R requests/s, latency measured from each
request's scheduled send time, so a slow server cannot hide its queueing by slowing the client down:
no coordinated omission). Requests are encoded to bytes once, up front, and sent over kept-alive
connections by a minimal HTTP/1.1 client (``benchmarks.http1``) on uvloop; the client's
own CPU use is reported so a reader can tell whether the client was the bottleneck. Every response is
checked: the right status and one prediction per image.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.http1 import Connection, HttpResponse, Target, encode_request
from benchmarks.stats import percentile, poisson_arrivals

__all__ = [
    "PROTOCOLS",
    "Payload",
    "RunResult",
    "build_payloads",
    "model_input_shape",
    "run",
    "run_closed_loop",
    "run_open_loop",
    "write_report",
]

# v2-pixels: preprocessed FP32 tensors in binary form, so the server neither decodes nor transforms
PROTOCOLS = ("v1", "v1-multipart", "v2", "v2-binary", "v2-pixels")
_BOUNDARY = "imgcls-bench-boundary"
REQUEST_TIMEOUT_S = 60.0
WindowHooks = tuple[Callable[[], None], Callable[[], None]]  # called as the measured window opens, closes


@dataclass(frozen=True)
class Payload:
    path: str
    content: bytes
    headers: dict[str, str]
    images: int


@dataclass
class RunResult:
    mode: str  # "concurrency=N" or "rate=R"
    seconds: float
    requests: int
    images: int
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_seconds: float = 0.0

    def summary(self) -> dict:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(percentile(ordered, q), 3) if ordered else None

        data = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        data.update(
            requests_per_s=round(self.requests / self.seconds, 2),
            images_per_s=round(self.images / self.seconds, 2),
            p50_ms=pct(0.50),
            p90_ms=pct(0.90),
            p99_ms=pct(0.99),
            max_ms=round(ordered[-1], 3) if ordered else None,
            mean_ms=round(statistics.fmean(ordered), 3) if ordered else None,
            client_cpu_percent=round(100 * self.client_cpu_seconds / self.seconds, 1),
        )
        return data


def _v2_binary(model: str, name: str, datatype: str, shape: list[int], raw: bytes, images: int) -> Payload:
    """An OIP request with one input and the probabilities asked back, both in binary form."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return Payload(
        f"/v2/models/{model}/infer",
        header + raw,
        {"inference-header-content-length": str(len(header))},
        images,
    )


def _payload(
    protocol: str, model: str, images: list[bytes], pixel_shape: tuple[int, int, int] | None = None
) -> Payload:
    if protocol == "v1":
        body = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
        return Payload(
            f"/v1/models/{model}:predict",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
            len(images),
        )
    if protocol == "v1-multipart":
        parts = (
            b"".join(
                f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{n}.img"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + data
                + b"\r\n"
                for n, data in enumerate(images)
            )
            + f"--{_BOUNDARY}--\r\n".encode()
        )
        return Payload(
            f"/v1/models/{model}:predict",
            parts,
            {"content-type": f"multipart/form-data; boundary={_BOUNDARY}"},
            len(images),
        )
    if protocol == "v2":
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(i).decode() for i in images],
                }
            ]
        }
        return Payload(
            f"/v2/models/{model}/infer",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
            len(images),
        )
    if protocol == "v2-binary":
        from service.v2_codec import serialize_bytes

        return _v2_binary(model, "image", "BYTES", [len(images)], serialize_bytes(images), len(images))
    if protocol == "v2-pixels":
        if pixel_shape is None:
            raise ValueError("v2-pixels needs the model's input shape (channels, height, width)")
        # each image is already FP32 CHW bytes (benchmarks.images.pixel_tensors)
        return _v2_binary(model, "pixels", "FP32", [len(images), *pixel_shape], b"".join(images), len(images))
    raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


def build_payloads(
    protocol: str,
    model: str,
    images: list[bytes],
    per_request: int,
    count: int = 32,
    pixel_shape: tuple[int, int, int] | None = None,
) -> list[Payload]:
    """``count`` request bodies, ``per_request`` images each, cycling through ``images``; encoded once.

    ``v2-pixels`` takes the images as :func:`benchmarks.images.pixel_tensors` made them, and the
    model's input shape.
    """
    return [
        _payload(
            protocol,
            model,
            [images[(i * per_request + j) % len(images)] for j in range(per_request)],
            pixel_shape,
        )
        for i in range(count)
    ]


def model_input_shape(url: str, model: str) -> tuple[int, int, int]:
    """The ``pixels`` input's (channels, height, width) from the server's OIP model metadata."""
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}", timeout=30.0)
    response.raise_for_status()
    for tensor in response.json()["inputs"]:
        if tensor["name"] == "pixels":
            channels, height, width = tensor["shape"][1:]
            return int(channels), int(height), int(width)
    raise ValueError(f"{url}: model {model!r} declares no 'pixels' input")


def _well_formed(response: HttpResponse, payload: Payload) -> bool:
    if payload.path.endswith(":predict"):
        return len(json.loads(response.body).get("predictions", [])) == payload.images
    length = response.headers.get("inference-header-content-length")
    header = json.loads(response.body[: int(length)] if length else response.body)
    return header["outputs"][0]["shape"][0] == payload.images


class _Recorder:
    """Counts requests sent inside the measurement window, including those that finish after it."""

    def __init__(self, mode: str) -> None:
        self.result = RunResult(mode=mode, seconds=0.0, requests=0, images=0)
        self.window = (float("inf"), float("inf"))

    def record(self, payload: Payload, outcome: str, sent_at: float, latency_s: float) -> None:
        if not self.window[0] <= sent_at < self.window[1]:
            return  # warm-up, or sent after the window closed
        if outcome == "ok":
            self.result.requests += 1
            self.result.images += payload.images
            self.result.latencies_ms.append(latency_s * 1000)
        else:
            self.result.errors[outcome] = self.result.errors.get(outcome, 0) + 1


async def _send(connection: Connection, payload: Payload, raw: bytes) -> tuple[str, float]:
    """The outcome ("ok", a status, an error name) and the Retry-After it came with (seconds, else 0)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            response = await connection.send(raw)
    except TimeoutError:
        return "timeout", 0.0
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        return type(exc).__name__, 0.0
    if response.status != 200:
        retry_after = response.headers.get("retry-after", "")
        return str(response.status), float(retry_after) if retry_after.isdigit() else 0.0
    try:
        return ("ok" if _well_formed(response, payload) else "malformed"), 0.0
    except (ValueError, KeyError, IndexError, TypeError):
        return "malformed", 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    recorder: _Recorder, warmup_s: float, duration_s: float, load, window_hooks: WindowHooks | None
) -> RunResult:
    stop = asyncio.Event()
    task = asyncio.create_task(load(stop))
    await asyncio.sleep(warmup_s)
    started, cpu = time.perf_counter(), _cpu()
    recorder.window = (started, started + duration_s)
    if window_hooks:
        await asyncio.to_thread(window_hooks[0])
    await asyncio.sleep(duration_s)
    if window_hooks:
        await asyncio.to_thread(window_hooks[1])
    stop.set()  # no new requests; the ones in flight finish and are counted
    await asyncio.wait_for(task, timeout=120)
    recorder.result.seconds = duration_s
    recorder.result.client_cpu_seconds = _cpu() - cpu
    return recorder.result


async def run_closed_loop(
    url: str,
    payloads: list[Payload],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    window_hooks: WindowHooks | None = None,
) -> RunResult:
    """``concurrency`` clients, each sending its next request when the last one answers; a client
    refused with ``Retry-After`` (503: queue full, shutting down) waits that long first, as a
    well-behaved client does, so an overloaded run measures the server, not a storm of instant retries.

    ``window_hooks`` (called in a thread, under load) run as the measured window opens and closes:
    ``bench pipeline`` scrapes the server's metrics there."""
    recorder = _Recorder(f"concurrency={concurrency}")
    target = Target.parse(url)
    raws = [encode_request(target, p.path, p.content, p.headers) for p in payloads]

    async def client(index: int, stop: asyncio.Event) -> None:
        connection = Connection(target)  # one keep-alive connection per client, like a browser tab
        turn = index
        try:
            while not stop.is_set():
                payload = payloads[turn % len(payloads)]
                started = time.perf_counter()
                outcome, retry_after_s = await _send(connection, payload, raws[turn % len(payloads)])
                recorder.record(payload, outcome, started, time.perf_counter() - started)
                turn += concurrency
                if retry_after_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=retry_after_s)
        finally:
            connection.close()

    async def load(stop: asyncio.Event) -> None:
        await asyncio.gather(*(client(i, stop) for i in range(concurrency)))

    return await _measure(recorder, warmup_s, duration_s, load, window_hooks)


async def run_open_loop(
    url: str, payloads: list[Payload], rate: float, warmup_s: float, duration_s: float, seed: int = 0
) -> RunResult:
    recorder = _Recorder(f"rate={rate:g}")
    target = Target.parse(url)
    raws = [encode_request(target, p.path, p.content, p.headers) for p in payloads]
    idle: list[Connection] = []  # a request takes a free connection or opens one: arrivals never wait for one

    async def one(index: int, scheduled: float) -> None:
        connection = idle.pop() if idle else Connection(target)
        outcome, _ = await _send(connection, payloads[index], raws[index])  # open loop: arrivals are fixed
        recorder.record(
            payloads[index], outcome, scheduled, time.perf_counter() - scheduled
        )  # from the schedule
        idle.append(connection)

    async def load(stop: asyncio.Event) -> None:
        pending: set[asyncio.Task] = set()
        start = time.perf_counter()
        for turn, offset in enumerate(poisson_arrivals(rate, seed)):
            if stop.is_set():
                break
            next_at = start + offset
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(turn % len(payloads), next_at))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        for connection in idle:
            connection.close()

    return await _measure(recorder, warmup_s, duration_s, load, None)


def run(coroutine):
    """Run a load coroutine on uvloop where it is installed (less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def write_report(summaries: list[dict], meta: dict, folder: Path) -> Path:
    """results.json, results.md and latency-vs-throughput.png in ``folder`` (``RunResult.summary()`` each)."""
    from benchmarks.report import figure_line, plotting_available, saved_figure

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({**meta, "runs": summaries}, indent=1) + "\n")
    lines = [
        f"# Load: {meta['protocol']} against {meta['url']} ({meta['model']}), {meta['images_per_request']} image(s) per request",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['date']}; warm-up {meta['warmup_s']} s, "
        f"then {meta['duration_s']} s per step. Client CPU is the load generator's own use of one core.",
        "",
        "| load | requests/s | images/s | p50 ms | p90 ms | p99 ms | max ms | errors | client CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        *(
            f"| {s['mode']} | {s['requests_per_s']} | {s['images_per_s']} | {s['p50_ms']} | {s['p90_ms']} | "
            f"{s['p99_ms']} | {s['max_ms']} | {', '.join(f'{k}: {v}' for k, v in s['errors'].items()) or 0} | "
            f"{s['client_cpu_percent']} |"
            for s in summaries
        ),
        "",
        figure_line("latency against throughput", "latency-vs-throughput.png"),
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))

    if plotting_available():
        with saved_figure(folder / "latency-vs-throughput.png") as (_, ax):
            throughput = [s["images_per_s"] for s in summaries]
            for key in ("p50_ms", "p99_ms"):
                ax.plot(throughput, [s[key] for s in summaries], marker="o", label=key.removesuffix("_ms"))
            for s, x in zip(summaries, throughput, strict=True):
                ax.annotate(
                    s["mode"], (x, s["p99_ms"] or 0), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
            ax.set(xlabel="images/s", ylabel="latency (ms)", title=f"{meta['model']} over {meta['protocol']}")
            ax.grid(alpha=0.3)
            ax.legend()
    return folder

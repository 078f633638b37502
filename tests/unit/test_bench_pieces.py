"""The pure pieces of the benchmarks: statistics, schedules, parsing, the HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics

import pytest

from benchmarks.batching import BatchingSetting, mean_batch_size, parse_settings
from benchmarks.http1 import Connection, Target, encode_request
from benchmarks.images import parse_size, synthetic_jpegs
from benchmarks.pipeline import Scrape, bounding_stage, parse_scrape, stage_busy
from benchmarks.stats import percentile, poisson_arrivals
from benchmarks.timing import Timing
from service.batcher import doubling_batch_sizes


def test_percentile_is_nearest_rank_and_always_an_observed_value():
    samples = sorted(float(v) for v in range(1, 101))  # 1..100
    assert percentile(samples, 0.5) == 51.0
    assert percentile(samples, 0.99) == 100.0
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_poisson_arrivals_have_the_requested_rate_and_are_reproducible():
    times = list(itertools.islice(poisson_arrivals(200.0, seed=3), 20_000))
    assert times == sorted(times)
    assert times[-1] == pytest.approx(100.0, rel=0.03)  # 20,000 arrivals at 200/s take about 100 s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.stdev(gaps) == pytest.approx(statistics.fmean(gaps), rel=0.05)  # exponential: sd = mean
    assert list(itertools.islice(poisson_arrivals(200.0, seed=3), 5)) == times[:5]
    with pytest.raises(ValueError, match="rate must be positive"):
        next(poisson_arrivals(0))


def test_timing_summarises_seconds_in_milliseconds():
    timing = Timing.of([0.001] * 98 + [0.010, 0.020])
    assert timing.calls == 100
    assert timing.p50_ms == pytest.approx(1.0)
    assert timing.p99_ms == pytest.approx(20.0)
    assert timing.mean_ms == pytest.approx(1.28)


def test_doubling_batch_sizes_end_at_the_limit():
    assert doubling_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert doubling_batch_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert doubling_batch_sizes(1) == [1]


def test_batching_settings_parse_with_and_without_a_delay():
    assert parse_settings("1, 32@0,16@2.5,32@5fixed") == [
        BatchingSetting(1, 0.0),
        BatchingSetting(32, 0.0),
        BatchingSetting(16, 2.5),
        BatchingSetting(32, 5.0, fixed_wait=True),
    ]
    assert (
        BatchingSetting(32, 5.0, fixed_wait=True).env()["IMGCLS_BATCHING__WAIT_ONLY_FOR_INCOMING"] == "false"
    )
    assert BatchingSetting(1, 0).label == "off (max_batch_size=1)"
    assert BatchingSetting(32, 2.0).env() == {
        "IMGCLS_BATCHING__MAX_BATCH_SIZE": "32",
        "IMGCLS_BATCHING__MAX_QUEUE_DELAY_MS": "2.0",  # pydantic reads it back as a float
        "IMGCLS_BATCHING__WAIT_ONLY_FOR_INCOMING": "true",
    }
    for bad in ("0", "x", "32@", "32@-1", "", "32fixed"):
        with pytest.raises(ValueError, match="MAX_BATCH_SIZE"):
            parse_settings(bad)


def test_mean_batch_size_sums_the_histogram_across_models():
    text = "\n".join(
        [
            "# TYPE imgcls_batch_size histogram",
            'imgcls_batch_size_bucket{le="1.0",model="a",version="1"} 3.0',
            'imgcls_batch_size_sum{model="a",version="1"} 30.0',
            'imgcls_batch_size_count{model="a",version="1"} 5.0',
            'imgcls_batch_size_sum{model="b",version="2"} 10.0',
            'imgcls_batch_size_count{model="b",version="2"} 5.0',
        ]
    )
    assert mean_batch_size(text) == (40.0, 10.0)


def test_sizes_parse_and_synthetic_jpegs_have_that_size():
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("320")
    from io import BytesIO

    from PIL import Image

    first, second = synthetic_jpegs(2, 64, 48)
    assert first != second and first == synthetic_jpegs(1, 64, 48)[0]  # different images, seeded
    with Image.open(BytesIO(first)) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (64, 48), "RGB")


def test_targets_parse_urls_with_defaults_and_prefixes():
    assert Target.parse("http://127.0.0.1:8000") == Target("127.0.0.1", 8000, False, "")
    assert Target.parse("https://example.org/imgcls/") == Target("example.org", 443, True, "/imgcls")
    assert Target.parse("localhost:9000").port == 9000
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("ftp://x")
    raw = encode_request(Target.parse("http://h:81/p"), "/v1/x", b"{}", {"content-type": "application/json"})
    assert (
        raw
        == b"POST /p/v1/x HTTP/1.1\r\nHost: h:81\r\nContent-Length: 2\r\ncontent-type: application/json\r\n\r\n{}"
    )


def _serve(responses: list[bytes]):
    """A raw TCP server answering each request (read up to its body) with the next canned response."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            received.append(await reader.readexactly(length))
            reply = responses.pop(0)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply:
                break
        writer.close()

    return handle, received


def test_the_client_reads_sized_and_chunked_bodies_and_reconnects_after_close():
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew",
    ]

    async def scenario():
        handle, received = _serve(responses)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = Target.parse(f"http://127.0.0.1:{port}")
        connection = Connection(target)
        raw = encode_request(target, "/x", b"body", {})
        answers = [await connection.send(raw) for _ in range(4)]
        connection.close()
        server.close()
        await server.wait_closed()
        return answers, received

    answers, received = asyncio.run(scenario())
    assert [(a.status, a.body) for a in answers] == [
        (200, b"hello"),
        (503, b"abcde"),
        (200, b"ok"),
        (200, b"new"),
    ]
    assert received == [b"body"] * 4


def _scrape(preprocess: float, device: float, inference: float, cpu: float, at: float) -> Scrape:
    text = (
        f'imgcls_preprocess_duration_seconds_sum{{model="m",version="1"}} {preprocess}\n'
        f'imgcls_device_preprocess_duration_seconds_sum{{model="m",version="1"}} {device}\n'
        f'imgcls_inference_duration_seconds_sum{{model="m",version="1"}} {inference}\n'
        f'imgcls_inference_duration_seconds_sum{{model="other",version="2"}} 100.0\n'
        f'imgcls_model_info{{model="m",version="1",runtime="tensorrt",precision="int8",device="cuda"}} 1.0\n'
        f"process_cpu_seconds_total {cpu}\n"
    )
    return parse_scrape(text, "m", at)


def test_a_scrape_keeps_only_the_measured_models_stages_and_what_it_is_served_with():
    scrape = _scrape(1.0, 0.5, 2.0, 10.0, at=3.0)
    assert scrape.stage_seconds == {"decode": 1.0, "device_decode": 0.5, "runtime": 2.0}
    assert (scrape.cpu_seconds, scrape.runtime, scrape.at) == (10.0, "tensorrt-int8", 3.0)


def test_stage_busy_is_each_stages_share_of_the_time_between_scrapes():
    busy = stage_busy(
        _scrape(1.0, 0.0, 2.0, 10.0, at=1.0), _scrape(8.0, 4.0, 6.5, 25.0, at=6.0), decode_threads=2
    )
    assert busy == {
        "decode_busy": 0.7,
        "device_decode_busy": 0.8,
        "runtime_busy": 0.9,
        "server_cpu_cores": 3.0,
    }


@pytest.mark.parametrize(
    ("decode", "device", "runtime", "bound"),
    [
        (0.99, 0.0, 0.2, "decode"),
        (0.3, 0.0, 0.9, "runtime"),
        (0.9, 0.0, 0.95, "runtime"),
        (0.1, 0.97, 0.6, "device_decode"),
        (0.6, 0.2, 0.5, "http"),
    ],
)
def test_the_bounding_stage_is_the_busiest_saturated_one_else_http(decode, device, runtime, bound):
    busy = {"decode_busy": decode, "device_decode_busy": device, "runtime_busy": runtime}
    assert bounding_stage(busy) == bound


def test_a_measured_server_does_not_inherit_imgcls_settings_from_the_shell():
    from benchmarks.servers import _without_imgcls_settings

    environ = {"PATH": "/bin", "IMGCLS_MODELS": '{"m": {"runtime": "tensorrt"}}', "IMGCLS_API_KEYS": "k" * 16}
    assert _without_imgcls_settings(environ) == {"PATH": "/bin"}


def test_without_matplotlib_a_report_says_why_it_has_no_figure(monkeypatch):
    from benchmarks import report

    assert report.figure_line("soak", "soak.png") == "![soak](soak.png)"
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    assert not report.plotting_available()
    assert 'pip install "imgcls[train]"' in report.figure_line("soak", "soak.png")


def test_a_benchmark_record_is_its_json_and_its_markdown(tmp_path, capsys):
    from benchmarks.report import write_record

    folder = write_record(tmp_path / "2026-01-01-host-x", {"figure": 1.5}, ["# x", "", "| a |"])
    assert json.loads((folder / "results.json").read_text()) == {"figure": 1.5}
    assert (folder / "results.md").read_text() == "# x\n\n| a |"
    assert f"wrote {folder}" in capsys.readouterr().out

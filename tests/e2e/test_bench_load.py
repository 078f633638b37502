"""`imgcls bench load` against a live server: every protocol, closed and open loop, files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.images import digits_images, pixel_tensors
from benchmarks.load import PROTOCOLS, build_payloads
from imgcls.cli import main
from service.v2_codec import parse_infer_request


def test_v2_binary_payloads_parse_back_to_the_images():
    images = digits_images(3)
    (payload,) = build_payloads("v2-binary", "digits", images, per_request=3, count=1)
    parsed = parse_infer_request(payload.content, int(payload.headers["inference-header-content-length"]))
    assert parsed.inputs[0].data == images
    assert parsed.outputs[0].binary is True


def test_v2_pixels_payloads_are_the_images_as_fp32_tensors_of_the_models_input_shape():
    images = digits_images(2)
    pixels = pixel_tensors(images, (3, 10, 12))
    (payload,) = build_payloads(
        "v2-pixels", "digits", pixels, per_request=2, count=1, pixel_shape=(3, 10, 12)
    )
    parsed = parse_infer_request(payload.content, int(payload.headers["inference-header-content-length"]))
    tensor = parsed.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("pixels", "FP32", [2, 3, 10, 12])
    data = np.asarray(tensor.data)
    assert data.min() >= 0.0 and data.max() <= 1.0 and data.max() > 0.5  # scaled, not blank
    np.testing.assert_array_equal(data[:, 0], data[:, 2])  # grey digits: every channel the same
    gray = pixel_tensors(images, (1, 8, 8))[0]
    assert len(gray) == 8 * 8 * 4


def test_v2_pixels_against_a_model_the_server_does_not_have_exits_2_naming_the_url(
    server_url: str, tmp_path: Path, capsys
):
    code = main(
        ["bench", "load", "--url", f"http://{server_url}", "--model", "missing", "--protocol", "v2-pixels",
         "--concurrency", "1", "--duration", "0.3", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 2
    assert f"http://{server_url}/v2/models/missing" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_loop_over_every_protocol_reports_clean_results(
    server_url: str, tmp_path: Path, capsys, protocol: str
):
    code = main(
        ["bench", "load", "--url", f"http://{server_url}", "--model", "tiny", "--protocol", protocol,
         "--concurrency", "1,2", "--duration", "0.6", "--warmup", "0.2", "--images-per-request", "2",
         "--out", str(tmp_path), "--name", protocol]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    (folder,) = tmp_path.iterdir()
    result = json.loads((folder / "results.json").read_text())
    assert [run["mode"] for run in result["runs"]] == ["concurrency=1", "concurrency=2"]
    for run in result["runs"]:
        assert run["requests"] > 0 and run["errors"] == {}
        assert run["images"] == 2 * run["requests"]
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert (folder / "results.md").read_text().startswith("# Load:")
    assert (folder / "latency-vs-throughput.png").stat().st_size > 0


def test_open_loop_sends_at_the_requested_rate(server_url: str, tmp_path: Path, capsys):
    code = main(
        ["bench", "load", "--url", f"http://{server_url}", "--model", "tiny", "--rate", "40",
         "--duration", "1.5", "--warmup", "0.2", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    (folder,) = tmp_path.iterdir()
    (run,) = json.loads((folder / "results.json").read_text())["runs"]
    assert run["mode"] == "rate=40" and run["errors"] == {}
    assert 15 <= run["requests"] <= 120  # Poisson around 60 in 1.5 s


def test_errors_are_counted_by_status_not_hidden(server_url: str, tmp_path: Path, capsys):
    code = main(
        ["bench", "load", "--url", f"http://{server_url}", "--model", "missing", "--concurrency", "1",
         "--duration", "0.3", "--warmup", "0", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    (folder,) = tmp_path.iterdir()
    (run,) = json.loads((folder / "results.json").read_text())["runs"]
    assert run["requests"] == 0 and run["errors"].get("404", 0) > 0


def test_a_closed_loop_client_refused_with_retry_after_waits_before_its_next_request():
    """A 503 with Retry-After: 1 is followed by a one-second pause, not by an instant retry storm."""
    import asyncio

    from benchmarks.load import Payload, run_closed_loop

    refusals: list[float] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                refusals.append(loop.time())
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def scenario():
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        payload = Payload(
            path="/v1/models/m:predict", content=b"{}", headers={"content-type": "application/json"}, images=1
        )
        async with server:
            return await run_closed_loop(
                f"http://127.0.0.1:{port}", [payload], 2, warmup_s=0.0, duration_s=1.5
            )

    result = asyncio.run(scenario())
    assert result.errors == {"503": 4}  # 2 clients, each refused at 0 s and again after its 1 s pause
    assert result.requests == 0
    assert len(refusals) <= 6  # the last pause ends when the window closes, not after another retry

"""`imgcls bench runtimes | batching | compare`: short real runs, and the documented results schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgcls.cli import main

pytestmark = pytest.mark.slow  # each starts real servers and measures for seconds

LOAD_KEYS = {
    "requests_per_s",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "client_cpu_percent",
}


def _only_folder(root: Path) -> Path:
    (folder,) = root.iterdir()
    for name in ("results.json", "results.md"):
        assert (folder / name).stat().st_size > 0
    return folder


def test_bench_runtimes_times_every_runtime_preprocessing_and_the_ceiling(
    tiny_bundle, tmp_path: Path, capsys
):
    bundle, _ = tiny_bundle
    code = main(
        ["bench", "runtimes", "--bundle", str(bundle), "--batch-sizes", "1,4", "--seconds", "0.05",
         "--ceiling-seconds", "0.2", "--jpeg", "64x48", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "in-process ceiling:" in out
    folder = _only_folder(tmp_path)
    document = json.loads((folder / "results.json").read_text())
    assert {"date", "machine", "images", "model", "device", "runtimes", "skipped", "preprocessing",
            "serving_runtime", "single_image_latency_ms", "pipeline", "ceiling"} <= set(document)  # fmt: skip
    measured = {(row["runtime"], row["batch_size"]) for row in document["runtimes"]}
    assert measured == {(name, size) for name in ("eager", "torchscript", "onnxruntime") for size in (1, 4)}
    assert all(row["images_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in document["runtimes"])
    assert [row["decoder"] for row in document["preprocessing"]] == ["torchvision.io.decode_jpeg", "pillow"]
    assert document["serving_runtime"] == "onnxruntime"
    assert document["ceiling"] == max(document["pipeline"], key=lambda r: r["images_per_s"])
    assert document["ceiling"]["images_per_s"] > 0
    assert (folder / "images-per-s-by-batch.png").stat().st_size > 0


def test_bench_batching_starts_the_service_per_setting_and_reports_the_batches_formed(
    tiny_bundle, tmp_path: Path, capsys
):
    bundle, _ = tiny_bundle
    code = main(
        ["bench", "batching", "--bundle", str(bundle), "--settings", "1,8@2", "--concurrency", "8",
         "--duration", "1", "--warmup", "0.3", "--jpeg", "64x48", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads((_only_folder(tmp_path) / "results.json").read_text())
    off, batched = document["rows"]
    assert set(off) >= LOAD_KEYS
    assert (off["setting"], off["mean_batch"]) == ("off (max_batch_size=1)", 1.0)
    assert batched["max_batch_size"] == 8 and batched["max_queue_delay_ms"] == 2.0
    assert 1.0 < batched["mean_batch"] <= 8  # 8 clients and a 2 ms wait: batches form
    for row in document["rows"]:
        assert row["requests"] > 0 and row["errors"] == {}


@pytest.mark.peers  # runs everywhere; under CI (make test-peers) every peer must be installed and run
def test_bench_compare_runs_imgcls_and_every_installed_peer_and_names_the_missing(
    tiny_bundle, tmp_path: Path, capsys
):
    import importlib.util
    import os

    bundle, _ = tiny_bundle
    code = main(
        ["bench", "compare", "--bundle", str(bundle), "--concurrency", "4", "--duration", "1",
         "--warmup", "0.3", "--no-ceiling", "--jpeg", "64x48", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    folder = _only_folder(tmp_path)
    document = json.loads((folder / "results.json").read_text())
    servers = [row["server"] for row in document["rows"]]
    assert servers[:2] == ["imgcls", "fastapi (no batching)"]
    for row in document["rows"]:
        assert set(row) >= LOAD_KEYS and row["requests"] > 0 and row["errors"] == {}
    for label, framework in (("litserve", "litserve"), ("ray serve", "ray")):
        installed = importlib.util.find_spec(framework) is not None
        assert installed or not os.environ.get("CI"), f"{framework} is not installed; .ci/run installs it"
        assert (label in servers) == installed
        if not installed:
            assert "not installed" in document["skipped"][label]
            assert f"Not run: {label}: {framework} is not installed" in (folder / "results.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["batching", "--settings", "0"], "MAX_BATCH_SIZE"),
        (["compare", "--concurrency", "x"], "positive integers"),
        (["runtimes", "--jpeg", "big"], "WIDTHxHEIGHT"),
    ],
)
def test_bench_commands_reject_bad_options_with_exit_2(tiny_bundle, tmp_path: Path, capsys, args, message):
    bundle, _ = tiny_bundle
    code = main(["bench", args[0], "--bundle", str(bundle), *args[1:], "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_pipeline_measures_the_served_runtime_then_http_with_pixels_and_with_jpeg(
    tiny_bundle, tmp_path: Path, capsys
):
    bundle, _ = tiny_bundle
    code = main(
        ["bench", "pipeline", "--bundle", str(bundle), "--device", "cpu", "--batch-sizes", "1,4",
         "--seconds", "0.05", "--concurrency", "4", "--duration", "0.8", "--warmup", "0.3",
         "--decode-threads", "1", "--jpeg", "64x48", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    folder = _only_folder(tmp_path)
    assert folder.name.endswith("pipeline-tiny-cpu")
    document = json.loads((folder / "results.json").read_text())
    assert document["reference_runtime"] == "onnxruntime"  # what `imgcls serve` picks on CPU
    assert document["in_process_best"]["runtime"] == "onnxruntime"
    best_eager = document["eager_fp32_best"]
    assert document["speedup_over_eager_fp32"] == pytest.approx(
        document["in_process_best"]["images_per_s"] / best_eager["images_per_s"], rel=0.01
    )
    assert document["settings"]["max_batch_size"] == document["in_process_best"]["batch_size"]
    pixels, jpeg = document["served"]
    assert pixels["input"].startswith("v2 binary pixels") and jpeg["input"] == "v2 binary JPEG"
    for row in (pixels, jpeg):
        assert set(row) >= LOAD_KEYS | {
            "decode_busy",
            "device_decode_busy",
            "runtime_busy",
            "server_cpu_cores",
            "bound",
        }
        assert row["device_decode_busy"] == 0  # CPU: JPEGs are decoded on the decode threads
        assert row["requests"] > 0 and row["errors"] == {}
        assert row["share_of_in_process"] > 0 and row["bound"] in ("decode", "runtime", "http")
        assert 0 < row["runtime_busy"] <= 1.05
    assert pixels["decode_busy"] == 0  # the server decoded nothing
    assert jpeg["decode_busy"] > 0
    assert "| v2 binary JPEG |" in (folder / "results.md").read_text()

"""`imgcls predict --bundle`: bulk prediction in-process on a real bundle, and online chunking."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from imgcls.cli import main
from service.settings import BatchingSettings, Settings
from tests.conftest import make_image, serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bulk") / "images"
    for index in range(21):
        make_image(folder / f"{index:03d}.png", index % 3, 500 + index)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_is_predicted_in_process_with_an_error_row_for_a_bad_file(tiny_bundle, images, tmp_path):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(images), "--bundle", str(tiny_bundle[0]), "--out", str(out)]) == 0
    rows = _rows(out)
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in images.iterdir())
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert "not a decodable image" in broken["error"] and broken["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 21
    assert sum(r["label"] == f"class_{int(Path(r['path']).stem) % 3}" for r in good) >= 18


def test_a_rerun_skips_written_rows_and_redoes_a_half_written_one(tiny_bundle, images, tmp_path):
    out = tmp_path / "predictions.jsonl"
    args = ["predict", str(images), "--bundle", str(tiny_bundle[0]), "--out", str(out), "--batch-size", "4"]
    assert main(args) == 0
    complete = out.read_text().splitlines()
    out.write_text("\n".join(complete[:10]) + "\n" + complete[10][:25])  # killed mid-row
    assert main(args) == 0
    assert sorted(out.read_text().splitlines()) == sorted(complete)


def test_shards_merged_equal_the_whole_run_and_parquet_works(tiny_bundle, images, tmp_path):
    pytest.importorskip("pyarrow", reason="the parquet extra")
    bundle = str(tiny_bundle[0])
    whole = tmp_path / "whole.jsonl"
    assert main(["predict", str(images), "--bundle", bundle, "--out", str(whole)]) == 0
    parts = []
    for index in range(3):
        part = tmp_path / f"part-{index}.parquet"
        assert (
            main(["predict", str(images), "--bundle", bundle, "--out", str(part), "--shard", f"{index}/3"])
            == 0
        )
        parts.append(str(part))
    merged = tmp_path / "merged.jsonl"
    assert main(["predict", "merge", *parts, "--out", str(merged)]) == 0
    assert [r["path"] for r in _rows(merged)] == [r["path"] for r in _rows(whole)]
    assert [r["label"] for r in _rows(merged)] == [r["label"] for r in _rows(whole)]


def test_online_mode_sends_chunks_the_server_accepts(tiny_bundle, images, tmp_path, capsys):
    repo = tmp_path / "models"
    shutil.copytree(tiny_bundle[0], repo / "tiny" / "1")
    settings = Settings(
        model_repo=repo,
        batching=BatchingSettings(max_batch_size=4, max_queue_delay_ms=1),
        max_images_per_request=4,
        intra_op_threads=1,
        decode_threads=1,
    )
    files = sorted(str(p) for p in images.glob("0*.png"))[:10]
    with serve_in_thread(settings) as url:
        assert main(["predict", *files, "--url", url, "--model", "tiny"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len([line for line in printed if line.startswith(str(images))]) == 10

"""Bulk prediction's pieces: inputs, shards, output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgcls.errors import ConfigError
from service.bulk import list_inputs, merge_outputs, output_format, parse_shard


def test_shard_is_explicit_or_taken_from_the_indexed_job():
    assert parse_shard("1/4").index == 1 and parse_shard("1/4").count == 4
    assert parse_shard("4", {"JOB_COMPLETION_INDEX": "3"}).index == 3
    assert parse_shard(None).count == 1
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        parse_shard("4", {})
    with pytest.raises(ConfigError, match="needs 0 <= I < N"):
        parse_shard("4/4")


def test_shards_cover_the_inputs_exactly_once():
    items = [Path(f"{i}.png") for i in range(10)]
    parts = [parse_shard(f"{i}/3").take(items) for i in range(3)]
    assert sorted(p for part in parts for p in part) == items
    assert parts[0] == [Path("0.png"), Path("3.png"), Path("6.png"), Path("9.png")]


def test_inputs_from_a_folder_a_csv_or_a_list_file(tmp_path: Path):
    for name in ("b.png", "a/c.png", ".hidden.png"):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(tmp_path / "imgs")] == ["c.png", "b.png"]
    (tmp_path / "in.csv").write_text("path,other\nimgs/b.png,1\nimgs/a/c.png,2\nimgs/b.png,3\n")
    assert list_inputs(tmp_path / "in.csv") == [tmp_path / "imgs/a/c.png", tmp_path / "imgs/b.png"]
    (tmp_path / "in.txt").write_text("# photos\nimgs/b.png\n\n/abs/x.png\n")
    assert list_inputs(tmp_path / "in.txt") == [Path("/abs/x.png"), tmp_path / "imgs/b.png"]
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(ConfigError, match="no 'path' column"):
        list_inputs(tmp_path / "bad.csv")


def test_output_format_follows_the_suffix_or_the_option():
    assert output_format(Path("x.jsonl"), None) == "jsonl"
    assert output_format(Path("x.out"), "parquet") == "parquet"
    with pytest.raises(ConfigError, match=r"name it \.csv, \.jsonl or \.parquet"):
        output_format(Path("x.out"), None)


def test_merge_joins_shards_in_path_order_across_formats(tmp_path: Path):
    row = {"label": "a", "score": 0.9, "labels": None, "top_k": [{"label": "a", "score": 0.9}], "error": None}
    (tmp_path / "p0.jsonl").write_text(json.dumps({"path": "b.png", **row}) + "\n")
    (tmp_path / "p1.jsonl").write_text(json.dumps({"path": "a.png", **row}) + "\n")
    assert merge_outputs([tmp_path / "p0.jsonl", tmp_path / "p1.jsonl"], tmp_path / "all.csv") == 2
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert lines[0] == "path,label,score,labels,top_k,error"
    assert [line.split(",")[0] for line in lines[1:]] == ["a.png", "b.png"]
    back = merge_outputs([tmp_path / "all.csv"], tmp_path / "again.jsonl")
    assert back == 2
    first = json.loads((tmp_path / "again.jsonl").read_text().splitlines()[0])
    assert first["top_k"] == [{"label": "a", "score": 0.9}] and first["score"] == 0.9

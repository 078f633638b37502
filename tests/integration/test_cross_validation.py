"""`imgcls cv` and group-aware training end to end: real runs on tiny generated data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.errors import ConfigError
from tests.conftest import make_image
from trainer.cv import cross_validate
from trainer.train import train

pytestmark = pytest.mark.slow


def _grouped_csv(root: Path, groups_per_class: int = 6, per_group: int = 3) -> Path:
    """Three classes; each image belongs to a 'camera' group that holds one class."""
    rows = []
    for label in range(3):
        for g in range(groups_per_class):
            for i in range(per_group):
                index = g * per_group + i
                path = root / f"class_{label}" / f"{index:03d}.png"
                make_image(path, label, index)
                rows.append((path.relative_to(root).as_posix(), f"class_{label}", f"cam{label}-{g}"))
    with (root / "data.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "camera"])
        writer.writerows(rows)
    return root / "data.csv"


def test_group_column_keeps_every_group_in_one_split_and_records_it(tmp_path, tiny_config):
    data = _grouped_csv(tmp_path / "grouped")
    config = tiny_config(data, "data.group_column=camera", "train.epochs=1")
    result = train(config)
    with (result.run_dir / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    split_of_group: dict[str, set[str]] = {}
    for row in rows:
        split_of_group.setdefault(row["group"], set()).add(row["split"])
    assert len(split_of_group) == 18 and all(len(s) == 1 for s in split_of_group.values())
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["split_source"] == "grouped"
    assert report["groups"]["column"] == "camera"
    assert sum(report["groups"]["per_split"].values()) == 18


def test_a_group_holding_most_of_a_split_is_warned_about_in_the_data_report(tmp_path, tiny_config):
    data = _grouped_csv(tmp_path / "grouped", groups_per_class=3, per_group=4)
    config = tiny_config(data, "data.group_column=camera", "train.epochs=1", "data.group_share_warning=0.2")
    result = train(config)
    warnings = json.loads((result.run_dir / "data_report.json").read_text())["warnings"]
    assert any("above data.group_share_warning=0.2" in w for w in warnings)


def test_cv_trains_one_run_per_fold_and_writes_the_summary(tmp_path, tiny_config, make_imagefolder):
    data = make_imagefolder(classes=3, per_class=10)
    config = tiny_config(data, "train.epochs=1", "data.val_fraction=0.2")
    out = tmp_path / "cv"
    result = cross_validate(config, num_folds=3, out_dir=out)
    assert result.trained == [1, 2, 3]
    summary = json.loads((out / "cv.json").read_text())
    per_fold = summary["per_fold"]
    assert [row["test_images"] for row in per_fold] == [10, 10, 10]
    assert summary["summary"]["accuracy"]["mean"] == pytest.approx(sum(r["accuracy"] for r in per_fold) / 3)
    with (out / "folds.csv").open(newline="") as handle:
        folds = list(csv.DictReader(handle))
    assert len(folds) == 30 and {row["fold"] for row in folds} == {"1", "2", "3"}
    for fold in (1, 2, 3):  # each fold's run tested on exactly its fold's images
        with (out / f"fold-{fold}" / "split.csv").open(newline="") as handle:
            tested = {row["path"] for row in csv.DictReader(handle) if row["split"] == "test"}
        assert tested == {row["path"] for row in folds if row["fold"] == str(fold)}
    markdown = (out / "cv.md").read_text()
    assert "| mean ± sd |" in markdown and "| 95 % interval |" in markdown
    from benchmarks.cv_digits import fold_svm  # the benchmark's baseline reads the same fold runs

    svm = fold_svm(out / "fold-1")
    assert 0.0 <= svm["svm_default"] <= 1.0 and 0.0 <= svm["svm_tuned"] <= 1.0


def test_cv_rerun_skips_finished_folds_and_resumes_an_unfinished_one(tmp_path, tiny_config, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=9)
    config = tiny_config(data, "train.epochs=1")
    out = tmp_path / "cv"
    first = cross_validate(config, num_folds=3, out_dir=out)
    (out / "fold-2" / "metrics.json").unlink()  # as if the process died after its last checkpoint
    again = cross_validate(config, num_folds=3, out_dir=out)
    assert again.trained == [2]
    assert [row["accuracy"] for row in again.folds] == [row["accuracy"] for row in first.folds]
    assert cross_validate(config, num_folds=3, out_dir=out).trained == []


def test_cv_refuses_to_mix_another_recipe_into_a_folder(tmp_path, tiny_config, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=9)
    out = tmp_path / "cv"
    cross_validate(tiny_config(data, "train.epochs=1"), num_folds=3, out_dir=out)
    with pytest.raises(ConfigError, match="cross-validated before with a different folds"):
        cross_validate(tiny_config(data, "train.epochs=1"), num_folds=2, out_dir=out)
    with pytest.raises(ConfigError, match="different config_digest"):
        cross_validate(tiny_config(data, "train.epochs=1", "optim.lr=0.01"), num_folds=3, out_dir=out)


def test_cv_command_prints_mean_sd_and_interval(tmp_path, make_imagefolder):
    data = make_imagefolder(classes=2, per_class=8)
    args = ["cv", "--data", str(data), "--folds", "2", "--out", str(tmp_path / "cv")]
    for item in ("preprocess.image_size=16", "preprocess.resize=16", "train.epochs=1", "train.batch_size=8"):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "accuracy: " in result.output and "95 % interval" in result.output
    assert f"results: {tmp_path / 'cv' / 'cv.md'}" in result.output


def test_cv_on_multilabel_data_counts_images_and_summarises_map(tmp_path, tiny_config):
    root = tmp_path / "tags"
    rows = []
    for index in range(24):
        labels = [name for k, name in enumerate(("a", "b", "c")) if (index >> k) & 1]
        make_image(root / f"{index:03d}.png", index % 3, index)
        rows.append((f"{index:03d}.png", ";".join(labels)))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    config = tiny_config(root / "labels.csv", "task=multilabel", "train.epochs=1")
    result = cross_validate(config, num_folds=2, out_dir=tmp_path / "cv")
    for row in result.folds:  # images, not label occurrences
        assert row["train_images"] + row["val_images"] + row["test_images"] == 24
    assert "map" in result.summary and "recall_macro" not in result.summary
    with (tmp_path / "cv" / "folds.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "labels", "fold"]

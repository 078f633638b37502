"""EMA on a dataset with only a few optimiser steps per epoch: never worse than training without it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.train import train


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _stripes(root: Path, per_class: int = 20) -> Path:
    """Noisy grayscale images with a faint horizontal (class 0) or vertical (class 1) stripe.

    Learnable in a few dozen steps, but only once the weights have moved far from their random
    start: an average that still holds most of the initial weights scores at chance here.
    """
    for label in range(2):
        for index in range(per_class):
            rng = np.random.default_rng(label * 1000 + index)
            pixels = rng.normal(128, 40, (20, 20))
            position = rng.integers(4, 16)
            if label == 0:
                pixels[position - 2 : position + 2, :] += 60
            else:
                pixels[:, position - 2 : position + 2] += 60
            path = root / f"class_{label}" / f"{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(path)
    return root


def test_ema_with_few_steps_per_epoch_exports_a_model_as_good_as_without_ema(tmp_path, tiny_config):
    # 24 training images in batches of 8: 3 optimiser steps per epoch, 30 in all. Without the
    # warm-up, an EMA at 0.99 would still hold 0.99**30 = 74 % of the random initial weights.
    data = _stripes(tmp_path / "stripes")
    settings = (
        "train.epochs=10",
        "preprocess.color_mode=L",
        "augment.hflip=false",
        "optim.lr=0.003",
        "export.enabled=false",
    )
    without = train(tiny_config(data, "run_name=without-ema", "train.ema_decay=null", *settings))
    with_ema = train(tiny_config(data, "run_name=with-ema", "train.ema_decay=0.99", *settings))

    assert without.test_metrics["accuracy"] >= 0.9  # learnable in this budget
    assert with_ema.test_metrics["accuracy"] >= without.test_metrics["accuracy"] - 0.1

    rows = _metrics_rows(with_ema.run_dir)
    # validating the average draws nothing from the random stream: the live weights train identically
    live_columns = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [[row[c] for c in live_columns] for row in rows] == [
        [row[c] for c in live_columns] for row in _metrics_rows(without.run_dir)
    ]
    # the warmed-up average itself has left chance (0.5) well behind by the last epoch; it trails
    # the live weights by about its averaging window, so it may still be an image or two behind
    assert float(rows[-1]["ema_val_accuracy"]) >= 0.75
    summary = json.loads((with_ema.run_dir / "metrics.json").read_text())
    assert summary["best_weights"] in ("live", "ema")
    assert rows[summary["best_epoch"] - 1]["kept"] == summary["best_weights"]


def test_a_run_without_ema_validates_and_keeps_the_live_weights(make_imagefolder, tiny_config):
    result = train(tiny_config(make_imagefolder(classes=2, per_class=10), "export.enabled=false"))
    rows = _metrics_rows(result.run_dir)
    assert [row["kept"] for row in rows] == ["live", "live"]
    assert all(row["ema_val_accuracy"] == "" for row in rows)
    assert json.loads((result.run_dir / "metrics.json").read_text())["best_weights"] == "live"

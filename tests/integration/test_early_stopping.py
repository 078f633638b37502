"""Early stopping on a real run: a validation metric that cannot improve stops training after patience + 1
epochs, and the first epoch stays the best."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

from trainer.rundir import RunDir
from trainer.train import train


def test_training_stops_after_patience_epochs_without_improvement(
    make_imagefolder, tiny_config, caplog: pytest.LogCaptureFixture
):
    patience = 2
    # accuracy is at most 1, so no epoch can beat the first by more than min_delta = 1: nothing improves
    config = tiny_config(
        make_imagefolder(classes=2, per_class=10),
        "train.epochs=8",
        f"train.early_stopping_patience={patience}",
        "train.early_stopping_metric=accuracy",
        "train.early_stopping_min_delta=1.0",
    )
    with caplog.at_level(logging.INFO, logger="imgcls.train"):
        result = train(config, config_name="tiny")

    run = RunDir(result.run_dir)
    with run.metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(1, patience + 2))
    metrics = json.loads(run.metrics_json.read_text())
    assert metrics["epochs_run"] == patience + 1
    assert result.best_epoch == metrics["best_epoch"] == 1
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == 1
    stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("early stop")]
    assert len(stops) == 1, [r.getMessage() for r in caplog.records]
    assert f"has not improved for {patience} epochs" in stops[0] and "at epoch 1)" in stops[0]

"""Training on imbalanced classes end to end: the loss, weights and sampler the config names, selection
on balanced accuracy, and --resume still exact with the class-balanced sampler."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import make_image
from trainer.losses import FocalLoss
from trainer.rundir import RunDir
from trainer.train import train

pytestmark = pytest.mark.slow


def _imbalanced(root: Path) -> Path:
    for label, count in ((0, 40), (1, 40), (2, 8)):
        for index in range(count):
            make_image(root / f"class_{label}" / f"{index:03d}.png", label, index)
    return root


class _CrashError(Exception):
    pass


def test_focal_loss_effective_number_weights_and_balanced_sampling_train_and_select_on_balanced_accuracy(
    tiny_config, tmp_path, monkeypatch
):
    import trainer.train as train_module

    built = {}
    real = train_module.build_criterion

    def spy(*args, **kwargs):
        built["criterion"] = real(*args, **kwargs)
        built["counts"] = kwargs["counts"]
        return built["criterion"]

    monkeypatch.setattr(train_module, "build_criterion", spy)
    result = train(
        tiny_config(
            _imbalanced(tmp_path / "data"),
            "optim.loss=focal",
            "optim.focal_gamma=2",
            "optim.class_weights=effective_number",
            "optim.effective_number_beta=0.9",
            "train.sampler=class_balanced",
            "train.early_stopping_metric=balanced_accuracy",
            "train.epochs=3",
            "export.enabled=false",
        )
    )

    criterion = built["criterion"]
    assert isinstance(criterion, FocalLoss) and criterion.gamma == 2
    counts = built["counts"]
    assert counts[2] < counts[0] and criterion.weight[2] > criterion.weight[0]
    with (result.run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(0.0 <= float(r["val_balanced_accuracy"]) <= 1.0 for r in rows)
    best = max(rows, key=lambda r: float(r["val_balanced_accuracy"]))
    last = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["progress"]["best_value"] == pytest.approx(float(best["val_balanced_accuracy"]), abs=1e-5)


def test_resume_with_the_class_balanced_sampler_continues_bit_for_bit(tiny_config, tmp_path, monkeypatch):
    import trainer.fit as fit_module

    data = _imbalanced(tmp_path / "data")
    settings = (
        "train.epochs=3",
        "train.batch_size=8",
        "train.sampler=class_balanced",
        "export.enabled=false",
    )
    straight = train(tiny_config(data, "run_name=straight", *settings))
    real_write = fit_module._write_metrics_csv

    def crash_after_epoch_two(path, history):
        real_write(path, history)
        if len(history) == 2:
            raise _CrashError

    monkeypatch.setattr(fit_module, "_write_metrics_csv", crash_after_epoch_two)
    with pytest.raises(_CrashError):
        train(tiny_config(data, "run_name=crashed", *settings))
    monkeypatch.undo()
    run_dir = straight.run_dir.parent / "crashed"
    train(RunDir(run_dir).resume_config(), resume=run_dir)

    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)

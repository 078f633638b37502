"""ModelEma: the warmed-up decay, what is averaged and what is copied, and the weights a run keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer.ema import ModelEma, warmed_up_decay
from trainer.fit import _better_weights


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_the_decay_warms_up_from_a_tenth_to_the_configured_value():
    assert warmed_up_decay(0.99, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.99, 8) == pytest.approx(0.5)
    assert warmed_up_decay(0.99, 10_000) == 0.99
    assert [warmed_up_decay(0.999, n) for n in range(50)] == sorted(
        warmed_up_decay(0.999, n) for n in range(50)
    )


def test_after_thirty_updates_the_average_holds_almost_none_of_the_initial_weights():
    live = _net()
    ema = ModelEma(live, decay=0.99)
    with torch.no_grad():
        for p in live.parameters():
            p.fill_(1.0)
    for _ in range(30):
        ema.update(live)
    # a plain EMA would still be 0.99**30 = 74 % initial weights; the warm-up leaves under 1e-6
    for p in ema.module.parameters():
        torch.testing.assert_close(p, torch.ones_like(p), atol=1e-6, rtol=0)


def test_batchnorm_statistics_are_averaged_and_the_batch_counter_copied():
    live = _net()
    ema = ModelEma(live, decay=0.99)
    live.train()
    live(torch.randn(16, 4) + 5.0)  # moves the live running mean and counts one batch
    ema.update(live)  # first update: decay 0.1
    live_bn, ema_bn = live[1], ema.module[1]
    torch.testing.assert_close(ema_bn.running_mean, 0.9 * live_bn.running_mean)
    assert ema_bn.num_batches_tracked.item() == live_bn.num_batches_tracked.item() == 1


def test_the_average_is_never_trained_and_stays_in_eval_mode():
    ema = ModelEma(_net(), decay=0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_round_trips_and_checkpoints_of_the_old_averaged_model_still_load():
    live = _net()
    ema = ModelEma(live, decay=0.9)
    ema.update(live)
    restored = ModelEma(_net(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1

    legacy = AveragedModel(live, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    legacy.update_parameters(live)
    legacy.update_parameters(live)
    from_legacy = ModelEma(_net(), decay=0.9)
    from_legacy.load_state_dict(legacy.state_dict())
    assert from_legacy.updates == 2
    torch.testing.assert_close(from_legacy.module[0].weight, legacy.module[0].weight)


@pytest.mark.parametrize(
    ("metric", "live", "ema", "kept"),
    [
        ("accuracy", {"accuracy": 0.9, "loss": 0.3}, {"accuracy": 0.5, "loss": 0.7}, "live"),
        ("accuracy", {"accuracy": 0.8, "loss": 0.3}, {"accuracy": 0.9, "loss": 0.4}, "ema"),
        ("accuracy", {"accuracy": 0.9, "loss": 0.3}, {"accuracy": 0.9, "loss": 0.4}, "live"),  # tie: loss
        ("loss", {"loss": 0.3}, {"loss": 0.3}, "ema"),  # a full tie keeps the average
        ("loss", {"loss": 0.2}, {"loss": 0.3}, "live"),
        ("f1_macro", {"f1_macro": 0.5, "loss": 0.3}, None, "live"),
    ],
)
def test_the_better_of_live_and_averaged_weights_is_kept(metric, live, ema, kept):
    assert _better_weights(metric, live, ema) == kept

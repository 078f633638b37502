"""The pieces of data-parallel training that need no second process: how the global batch divides,
which images each rank trains on, and how evaluation shares come back together."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from imgcls.errors import ConfigError
from trainer.distributed import Distributed, micro_batch_size


def test_the_global_batch_divides_over_processes_and_accumulation_steps():
    assert micro_batch_size(64, 1, 1) == 64
    assert micro_batch_size(64, 2, 1) == 32
    assert micro_batch_size(64, 2, 4) == 8


def test_a_global_batch_that_does_not_divide_is_refused_with_the_nearest_that_do():
    with pytest.raises(
        ConfigError, match=r"train.batch_size=64 is the global batch.*3 process.*use 63 or 66"
    ):
        micro_batch_size(64, 3, 1)
    with pytest.raises(ConfigError, match=r"use 8\b"):
        micro_batch_size(5, 4, 2)


def _batches_by_step(tiny_config, data_dir, monkeypatch, world_size: int, accumulation: int, *settings):
    """For each rank, the training indices of each optimizer step of epoch 3, as fit draws them."""
    from trainer.datasets import ImageDataset
    from trainer.fit import epoch_seed
    from trainer.train import build_loaders, load_data, set_up_compute

    monkeypatch.setattr(ImageDataset, "__getitem__", lambda self, index: (index, 0))
    config = tiny_config(
        data_dir, "train.batch_size=8", f"train.grad_accumulation_steps={accumulation}", *settings
    )
    data = load_data(config, None)
    steps: list[list[list[int]]] = []
    for rank in range(world_size):
        dist = Distributed(rank=rank, world_size=world_size)
        loaders = build_loaders(config, data, set_up_compute(config), dist)
        loaders.shuffle_generator.manual_seed(epoch_seed(config.train.seed, 2))
        micro = [batch.tolist() for batch, _ in loaders.train]
        assert all(len(b) == 8 // (world_size * accumulation) for b in micro)
        steps.append(
            [[i for b in micro[s : s + accumulation] for i in b] for s in range(0, len(micro), accumulation)]
        )
    return steps


@pytest.mark.parametrize("sampler", ["shuffle", "class_balanced"])
@pytest.mark.parametrize(("world_size", "accumulation"), [(2, 1), (4, 1), (2, 2), (1, 4)])
def test_the_ranks_train_step_by_step_on_the_images_one_process_would(
    tiny_config, make_imagefolder, monkeypatch, sampler, world_size, accumulation
):
    data_dir = make_imagefolder(classes=3, per_class=15)
    settings = (f"train.sampler={sampler}",)
    (alone,) = _batches_by_step(tiny_config, data_dir, monkeypatch, 1, 1, *settings)
    ranks = _batches_by_step(tiny_config, data_dir, monkeypatch, world_size, accumulation, *settings)
    assert all(len(steps) == len(alone) for steps in ranks)  # whole global batches, the same number
    for step, expected in enumerate(alone):
        # the same images as often (class_balanced draws with replacement), split over the ranks
        assert sorted(i for steps in ranks for i in steps[step]) == sorted(expected)


def test_the_split_is_checked_to_hold_one_global_batch(tiny_config, make_imagefolder):
    from trainer.train import build_loaders, load_data, set_up_compute

    config = tiny_config(make_imagefolder(classes=2, per_class=10), "train.batch_size=64")
    data = load_data(config, None)
    with pytest.raises(ConfigError, match=r"fewer than one global batch \(train.batch_size=64\)"):
        build_loaders(config, data, set_up_compute(config), Distributed(rank=0, world_size=2))


class _FakeGroup(Distributed):
    """Ranks whose all_gather returns the shares set up in the test."""

    shares: ClassVar[list] = []

    def all_gather(self, value):
        return self.shares


def test_evaluation_shares_come_back_in_the_splits_order():
    logits = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    labels = np.arange(7)
    dist = _FakeGroup(rank=0, world_size=3)
    _FakeGroup.shares = [(logits[r::3], labels[r::3]) for r in range(3)]  # what each rank's shard holds
    gathered_logits, gathered_labels = dist.gather_predictions(logits[0::3], labels[0::3])
    np.testing.assert_array_equal(gathered_logits, logits)
    np.testing.assert_array_equal(gathered_labels, labels)
    assert [list(Distributed(rank=r, world_size=3).shard(7)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_one_process_is_rank_zero_of_one_and_its_collectives_are_identities():
    dist = Distributed()
    assert dist.is_main and not dist.enabled
    assert dist.broadcast("x") == "x" and dist.all_gather(3) == [3]
    assert dist.mean({"loss": 2.0}, weight=5) == {"loss": 2.0}


def test_more_processes_than_gpus_on_a_node_is_refused_with_the_fix(monkeypatch):
    import torch

    from trainer.distributed import join

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"process 1 on this node has no GPU of its own \(1 visible\)"):
        join("cuda")


def test_sync_batchnorm_is_refused_on_cpu_where_torch_has_no_kernel_for_it(tiny_config, tmp_path):
    from trainer.train import set_up_compute

    config = tiny_config(tmp_path, "train.sync_batchnorm=true", "train.device=cpu")
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm needs CUDA"):
        set_up_compute(config, Distributed(rank=0, world_size=2))
    set_up_compute(config)  # one process: nothing to synchronise, nothing to refuse

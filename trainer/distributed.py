"""Data-parallel training: the processes of one run, as torchrun starts them.

torchrun (``imgcls train --nproc N``, ``torchrun -m imgcls train``, or a Kubernetes job) sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in every process; :func:`join` reads them and joins the
process group (Gloo on CPU, NCCL on CUDA). Without them a run is one process and every method here is
a no-op, so the recipe reads the same either way.

How a run divides its work, so that N processes train what one process would with the same config:

- ``train.batch_size`` is the global batch, the images of one optimizer step across all processes.
  Each process takes ``batch_size / (world_size * grad_accumulation_steps)`` per forward pass.
- Every process draws the same epoch order from the same per-epoch seed, and takes every
  ``world_size``-th index of it (:class:`RankSlice`), so step k of the run sees exactly the images of
  step k of one process with the same global batch; DDP averages the gradients.
- Validation and test are split the same way and gathered back in order, so every process computes
  the same metrics and makes the same early-stopping decision; only rank 0 writes files.
- Batch norm normalises over each process's own micro-batch unless ``train.sync_batchnorm``
  (CUDA only: torch's SyncBatchNorm does not run on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from imgcls.errors import ConfigError

__all__ = ["Distributed", "RankSlice", "join", "micro_batch_size", "seed_worker"]

log = logging.getLogger("imgcls.train")

# Rank 0 scans the data before the others hear from it, and validates while they wait at most one
# epoch's evaluation: generous, so that a large dataset never times out a healthy run.
_COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank 0 of 1 when training in one process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def shard(self, items: int) -> range:
        """The indices of ``items`` this rank evaluates: every ``world_size``-th, from its rank."""
        return range(self.rank, items, self.world_size)

    def gather_predictions(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole split's logits and labels, in the split's order, from each rank's :meth:`shard`."""
        if not self.enabled:
            return logits, labels
        parts = self.all_gather((logits, labels))
        total = sum(len(part_logits) for part_logits, _ in parts)
        all_logits = np.empty((total, *logits.shape[1:]), dtype=logits.dtype)
        all_labels = np.empty((total, *labels.shape[1:]), dtype=labels.dtype)
        for rank, (part_logits, part_labels) in enumerate(parts):
            all_logits[rank :: self.world_size] = part_logits
            all_labels[rank :: self.world_size] = part_labels
        return all_logits, all_labels

    def mean(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """Each value averaged over the ranks, weighted by ``weight`` (e.g. images seen)."""
        if not self.enabled:
            return values
        keys = sorted(values)
        totals = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
        if self.backend == "nccl":
            totals = totals.cuda()
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
        return {k: float(totals[i] / totals[-1]) for i, k in enumerate(keys)}

    def wrap(self, model: nn.Module, device: torch.device, *, find_unused_parameters: bool) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's weights broadcast to all), or as it is."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def wait_for_exit_of_rank_zero(self) -> None:
        """Block until rank 0's process is gone (a barrier it never joins fails then)."""
        if self.enabled and not self.is_main:
            # the barrier fails when rank 0 closes its connections: the exit awaited
            with contextlib.suppress(Exception):
                torch.distributed.barrier()

    def leave(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join(device_choice: str) -> Distributed:
    """This process's :class:`Distributed`, joining the process group when torchrun started it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local_rank} on this node has no GPU of its own ({torch.cuda.device_count()} "
                "visible); start at most one process per GPU (--nproc), or train.device=cpu"
            )
        torch.cuda.set_device(local_rank)  # NCCL's collectives run on the current device
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=_COLLECTIVE_TIMEOUT)
    if rank != 0:
        # one log, one progress bar: the other ranks only speak up about problems
        logging.getLogger("imgcls").setLevel(logging.WARNING)
    return Distributed(rank, local_rank, world_size, backend)


def micro_batch_size(global_batch: int, world_size: int, accumulation_steps: int) -> int:
    """The images each process takes per forward pass; refuses a global batch that does not divide."""
    parts = world_size * accumulation_steps
    if global_batch % parts:
        lower, higher = global_batch // parts * parts, (global_batch // parts + 1) * parts
        lower_hint = f"{lower} or " if lower else ""
        raise ConfigError(
            f"train.batch_size={global_batch} is the global batch (images per optimizer step): it must "
            f"divide evenly over {world_size} process(es) x {accumulation_steps} accumulation step(s); "
            f"use {lower_hint}{higher}"
        )
    return global_batch // parts


class RankSlice(Sampler[int]):
    """This rank's share of ``base``'s order: every ``world_size``-th index from ``rank``, cut to the
    ``per_rank`` indices that fill whole global batches.

    ``base`` draws from a generator every rank seeds alike, so the ranks' shares are disjoint, and
    together they are, step by step, the batches one process would train on.
    """

    def __init__(self, base: Sampler[int], rank: int, world_size: int, per_rank: int) -> None:
        self.base, self.rank, self.world_size, self.per_rank = base, rank, world_size, per_rank

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)[: self.per_rank * self.world_size]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.per_rank


def seed_worker(rank: int, worker_id: int) -> None:
    """A DataLoader worker's seed: torch's own per-worker seed, moved apart for each rank, so that
    ranks given the same loader seed still augment differently."""
    seed = (torch.initial_seed() + rank * 1_000_003) % 2**32
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

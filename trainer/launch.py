"""``imgcls train --nproc N``: the same command, run by torchrun's launcher in N processes.

torchrun's own launcher (``torch.distributed.launcher``) starts the processes on this machine with a
c10d rendezvous on a free local port, as ``torchrun --standalone`` does, and waits for them. A process
that fails has already printed its error the way ``imgcls`` prints errors; its exit code becomes the
command's, without the launcher's traceback on top.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

__all__ = ["relaunch_with_torchrun"]


def relaunch_with_torchrun(nproc: int, train_args: list[str]) -> int:
    """Run ``imgcls train TRAIN_ARGS`` in ``nproc`` processes; the exit code of the first that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun's choice would be 1 thread each; on CPU the processes share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # the launcher logs each failure with a pointer to its traceback; the processes' own messages suffice
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "imgcls", "train", *train_args)
    except ChildFailedError as failed:
        # The code a process chose (rank 0's first), not the signal the launcher stopped the rest with
        # (reported as a negative number).
        codes = [failed.failures[rank].exitcode for rank in sorted(failed.failures)]
        return next((code for code in codes if code > 0), 1)
    return 0

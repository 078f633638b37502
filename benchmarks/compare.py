"""`imgcls bench compare`: imgcls and the servers users would pick instead, one after another,
same bundle, same preprocessing, same request bodies, same load generator, same machine.

The peers live in ``benchmarks/peers/`` (install their frameworks with ``pip install -e .[peers]``);
a peer whose framework is not installed is listed with the reason and skipped, never faked. The
in-process ceiling is measured in the same run (see ``benchmarks.ceiling``), so the table shows how
close each server comes to what the hardware can do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import Payload, run, run_closed_loop
from benchmarks.servers import ServerSpec, free_port, imgcls_server, peer_server, running

__all__ = ["PEERS", "Peer", "missing_framework", "run_server", "specs"]


@dataclass(frozen=True)
class Peer:
    label: str
    module: str  # benchmarks.peers.<module>
    framework: str  # the import that must succeed
    batches: bool  # whether the framework has dynamic batching (and gets the batching options)


PEERS = (
    Peer("fastapi (no batching)", "fastapi_plain", "fastapi", batches=False),
    Peer("litserve", "litserve_server", "litserve", batches=True),
    Peer("ray serve", "rayserve_server", "ray.serve", batches=True),
)


def missing_framework(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    root = peer.framework.split(".")[0]
    if importlib.util.find_spec(root) is None:
        return f"{root} is not installed (pip install -e .[peers])"
    if importlib.util.find_spec(f"benchmarks.peers.{peer.module}") is None:
        return f"benchmarks/peers/{peer.module}.py is missing"
    return None


def specs(
    model_repo: Path,
    model: str,
    *,
    max_batch_size: int,
    max_queue_delay_ms: float,
    intra_op_threads: int,
) -> list[tuple[ServerSpec | None, str, int, str | None]]:
    """(spec, label, port, why skipped) for imgcls and every peer; all run the model with
    ``intra_op_threads`` runtime threads, so they differ only in how they serve."""
    out = []
    port = free_port()
    env = {
        "IMGCLS_BATCHING__MAX_BATCH_SIZE": str(max_batch_size),
        "IMGCLS_BATCHING__MAX_QUEUE_DELAY_MS": str(max_queue_delay_ms),
        "IMGCLS_INTRA_OP_THREADS": str(intra_op_threads),
    }
    out.append((imgcls_server(model_repo, port, env=env), "imgcls", port, None))
    for peer in PEERS:
        reason = missing_framework(peer)
        port = free_port()
        options = ["--intra-op-threads", str(intra_op_threads)]
        if peer.batches:
            options += [
                "--max-batch-size",
                str(max_batch_size),
                "--max-queue-delay-ms",
                str(max_queue_delay_ms),
            ]
        spec = (
            None
            if reason
            else peer_server(peer.module, model_repo, model, port, label=peer.label, options=options)
        )
        out.append((spec, peer.label, port, reason))
    return out


def run_server(
    spec: ServerSpec,
    port: int,
    payloads: list[Payload],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> dict:
    url = f"http://127.0.0.1:{port}"
    probe = payloads[0]
    with running(spec, url, probe.path, probe.content, probe.headers):
        result = run(run_closed_loop(url, payloads, concurrency, warmup_s, duration_s))
    return result.summary()

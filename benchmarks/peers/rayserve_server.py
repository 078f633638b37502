"""Ray Serve with its dynamic batching (``@serve.batch``), behind Ray Serve's HTTP proxy.

Follows Ray Serve's "Dynamic Request Batching" guide and its FastAPI ingress recipe ("Set Up FastAPI
and HTTP"): a deployment class with ``@serve.ingress(app)`` loads the model in ``__init__``, and an
``async def`` method under ``@serve.batch`` takes a list of single inputs and returns one output
each. The batch parameters come from the command line through ``set_max_batch_size`` and
``set_batch_wait_timeout_s``, the guide's way to change them after decoration; the guide's advice
``max_ongoing_requests >= max_batch_size`` is followed with twice that (Ray's default is 5), so
one batch can fill while the other computes. The body is a pydantic model, so a malformed one
is refused (400) before it reaches the batch.

Ray batches *calls*, so the endpoint decodes a request's images (in a thread, keeping the replica's
event loop free) and submits each image as its own call, awaiting them together: ``max_batch_size``
counts images, as imgcls's does, and a request with k images gets its k answers in order. A bad
image fails only its own request, since decoding happens before the batch. The model call runs in a
thread too, so the replica keeps accepting and decoding while a batch computes, as imgcls does.

Knobs: ``--max-batch-size`` (default 32) and ``--max-queue-delay-ms`` (default 5, Ray's
``batch_wait_timeout_s`` in seconds) as imgcls's; ``--workers`` replicas (default 1), each with Ray's
default ``num_cpus=1``, so at most one per core, on a local Ray instance given every core. With more
than one replica, give each ``--intra-op-threads`` of about cores / replicas. Ray's workers run at
nice 0 instead of Ray's default 15 (which would put the replica below the load generator on a shared
machine), and Serve's access log is off, as the other servers'. SIGTERM or Ctrl-C (to this process)
shuts Serve down, then Ray.

    python -m benchmarks.peers.rayserve_server --model-repo models --model digits --port 8003
"""

# No ``from __future__ import annotations``: Ray ships this class to its replica by value when the
# module runs as __main__, and FastAPI must then resolve the body's type from a real annotation.

import asyncio
import os
import signal
import threading
from pathlib import Path

import numpy as np
import ray
from fastapi import FastAPI, HTTPException
from ray import serve
from ray.serve.schema import LoggingConfig

from benchmarks.peers.common import (
    BadInputError,
    PredictRequest,
    answer_validation_errors_with_400,
    load_model,
    parse_args,
)

__all__ = ["ImageClassifier", "main"]

app = FastAPI(title="peer: Ray Serve")
answer_validation_errors_with_400(app)


@serve.deployment
@serve.ingress(app)
class ImageClassifier:
    def __init__(
        self,
        bundle_dir: Path,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        device: str,
        intra_op_threads: int | None,
    ) -> None:
        self.model = load_model(
            bundle_dir, device=device, intra_op_threads=intra_op_threads, max_batch_size=max_batch_size
        )
        self.infer.set_max_batch_size(max_batch_size)
        self.infer.set_batch_wait_timeout_s(max_queue_delay_ms / 1000)

    @app.post("/v1/models/{name}:predict")
    async def predict(self, name: str, body: PredictRequest) -> dict:
        if name != self.model.name:
            raise HTTPException(404, f"unknown model {name!r}; this server serves {self.model.name!r}")
        try:
            images = await asyncio.to_thread(self.model.preprocess_request, body)
        except BadInputError as exc:
            raise HTTPException(400, str(exc)) from None
        probabilities = await asyncio.gather(*(self.infer(image) for image in images))
        return {"predictions": self.model.predictions(np.stack(probabilities))}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # replaced in __init__
    async def infer(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(await asyncio.to_thread(self.model.infer, np.stack(images)))


def main(argv: list[str] | None = None) -> None:
    args, bundle_dir = parse_args(
        "Serve a bundle with Ray Serve (dynamic batching).", argv, batching=True, workers=True
    )
    # Ray starts its workers (so the replica) at nice 15, below the load generator on a shared machine;
    # its own job manager sets 0 for submitted jobs, and so does this.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=args.log_level.upper())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        logging_config = LoggingConfig(log_level=args.log_level.upper(), enable_access_log=False)
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=logging_config)
        deployment = ImageClassifier.options(
            num_replicas=args.workers, max_ongoing_requests=2 * args.max_batch_size
        ).bind(
            bundle_dir.resolve(),
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            device=args.device,
            intra_op_threads=args.intra_op_threads,
        )
        serve.run(deployment, route_prefix="/", logging_config=logging_config)
        stop.wait()
        # Serve's graceful shutdown, but bounded: when the signal went to the whole process group,
        # Ray's own processes have stopped too and Serve's controller never answers.
        shutdown = threading.Thread(target=serve.shutdown, daemon=True)
        shutdown.start()
        shutdown.join(timeout=10)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

"""LitServe with its dynamic batching.

Follows LitServe's batching recipe (docs: "Batching"; ``LitAPI`` reference): a ``LitAPI`` with
``setup`` (load the model once per worker), ``decode_request``, ``batch``, ``predict``, ``unbatch``
and ``encode_response``, with ``max_batch_size`` and ``batch_timeout`` passed to ``LitAPI`` (LitServe
0.2.x deprecates them on ``LitServer``) and ``api_path`` set to the contract's route. The request
type is a pydantic model, as LitServe's docs show, so a malformed body is refused (400) in the HTTP
process before it reaches the batch.

LitServe batches *requests*: one request is one item, and ``max_batch_size`` counts requests.
``decode_request`` turns a request into its stacked images ``[k, C, H, W]`` (the benchmark sends
k = 1); ``batch`` concatenates the items and remembers each one's k, ``predict`` makes one model call
and splits the result back per request, so a multi-image request is answered whole and in order.
An image that does not decode fails its request with 400, and every request batched with it too:
LitServe's batched loop answers one exception to the whole batch.

Knobs: ``--max-batch-size`` (default 32) and ``--max-queue-delay-ms`` (default 5, LitServe's
``batch_timeout`` in seconds) as imgcls's; ``--workers`` inference worker processes (LitServe's
``workers_per_device``, default 1) with one uvicorn API process per worker (LitServe's default
``num_api_servers``); ``accelerator="cpu"`` only so that LitServe starts exactly ``--workers``
processes, the runtime's device is picked by imgcls's ``choose_runtime``. With more than one worker,
give each ``--intra-op-threads`` of about cores / workers, or the workers' runtimes fight for cores.
Decoding runs in the worker process, serially before each batch, which is where LitServe puts it.
``fast_queue`` (ZeroMQ, which LitServe suggests past 100 requests/s) made no measurable difference in
a smoke run on 2 cores, so LitServe's default transport is kept.
LitServe's main process waits on an event and has no SIGTERM handler, so one is installed here that
starts LitServe's own graceful shutdown (the same path as Ctrl-C).

    python -m benchmarks.peers.litserve_server --model-repo models --model digits --port 8002
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation at run time
# to make the request body a pydantic model, and a string there would turn it into a query parameter.

import os
import signal
from pathlib import Path

import litserve as ls
import numpy as np
from fastapi import HTTPException

from benchmarks.peers.common import (
    BadInputError,
    PredictRequest,
    answer_validation_errors_with_400,
    load_model,
    parse_args,
)
from imgcls.manifest import load_manifest

__all__ = ["ImageClassifierAPI", "build_server", "main"]


class ImageClassifierAPI(ls.LitAPI):
    """Pickled into each worker process: it carries the bundle path, and loads the model in ``setup``."""

    def __init__(
        self, bundle_dir: Path, *, device: str, intra_op_threads: int | None, **litapi_options
    ) -> None:
        super().__init__(**litapi_options)
        self.bundle_dir = bundle_dir
        self.runtime_device = device
        self.intra_op_threads = intra_op_threads

    def setup(self, device: str) -> None:
        self.model = load_model(
            self.bundle_dir,
            device=self.runtime_device,
            intra_op_threads=self.intra_op_threads,
            max_batch_size=self.max_batch_size,
        )

    def decode_request(self, request: PredictRequest) -> np.ndarray:
        try:
            return self.model.preprocess_request(request)
        except BadInputError as exc:  # LitServe answers it to every request in this batch
            raise HTTPException(400, str(exc)) from None

    def batch(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, x: tuple[np.ndarray, list[int]] | np.ndarray) -> list[np.ndarray] | np.ndarray:
        if isinstance(x, np.ndarray):  # --max-batch-size 1: LitServe calls neither batch nor unbatch
            return self.model.infer(x)
        images, sizes = x
        return np.split(self.model.infer(images), np.cumsum(sizes)[:-1])

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"predictions": self.model.predictions(output)}


def build_server(
    bundle_dir: Path,
    model_name: str,
    *,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 5.0,
    workers: int = 1,
    device: str = "auto",
    intra_op_threads: int | None = None,
) -> ls.LitServer:
    api = ImageClassifierAPI(
        bundle_dir,
        device=device,
        intra_op_threads=intra_op_threads,
        max_batch_size=max_batch_size,
        batch_timeout=max_queue_delay_ms / 1000,
        api_path=f"/v1/models/{model_name}:predict",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers)
    answer_validation_errors_with_400(server.app)
    return server


def main(argv: list[str] | None = None) -> None:
    args, bundle_dir = parse_args(
        "Serve a bundle with LitServe (dynamic batching).", argv, batching=True, workers=True
    )
    server = build_server(
        bundle_dir,
        load_manifest(bundle_dir).name,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        workers=args.workers,
        device=args.device,
        intra_op_threads=args.intra_op_threads,
    )
    # SIGTERM takes LitServe's Ctrl-C path (a graceful shutdown of its processes); its forked uvicorn
    # processes keep the default handler, since uvicorn re-raises the signal once it has shut down.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)


if __name__ == "__main__":
    main()

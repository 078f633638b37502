"""The naive baseline: a plain FastAPI endpoint on uvicorn, no batching.

Follows FastAPI's own recipes: the model loads in the ``lifespan`` (the "Lifespan Events" page, whose
example loads an ML model), the body is a pydantic model, and the endpoint is a plain ``def``, so
FastAPI runs it in its threadpool ("Concurrency and async / await") and the event loop stays free.
Each request is decoded, preprocessed and sent to the model on its own: one request, one model call.

Knobs: nothing beyond what imgcls itself has (``--intra-op-threads``, default the runtime's own).
Concurrent requests run concurrent model calls, up to AnyIO's threadpool limit of 40, each with the
runtime's intra-op threads: that is what a user who writes this endpoint gets. One uvicorn worker;
access log off (``--log-level warning``), as imgcls turns uvicorn's off.

    python -m benchmarks.peers.fastapi_plain --model-repo models --model digits --port 8001
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request

from benchmarks.peers.common import (
    BadInputError,
    Model,
    PredictRequest,
    answer_validation_errors_with_400,
    load_model,
    parse_args,
)

__all__ = ["create_app", "main"]


def create_app(bundle_dir: Path, *, device: str = "auto", intra_op_threads: int | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model = load_model(bundle_dir, device=device, intra_op_threads=intra_op_threads)
        yield

    app = FastAPI(title="peer: plain FastAPI", lifespan=lifespan)
    answer_validation_errors_with_400(app)

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: PredictRequest, request: Request) -> dict:
        model: Model = request.app.state.model
        if name != model.name:
            raise HTTPException(404, f"unknown model {name!r}; this server serves {model.name!r}")
        try:
            batch = model.preprocess_request(body)
        except BadInputError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"predictions": model.predictions(model.infer(batch))}

    return app


def main(argv: list[str] | None = None) -> None:
    args, bundle_dir = parse_args("Serve a bundle with plain FastAPI (no batching).", argv)
    app = create_app(bundle_dir, device=args.device, intra_op_threads=args.intra_op_threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)  # stops on SIGTERM/SIGINT


if __name__ == "__main__":
    main()

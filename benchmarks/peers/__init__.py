"""Peer servers: the same model bundle served by the alternatives a user would pick, for benchmarks.

Every peer serves ``POST /v1/models/{name}:predict`` (KServe v1 JSON, ``{"instances": [{"b64": ...}]}``)
so that ``benchmarks/load.py`` drives them all, and builds its model and preprocessing with
:mod:`benchmarks.peers.common` (imgcls's own code), so a comparison measures only the serving layer.

| module | framework | batching |
|---|---|---|
| ``fastapi_plain`` | FastAPI + uvicorn | none: one request, one model call (the naive baseline) |
| ``litserve_server`` | LitServe | ``LitAPI(max_batch_size, batch_timeout)``, requests batched in a worker process |
| ``rayserve_server`` | Ray Serve | ``@serve.batch``, images batched in a replica behind Ray's HTTP proxy |

LitServe and Ray are not imgcls dependencies: ``pip install -e '.[peers]'`` adds them (litserve 0.2.19
and ray 2.60 changed none of imgcls's pinned packages when checked). ``imgcls bench compare`` skips, and
names, any peer whose framework is missing.
"""

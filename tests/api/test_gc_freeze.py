"""Once the models are loaded, what exists is frozen out of the cyclic GC (full collections stalled
every thread for about 200 ms and made the p99 under load; docs/performance.md)."""

from __future__ import annotations

import gc
import time

from fastapi.testclient import TestClient


def test_objects_alive_after_loading_are_frozen_out_of_the_collector(client: TestClient):
    deadline = time.monotonic() + 10
    while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gc.get_freeze_count() > 10_000  # torch, the runtimes and the app, at least
    assert client.get("/readyz").status_code == 200

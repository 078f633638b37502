"""Every served model version, loaded from the repository; name/version lookups for the routes."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from imgcls import errors
from imgcls.repository import BundleRef, ModelRepository, select_version
from service.errors import ModelNotFoundError, ModelNotReadyError
from service.preprocess import init_decode_thread
from service.settings import Settings
from service.worker import ModelWorker

__all__ = ["ModelRegistry"]


class ModelRegistry:
    def __init__(self, settings: Settings, observers: list | None = None) -> None:
        self.settings = settings
        self.observers = list(observers or [])  # handed to every worker (metrics)
        self.repository = ModelRepository(settings.model_repo)
        self.decode_pool = ThreadPoolExecutor(
            max_workers=settings.decode_threads,
            thread_name_prefix="decode",
            initializer=init_decode_thread,
        )
        self.workers: dict[str, dict[int, ModelWorker]] = {}
        self.loaded = asyncio.Event()  # set once every bundle has been tried
        self.scanned = False
        self.draining = False  # set on SIGTERM: not ready, no new work

    def _add(self, refs: list[BundleRef]) -> None:
        for ref in refs:
            worker = ModelWorker(
                ref,
                self.settings.for_model(ref.name),
                self.decode_pool,
                self.settings.max_image_pixels,
                explain=self.settings.explain,
            )
            worker.observers.extend(self.observers)
            self.workers.setdefault(ref.name, {})[ref.version] = worker
        self.scanned = True

    async def load_all(self) -> None:
        """Verify (checksums: off the loop), load and warm up every bundle; failures stay listed with the reason."""
        try:
            # Checksums are hashed on a thread; the workers are created here, on the loop that reads them.
            self._add(await asyncio.to_thread(self.repository.scan))
            for worker in self.all():
                await worker.load()  # one at a time: loading in parallel only fights over the cores
        finally:
            self.loaded.set()

    @property
    def names(self) -> list[str]:
        return sorted(self.workers)

    def all(self) -> list[ModelWorker]:
        return [w for name in self.names for _, w in sorted(self.workers[name].items())]

    @property
    def ready(self) -> bool:
        """Every bundle has been tried and every one that verified is loaded and warm (failures don't block)."""
        return (
            not self.draining
            and self.loaded.is_set()
            and all(w.ready for w in self.all() if w.state != "failed")
        )

    def get(self, name: str, version: int | None = None) -> ModelWorker:
        if self.draining:
            raise ModelNotReadyError("the server is shutting down; retry against another replica")
        versions = self.workers.get(name)
        if not versions and not self.scanned:
            raise ModelNotReadyError("the model repository is still being verified; retry shortly")
        try:
            return select_version(self.workers, name, version, usable=lambda worker: worker.ready)
        except errors.ModelNotFoundError as exc:
            raise ModelNotFoundError(str(exc)) from None

    async def stop(self, drain: bool = True) -> None:
        for worker in self.all():
            await worker.stop(drain=drain)
        self.decode_pool.shutdown(wait=False)

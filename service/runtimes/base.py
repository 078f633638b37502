"""The runtime interface: a batch of preprocessed images in, class probabilities out.

Runtimes are not thread-safe by contract: each model version calls its runtime from one
dedicated executor thread (see ``service.worker``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from imgcls.formats import RuntimeName

__all__ = ["Runtime", "sigmoid", "softmax", "warm_up"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # the tanh form never overflows, whatever the logit
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


class Runtime(ABC):
    """``infer(float32 [N, C, H, W]) -> float32 [N, classes]`` scores: softmax probabilities,
    temperature-scaled, or for a multilabel bundle each label's sigmoid."""

    name: RuntimeName
    device: str
    precision: str
    max_batch_size: int | None = None  # the largest batch it accepts (a TensorRT engine's max shape)
    accepts_device_tensors: bool = False  # infer_tensor takes a batch on its device without a host copy
    # The bundle's calibration: probabilities are softmax(logits / temperature) (choose_runtime sets it).
    temperature: float = 1.0
    # A multilabel bundle's scores are sigmoid(logits), one per label (choose_runtime sets it).
    multilabel: bool = False

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Host logits to the scores ``infer`` returns."""
        if self.multilabel:
            return sigmoid(logits)
        return softmax(logits if self.temperature == 1.0 else logits / np.float32(self.temperature))

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def infer_tensor(self, batch) -> np.ndarray:
        """The same for a float32 ``torch.Tensor`` already on this runtime's device (device
        preprocessing); runtimes that cannot take one get it copied to host memory."""
        return self.infer(batch.cpu().numpy())

    def close(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release what the runtime holds (GPU memory, sessions)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.device})"

    def choose_memory_format(self, batch: np.ndarray, mode: str) -> str | None:
        """Choose the input layout, timing the options on ``batch`` where ``mode`` is auto; returns
        a line for the log, or None when nothing changed (most runtimes have one layout)."""
        return None


def warm_up(
    runtime: Runtime, image_shape: tuple[int, int, int], max_batch_size: int, channels_last: str = "auto"
) -> str | None:
    """Run batch sizes 1, 2, 4, ... ``max_batch_size`` once, so the first requests pay no compile or
    allocation cost, then choose the input layout at ``max_batch_size`` (the batches formed under
    load); returns the layout line for the log. A failure closes the runtime (no half-warmed GPU
    memory left behind)."""
    from service.batcher import doubling_batch_sizes

    try:
        for size in doubling_batch_sizes(max_batch_size):
            runtime.infer(np.zeros((size, *image_shape), dtype=np.float32))
        choose = getattr(runtime, "choose_memory_format", None)  # duck-typed runtimes may lack it
        return (
            choose(np.zeros((max_batch_size, *image_shape), dtype=np.float32), channels_last)
            if choose
            else None
        )
    except BaseException:
        runtime.close()
        raise

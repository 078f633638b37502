"""ONNX Runtime: the FP32 and INT8 (QDQ) ONNX artifacts, on the CPU or CUDA execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.errors import RuntimeUnavailableError
from service.runtimes.base import Runtime

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1  # one batch at a time per model: parallelism is inside each op
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailableError(
                    "onnxruntime has no CUDA execution provider here (install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.device = device
        self.precision = precision  # int8: a QDQ model, still float32 in and out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        logits = self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return self.scores(logits)

"""Torch-TensorRT engines: build one from the eager model, check it, and say where it can run.

``torch_tensorrt`` (and ``modelopt`` for INT8/FP8) are imported only inside these functions:
neither is installed for CPU use, and importing them needs CUDA and the TensorRT libraries. The
route follows Torch-TensorRT 2.14's documentation (see ``../shared/notes/torch-tensorrt.md``):

- the dynamo frontend with a dynamic batch axis (``Input(min_shape, opt_shape, max_shape)``);
- FP16 by casting the model and its input to half: since 2.13 ``enabled_precisions`` is ignored
  on this path, silently producing an FP32 engine;
- INT8/FP8 from ModelOpt's calibrated quantize/dequantize nodes (``trainer.quantize``), compiled
  under ModelOpt's export mode;
- saved as TorchScript (``torch_tensorrt.save(..., output_format="torchscript")``), which the
  service loads with ``torch.jit.load`` once ``torch_tensorrt`` is imported.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.engine_platform import compute_capability, import_torch_tensorrt, platform_info
from imgcls.errors import ExportError
from imgcls.manifest import EngineInfo
from trainer.config import TensorRTPrecision

__all__ = [
    "TENSORRT_INSTALL_HINT",
    "build_engine",
    "load_engine",
    "require_tensorrt",
    "run_engine",
]


TENSORRT_INSTALL_HINT = (
    "build TensorRT engines in imgcls's GPU image (`docker build -t imgcls:0.1.0-gpu .`: "
    "nvcr.io/nvidia/pytorch:26.09-py3, which ships torch-tensorrt 2.14 with TensorRT 11.1, plus imgcls "
    "and nvidia-modelopt), on the GPU model that will serve them (docs/bundle.md, 'TensorRT engines, step by "
    "step'); elsewhere `pip install -e '.[train,tensorrt]'` needs TensorRT 11.1 from NVIDIA's index"
)


def require_tensorrt(precisions: Sequence[TensorRTPrecision]) -> None:
    """Fail at once, before anything is written, when this machine cannot build the engines."""
    problems: list[str] = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    try:
        import_torch_tensorrt()
    except ImportError as exc:
        problems.append(str(exc))
    if any(p in ("int8", "fp8") for p in precisions):
        from trainer.quantize import import_modelopt

        try:
            import_modelopt()
        except ImportError as exc:
            problems.append(str(exc))
    if not problems and "fp8" in precisions and torch.cuda.get_device_capability() < (8, 9):
        problems.append(f"FP8 needs compute capability 8.9 or newer; this GPU has {compute_capability()}")
    if problems:
        raise ExportError(
            f"--formats tensorrt ({', '.join(precisions)}) cannot run here: {'; '.join(problems)}. To fix: "
            f"{TENSORRT_INSTALL_HINT}; or export the other formats without tensorrt. Nothing was written."
        )


def _example(images: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // len(images))
    return images.repeat(repeats, 1, 1, 1)[:size]


def _check_fully_compiled(compiled: nn.Module) -> None:
    # A segment left to PyTorch can bake the example batch size into a reshape, so every node must
    # be in TensorRT: the partitioner names engines _run_on_acc_* and PyTorch segments _run_on_gpu_*.
    # With too few supported operators, compile returns the graph with no engine at all, silently.
    names = [name for name, _ in compiled.named_children()]
    fallback = [name for name in names if name.startswith("_run_on_gpu")]
    if fallback or not any(name.startswith("_run_on_acc") for name in names):
        raise ExportError(
            f"Torch-TensorRT did not compile the whole model into one engine (PyTorch segments: "
            f"{', '.join(fallback) or 'none'}, engines: {sum(n.startswith('_run_on_acc') for n in names)}); "
            "it would not be safe across batch sizes. Export torchscript/onnx for this model instead"
        )


def build_engine(
    model: nn.Module,
    path: Path,
    *,
    precision: TensorRTPrecision,
    image_shape: tuple[int, int, int],
    batch_range: tuple[int, int, int],
    example_images: torch.Tensor,
    calibration_images: torch.Tensor | None,
    hardware_compatible: bool = False,
) -> EngineInfo:
    """Compile ``model`` into a TensorRT engine saved as TorchScript at ``path``."""
    torch_tensorrt = import_torch_tensorrt()
    smallest, optimal, largest = batch_range
    device = torch.device("cuda")
    dtype = torch.half if precision == "fp16" else torch.float32
    module = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    spec = torch_tensorrt.Input(
        min_shape=(smallest, *image_shape),
        opt_shape=(optimal, *image_shape),
        max_shape=(largest, *image_shape),
        dtype=dtype,
    )
    options = {
        "ir": "dynamo",
        "arg_inputs": [spec],
        "min_block_size": 1,
        "require_full_compilation": True,
        "hardware_compatible": hardware_compatible,
        "truncate_double": True,
    }
    example = _example(example_images, optimal).to(device=device, dtype=dtype)
    with torch.no_grad():
        if precision == "fp16":
            compiled = torch_tensorrt.compile(module, **options)
        else:
            from modelopt.torch.quantization.utils import export_torch_mode

            from trainer.quantize import calibrate_modelopt

            if calibration_images is None:
                raise ExportError(f"TensorRT {precision} needs calibration images")
            module = calibrate_modelopt(module, calibration_images.to(device), precision=precision)
            with export_torch_mode():
                compiled = torch_tensorrt.compile(module, **options)
        _check_fully_compiled(compiled)
        torch_tensorrt.save(compiled, str(path), output_format="torchscript", arg_inputs=[example])
    here = platform_info()
    return EngineInfo(
        **here,
        hardware_compatible=hardware_compatible,
        version_compatible=False,
        min_batch_size=smallest,
        opt_batch_size=optimal,
        max_batch_size=largest,
    )


def load_engine(path: Path) -> torch.jit.ScriptModule:
    import_torch_tensorrt()  # registers the engine class TorchScript deserialises
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; pinned <2.15
        return torch.jit.load(str(path), map_location="cuda").eval()


def run_engine(
    path: Path, images: torch.Tensor, engine: EngineInfo, precision: TensorRTPrecision
) -> np.ndarray:
    """Load the saved engine back and return its logits for ``images``.

    Batch sizes 1, opt and max run first on the same images: an engine that silently fixed its
    batch size at build time fails here rather than in the service.
    """
    module = load_engine(path)
    dtype = torch.half if precision == "fp16" else torch.float32  # the engine's input, as built
    with torch.inference_mode():
        for size in (engine.min_batch_size, engine.opt_batch_size, engine.max_batch_size):
            out = module(_example(images, size).to("cuda", dtype))
            if tuple(out.shape[:1]) != (size,):
                raise ExportError(
                    f"the saved TensorRT engine returned {tuple(out.shape)} for a batch of {size}"
                )
        chunks = [
            module(chunk.to("cuda", dtype)).float().cpu()
            for chunk in torch.split(images, engine.max_batch_size)
        ]
    return torch.cat(chunks).numpy()

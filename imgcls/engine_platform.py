"""What a TensorRT engine needs of the GPU it runs on: this machine's platform, and whether an engine
built elsewhere can run here.

The trainer records :func:`platform_info` in the manifest's ``EngineInfo`` when it builds an engine;
the service compares it with its own before it deserialises one (:func:`engine_mismatch`), so an
engine for another GPU, TensorRT or runtime ABI is refused with the reason instead of crashing.
``torch_tensorrt`` is imported only inside :func:`import_torch_tensorrt`: it is not installed for CPU
use, and importing it needs CUDA and the TensorRT libraries.
"""

from __future__ import annotations

import warnings

import torch

from imgcls.errors import describe_error
from imgcls.manifest import EngineInfo

__all__ = ["compute_capability", "engine_mismatch", "import_torch_tensorrt", "platform_info"]


def import_torch_tensorrt():
    """``torch_tensorrt``, or ImportError saying why it does not import here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its import warns about optional backends it does not find
            import torch_tensorrt
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
        raise ImportError(f"torch_tensorrt does not import ({describe_error(exc)})") from None
    return torch_tensorrt


def compute_capability() -> str:
    """The visible CUDA GPU's compute capability, e.g. ``"9.0"``."""
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def platform_info() -> dict[str, str]:
    """This machine's GPU, CUDA and TensorRT, in :class:`EngineInfo`'s terms; needs torch_tensorrt."""
    torch_tensorrt = import_torch_tensorrt()
    import tensorrt

    return {
        "gpu_name": torch.cuda.get_device_name(),
        "compute_capability": compute_capability(),
        "cuda_version": str(torch.version.cuda),
        "tensorrt_version": str(tensorrt.__version__),
        "torch_tensorrt_version": str(torch_tensorrt.__version__),
        "abi_version": str(torch.ops.tensorrt.ABI_VERSION()),
    }


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def engine_mismatch(engine: EngineInfo, here: dict[str, str]) -> str | None:
    """Why an engine built as ``engine`` cannot run on the platform ``here``, or None if it can.

    TensorRT deserialises an engine only with the runtime ABI it was written for, on the TensorRT
    version that built it (later ones of the same major when built version-compatible), on GPUs of
    the same compute capability (any Ampere or newer when built hardware-compatible).
    """
    if engine.abi_version != here["abi_version"]:
        return (
            f"built with Torch-TensorRT runtime ABI {engine.abi_version} "
            f"(torch-tensorrt {engine.torch_tensorrt_version}), this service has ABI {here['abi_version']} "
            f"(torch-tensorrt {here['torch_tensorrt_version']})"
        )
    built_trt, here_trt = engine.tensorrt_version, here["tensorrt_version"]
    if engine.version_compatible:
        built, running = _version_tuple(built_trt), _version_tuple(here_trt)
        if built[:1] != running[:1] or running < built:  # same major, same or later release
            return f"built version-compatible with TensorRT {built_trt}, this service has TensorRT {here_trt}"
    elif built_trt != here_trt:
        return f"built with TensorRT {built_trt}, this service has TensorRT {here_trt}"
    built_cc, here_cc = engine.compute_capability, here["compute_capability"]
    if engine.hardware_compatible:
        if _version_tuple(here_cc) < (8, 0):
            return (
                f"built hardware-compatible (Ampere or newer), this GPU is {here['gpu_name']} (sm {here_cc})"
            )
    elif built_cc != here_cc:
        return (
            f"built for {engine.gpu_name} (compute capability {built_cc}), "
            f"this GPU is {here['gpu_name']} ({here_cc})"
        )
    return None

"""The bundle's explain section: the eager weights and the layer Grad-CAM reads (``imgcls.explain``).

The frozen artifacts cannot be explained (hooks never fire inside TorchScript, and freezing folds the
weights into constants), so the bundle carries the eager state dict beside them. The target layer is
probed on one image before it is recorded: a layer whose output is not the feature map or token
sequence it should be leaves the bundle unexplainable (with a warning), never silently wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgcls.architectures import ExplainTarget, explain_target
from imgcls.errors import ImgclsError
from imgcls.explain.gradcam import methods_for
from imgcls.manifest import ExplainSpec, sha256_file

__all__ = ["EXPLAIN_WEIGHTS_FILE", "probe_target", "write_explain_weights"]

log = logging.getLogger("imgcls.export")

EXPLAIN_WEIGHTS_FILE = "weights.pt"


def probe_target(model: nn.Module, target: ExplainTarget, example: torch.Tensor) -> str | None:
    """Why ``target`` is not usable for Grad-CAM on ``model``, or None when it is: its output must be a
    ``[N, C, h, w]`` map, or ``[N, prefix + h*w, C]`` tokens matching the recorded grid."""
    try:
        layer = model.get_submodule(target.layer)
    except AttributeError:
        return f"the model has no layer {target.layer!r}"
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0], torch.Tensor):
        return f"layer {target.layer!r} did not return one tensor"
    shape = tuple(seen[0].shape)
    if target.layout == "NCHW":
        return None if len(shape) == 4 else f"layer {target.layer!r} returns {shape}, not [N, C, h, w]"
    assert target.grid is not None
    expected = target.prefix_tokens + target.grid[0] * target.grid[1]
    if len(shape) != 3 or shape[1] != expected:
        return f"layer {target.layer!r} returns {shape}, not [N, {expected}, C] tokens"
    return None


def write_explain_weights(
    model: nn.Module, architecture: str, example: torch.Tensor, bundle_dir: Path
) -> ExplainSpec | None:
    """Save ``model``'s weights into ``bundle_dir`` and describe them, or None (with a warning) when the
    architecture has no usable explanation target."""
    try:
        target = explain_target(architecture, model)
    except ImgclsError as exc:
        log.warning("the bundle will not be explainable: %s", exc)
        return None
    problem = probe_target(model, target, example)
    if problem:
        log.warning("the bundle will not be explainable: %s", problem)
        return None
    path = Path(bundle_dir) / EXPLAIN_WEIGHTS_FILE
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
    return ExplainSpec(
        weights=path.name,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        target_layer=target.layer,
        layout=target.layout,
        token_grid=target.grid,
        prefix_tokens=target.prefix_tokens,
        methods=methods_for(target),
    )

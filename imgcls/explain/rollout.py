"""Gradient-weighted attention rollout for ViTs (Chefer, Gur & Wolf, 2021, "Generic
Attention-model Explainability"): class-specific attention rollout.

Plain rollout (Abnar & Zuidema, 2020) multiplies every block's head-averaged attention, mixed with the
identity for the residual path, and reads the class token's row: the same map for every class, and on
our shapes it barely changes when the weights are randomised (median Spearman 0.77), because a random
ViT's attention already follows bright patches. Here each block's attention is first weighted by its
gradient for the explained class, negative parts dropped and heads averaged (``Ā = E_h[(∇A ⊙ A)⁺]``),
and accumulated through the residual connections (``R ← R + Ā R`` from ``R = I``). The map is the
class token's row of ``R`` over the patch tokens (the mean of the patch rows for a model that pools
its tokens), on the patch grid, min-max scaled and resized to the crop.

The attention probabilities are read from torchvision's ``nn.MultiheadAttention`` (its self-attention
written out, so that they are in the graph) and timm's ``Attention`` (its unfused path, whose
``attn_drop`` sees them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imgcls.architectures import ExplainTarget

__all__ = ["attention_layers", "rollout_maps"]


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules, first block first: torchvision's ``nn.MultiheadAttention``
    or timm's ``Attention`` (any module with ``fused_attn`` and an ``attn_drop``)."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        or (hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module))
    ]


def _explicit_attention(
    layer: nn.MultiheadAttention, keep: Callable[[torch.Tensor], None]
) -> Callable[..., Any]:
    """``layer``'s self-attention written out, with its probabilities in the graph: the library's own
    path returns them only as a copy that no gradient reaches. Same result as ``layer`` (tested)."""
    if not layer._qkv_same_embed_dim or layer.bias_k is not None or layer.add_zero_attn:
        raise ValueError("attention rollout supports plain self-attention (packed q, k, v projections)")

    def forward(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        if args or kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") is not None:
            raise ValueError("attention rollout does not support attention masks")
        if not (query is key is value):
            raise ValueError("attention rollout supports self-attention only")
        tokens = query if layer.batch_first else query.transpose(0, 1)
        batch, length, embed = tokens.shape
        heads = layer.num_heads
        bias = layer.in_proj_bias
        q, k, v = (
            F.linear(tokens, weight, None if bias is None else part)
            .reshape(batch, length, heads, embed // heads)
            .transpose(1, 2)
            for weight, part in zip(
                layer.in_proj_weight.chunk(3),
                (bias.chunk(3) if bias is not None else (None,) * 3),
                strict=True,
            )
        )
        probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(embed // heads), dim=-1)
        keep(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, length, embed)
        output = layer.out_proj(mixed)
        return (output if layer.batch_first else output.transpose(0, 1)), probabilities

    return forward


@contextmanager
def _recorded_attention(layers: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collects each layer's attention probabilities, ``[N, heads, T, T]``, in call order, in the
    autograd graph."""
    recorded: list[torch.Tensor] = []
    handles = []
    fused: list[tuple[nn.Module, bool]] = []
    patched: list[nn.Module] = []

    def keep(probabilities: torch.Tensor) -> None:
        recorded.append(probabilities)

    try:
        for layer in layers:
            if isinstance(layer, nn.MultiheadAttention):
                layer.forward = _explicit_attention(layer, keep)  # type: ignore[method-assign]
                patched.append(layer)
            else:
                fused.append((layer, layer.fused_attn))
                layer.fused_attn = False  # the fused kernel never materialises the probabilities
                handles.append(layer.attn_drop.register_forward_hook(lambda _m, _a, output: keep(output)))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for layer, value in fused:
            layer.fused_attn = value
        for layer in patched:
            del layer.forward


def rollout_maps(
    model: nn.Module, target: ExplainTarget, batch: torch.Tensor, classes: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rollout maps on the input crop (``[N, crop_h, crop_w]``, min-max scaled to [0, 1] per image, as
    pytorch-grad-cam scales its maps) and the logits, for a preprocessed ``batch`` on the model's
    device; ``classes`` is the class explained per image (default: the predicted one)."""
    if target.layout != "tokens" or target.grid is None:
        raise ValueError("attention rollout needs a transformer whose tokens lie on a patch grid")
    layers = attention_layers(model)
    if not layers:
        raise ValueError("attention rollout found no attention layers in the model")
    # a graph from the input, so that frozen weights still give one; only the attention's gradients
    # are computed (no parameter's .grad is touched), and nothing outlives the call
    inputs = batch.detach().requires_grad_(True)
    with torch.enable_grad(), _recorded_attention(layers) as recorded:
        logits = model(inputs)
        if len(recorded) != len(layers):
            raise ValueError(
                f"attention rollout saw {len(recorded)} attention maps from {len(layers)} layers"
            )
        chosen = logits.argmax(dim=1) if classes is None else torch.as_tensor(classes, device=logits.device)
        score = logits.gather(1, chosen[:, None]).sum()
        gradients = torch.autograd.grad(score, recorded, allow_unused=True, materialize_grads=True)
    tokens = recorded[0].shape[-1]
    relevance = torch.eye(tokens, device=batch.device).repeat(len(batch), 1, 1)
    for attention, gradient in zip(recorded, gradients, strict=True):
        weighted = (gradient * attention.detach()).clamp(min=0).mean(dim=1).float()
        relevance = relevance + weighted @ relevance
    prefix = target.prefix_tokens
    pools_tokens = getattr(model, "global_pool", "token") not in ("token", "")
    rows = relevance[:, prefix:, :].mean(dim=1) if prefix == 0 or pools_tokens else relevance[:, 0, :]
    height, width = target.grid
    grid = rows[:, prefix:].reshape(len(batch), 1, height, width)
    low = grid.amin(dim=(2, 3), keepdim=True)
    high = grid.amax(dim=(2, 3), keepdim=True)
    scaled = (grid - low) / (high - low + 1e-7)
    maps = F.interpolate(scaled, size=tuple(batch.shape[-2:]), mode="bilinear", align_corners=False)
    return maps[:, 0].clamp(0.0, 1.0), logits.detach()

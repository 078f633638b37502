"""The model registry: one factory, ``create_model(name, num_classes, ...)``, for every architecture.

Built-in names are ``simple_cnn`` and a set of torchvision classifiers; any timm model is
available as ``timm:<name>``. Pretrained weights come from a local file or the local
torch/timm caches only; nothing is downloaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgcls.architectures import (
    TORCHVISION_MODELS,
    SimpleCNN,
    TorchvisionModel,
    build_torchvision,
    replace_first_conv,
    replace_head,
    timm_size_kwargs,
)
from imgcls.errors import ModelError, WeightsNotFoundError
from trainer.optim import is_head

__all__ = ["MODEL_NAMES", "BuiltModel", "SimpleCNN", "create_model", "describe_models"]


_TORCHVISION = TORCHVISION_MODELS

MODEL_NAMES = ("simple_cnn", *_TORCHVISION)


@dataclass
class BuiltModel:
    model: nn.Module
    head_prefixes: tuple[str, ...]  # parameters under these names belong to the new classifier head(s)
    weights_source: str | None  # where pretrained weights came from, for the run log


def describe_models() -> list[str]:
    return [*MODEL_NAMES, "timm:<name> (any model from `timm.list_models()`)"]


def _unknown(name: str) -> ModelError:
    return ModelError(
        f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, or timm:<name> for any timm model"
    )


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give the stem conv ``in_chans`` inputs, summing/repeating pretrained RGB filters (timm's recipe)."""
    from timm.models import adapt_input_conv

    replaced = replace_first_conv(model, in_chans)
    if replaced is None:
        return
    _, old, new = replaced
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, old.weight.detach()))
        if old.bias is not None:
            new.bias.copy_(old.bias.detach())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.bin`` checkpoint or ``.safetensors`` file.

    Accepts bare state dicts and the common wrappers (``state_dict``, ``model``, ``model_ema``),
    and strips a ``module.`` prefix left by DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found; check model.weights / --weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise ModelError(
            f"{path}: cannot read weights ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    for key in ("model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"{path}: not a state dict of tensors; save weights with torch.save(model.state_dict())"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], head_prefixes: tuple[str, ...], source: str
) -> None:
    """Load every matching tensor except the head (whose class count differs); fail if the backbone does not match."""
    own = model.state_dict()
    from timm.models import adapt_input_conv

    compatible: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if is_head(key, head_prefixes) or key not in own:
            continue
        target = own[key]
        stem_channels_differ = (
            value.ndim == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
        )
        if value.shape != target.shape and stem_channels_differ and value.shape[1] == 3:
            value = adapt_input_conv(target.shape[1], value)  # RGB weights for a grayscale stem
        if value.shape != target.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
            continue
        compatible[key] = value
    # BatchNorm's step counter is absent from many published checkpoints and unused in training.
    missing = [
        k
        for k in own
        if not is_head(k, head_prefixes) and k not in compatible and not k.endswith("num_batches_tracked")
    ]
    if mismatched or missing:
        detail = (mismatched + [f"{k} missing" for k in missing])[:3]
        raise ModelError(
            f"{source}: weights do not fit this architecture ({len(mismatched) + len(missing)} tensors: "
            f"{'; '.join(detail)}); use weights saved from the same model"
        )
    model.load_state_dict(compatible, strict=False)


def _torchvision_cache_file(spec: TorchvisionModel) -> Path:
    import torchvision.models as tvm

    url = getattr(tvm, spec.weights_enum).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _timm_cache_file(name: str) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file:
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if candidate.is_file():
            return candidate
    return None


def _hf_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def create_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    image_size: int = 224,
    drop_rate: float = 0.0,
    pretrained: bool = False,
    weights: Path | None = None,
) -> BuiltModel:
    """Build ``name`` with a fresh ``num_classes``-way head, loading pretrained weights when asked."""
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    if name == "simple_cnn":
        if image_size < 16:
            raise ModelError(
                f"simple_cnn needs images of at least 16 px, got preprocess.image_size={image_size}"
            )
        model: nn.Module = SimpleCNN(num_classes, in_chans=in_chans, drop_rate=drop_rate)
        head = ("head",)
        if pretrained and weights is None:
            raise WeightsNotFoundError(
                "simple_cnn has no published weights; pass model.weights=PATH or pretrained=false"
            )
        source = None
        if weights is not None:
            _load_backbone_weights(model, read_state_dict(weights), head, str(weights))
            source = str(weights)
        return BuiltModel(model, head, source)

    if name.startswith("timm:"):
        return _create_timm(
            name.removeprefix("timm:"), num_classes, in_chans, image_size, drop_rate, pretrained, weights
        )

    spec = _TORCHVISION.get(name)
    if spec is None:
        raise _unknown(name)
    model = build_torchvision(name, image_size, drop_rate)
    source = None
    if pretrained or weights is not None:
        path = weights if weights is not None else _torchvision_cache_file(spec)
        if not Path(path).is_file():
            raise WeightsNotFoundError(
                f"pretrained weights for {name} are not in the torch cache ({path}) and nothing is downloaded; "
                f"pass model.weights=PATH to a local file, or copy the file there, or set model.pretrained=false"
            )
        state = read_state_dict(path)
        if name == "vit_b_16" and "encoder.pos_embedding" in state:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(image_size, 16, state)
        _load_backbone_weights(model, state, (spec.head,), str(path))
        source = str(path)
    replace_head(model, spec.head, num_classes)
    if in_chans != 3:
        _adapt_first_conv(model, in_chans)
    return BuiltModel(model, (spec.head,), source)


def _create_timm(
    name: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    drop_rate: float,
    pretrained: bool,
    weights: Path | None,
) -> BuiltModel:
    import timm

    if not timm.is_model(name):
        raise ModelError(
            f"unknown timm model {name!r}; list them with python -c 'import timm; print(timm.list_models())'"
        )
    model = timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        **timm_size_kwargs(name, image_size),
    )
    classifier = model.pretrained_cfg.get("classifier") or "head"
    head = tuple(classifier) if isinstance(classifier, list | tuple) else (classifier,)
    source = None
    if pretrained or weights is not None:
        path = weights if weights is not None else _timm_cache_file(name)
        if path is None or not Path(path).is_file():
            raise WeightsNotFoundError(
                f"pretrained weights for timm:{name} are not in the local caches (Hugging Face: "
                f"{_hf_cache_dir()}, torch: {Path(torch.hub.get_dir()) / 'checkpoints'}) and nothing is "
                "downloaded; pass model.weights=PATH to a local file, or set model.pretrained=false"
            )
        state = read_state_dict(Path(path))
        # timm's own checkpoint conversion for the family, as its pretrained loading applies it: among
        # others it resamples a ViT's position embeddings to this model's patch grid
        convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if convert is not None:
            state = convert(state, model)
        _load_backbone_weights(model, state, head, str(path))
        source = str(path)
    return BuiltModel(model, head, source)

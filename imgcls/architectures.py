"""The architectures both halves build: the trainer to train them, explanations to rebuild a bundle's
eager model from its weights file (``imgcls.explain``), without the trainer.

Only the structure lives here: a model with an ``num_classes``-way head, random weights. Pretrained
weights and their caches are the trainer's business (``trainer.models``). timm models need the
``train`` extra, which carries timm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from imgcls.errors import ModelError

__all__ = [
    "TORCHVISION_MODELS",
    "ExplainTarget",
    "SimpleCNN",
    "TorchvisionModel",
    "build_architecture",
    "explain_target",
    "replace_first_conv",
    "replace_head",
]


class SimpleCNN(nn.Module):
    """conv-conv-pool, conv-conv-pool, then a dense classifier: small, fast, right for small images."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_chans, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),  # any input size >= 16 px gives the same classifier input
        )
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True), nn.Dropout(drop_rate)
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.features(x)))


@dataclass(frozen=True)
class TorchvisionModel:
    builder: str  # torchvision.models function name
    weights_enum: str  # torchvision.models weights enum, for the cached file name
    head: str  # dotted path of the final Linear layer


TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    "resnet18": TorchvisionModel("resnet18", "ResNet18_Weights", "fc"),
    "resnet50": TorchvisionModel("resnet50", "ResNet50_Weights", "fc"),
    "mobilenet_v3_small": TorchvisionModel(
        "mobilenet_v3_small", "MobileNet_V3_Small_Weights", "classifier.3"
    ),
    "mobilenet_v3_large": TorchvisionModel(
        "mobilenet_v3_large", "MobileNet_V3_Large_Weights", "classifier.3"
    ),
    "efficientnet_b0": TorchvisionModel("efficientnet_b0", "EfficientNet_B0_Weights", "classifier.1"),
    "vit_b_16": TorchvisionModel("vit_b_16", "ViT_B_16_Weights", "heads.head"),
}


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    old = model.get_submodule(head)
    if not isinstance(old, nn.Linear):
        raise ModelError(f"cannot replace head {head!r}: expected nn.Linear, found {type(old).__name__}")
    _set_module(model, head, nn.Linear(old.in_features, num_classes))


def replace_first_conv(model: nn.Module, in_chans: int) -> tuple[str, nn.Conv2d, nn.Conv2d] | None:
    """Give the stem conv ``in_chans`` inputs (fresh weights); returns (name, old, new), or None when it
    already has them. The trainer copies adapted pretrained filters into the new one."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_chans:
                return None
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
            )
            _set_module(model, name, new)
            return name, module, new
    return None


def build_torchvision(name: str, image_size: int, drop_rate: float) -> nn.Module:
    """torchvision's ``name`` with its ImageNet head (the caller replaces it after loading weights)."""
    import torchvision.models as tvm

    kwargs: dict[str, object] = {"weights": None}
    if name == "vit_b_16":
        kwargs["image_size"] = image_size
    if name.startswith(("mobilenet", "efficientnet")):
        kwargs["dropout"] = drop_rate if drop_rate else 0.2
    return getattr(tvm, TORCHVISION_MODELS[name].builder)(**kwargs)


def timm_size_kwargs(name: str, image_size: int) -> dict[str, int]:
    """``img_size`` for a timm model built for one input size (ViTs, Swin: their position embeddings
    and patch grid are sized at construction); nothing for the models that take any size."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    return {"img_size": image_size} if config is not None and config.fixed_input_size else {}


def build_architecture(
    name: str, num_classes: int, *, in_chans: int, image_size: int, drop_rate: float = 0.0
) -> nn.Module:
    """``name`` (a registry name, or ``timm:<name>``) with a ``num_classes`` head and random weights:
    the structure a bundle's eager weights load into."""
    if name == "simple_cnn":
        return SimpleCNN(num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(
            name.removeprefix("timm:"),
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            **timm_size_kwargs(name.removeprefix("timm:"), image_size),
        )
    spec = TORCHVISION_MODELS.get(name)
    if spec is None:
        raise ModelError(f"unknown architecture {name!r}")
    model = build_torchvision(name, image_size, drop_rate)
    replace_head(model, spec.head, num_classes)
    if in_chans != 3:
        replace_first_conv(model, in_chans)
    return model


@dataclass(frozen=True)
class ExplainTarget:
    """The layer Grad-CAM reads, and how to turn its output into a spatial map.

    ``NCHW`` layers give feature maps directly. ``tokens`` layers (ViTs) give ``[N, prefix + h*w, C]``:
    the class/register tokens are dropped and the patch tokens reshaped to their ``grid``.
    """

    layer: str  # dotted module path, for ``model.get_submodule``
    layout: Literal["NCHW", "tokens"] = "NCHW"
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0


def explain_target(name: str, model: nn.Module) -> ExplainTarget:
    """The Grad-CAM target layer for registry model ``name``: the last spatial feature map of a CNN, the
    input norm of a ViT's last block (as pytorch-grad-cam recommends: the block's output feeds only
    the class token into the head, so its patch tokens get no gradient)."""
    if name == "simple_cnn":
        return ExplainTarget("features.12")  # the last ReLU before pooling: the 2*width-channel map
    if name.startswith(("resnet",)):
        return ExplainTarget(f"layer4.{len(model.get_submodule('layer4')) - 1}")
    if name.startswith(("mobilenet", "efficientnet")):
        return ExplainTarget(f"features.{len(model.get_submodule('features')) - 1}")
    if name == "vit_b_16":
        layers = model.get_submodule("encoder.layers")
        last = list(dict(layers.named_children()))[-1]
        side = model.image_size // model.patch_size
        return ExplainTarget(f"encoder.layers.{last}.ln_1", "tokens", (side, side), 1)
    if name.startswith("timm:"):
        return _timm_target(name, model)
    raise ModelError(f"no explanation target known for architecture {name!r}")


def _timm_target(name: str, model: nn.Module) -> ExplainTarget:
    blocks = getattr(model, "blocks", None)
    patch_embed = getattr(model, "patch_embed", None)
    if blocks is not None and patch_embed is not None and hasattr(model, "num_prefix_tokens"):
        grid = tuple(int(g) for g in patch_embed.grid_size)
        last = len(blocks) - 1
        if hasattr(blocks[last], "norm1") and len(grid) == 2:
            return ExplainTarget(
                f"blocks.{last}.norm1", "tokens", (grid[0], grid[1]), int(model.num_prefix_tokens)
            )
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        module = feature_info[-1].get("module") if isinstance(feature_info[-1], dict) else None
        if module:
            return ExplainTarget(str(module))
    raise ModelError(f"no explanation target known for {name}: timm reports no feature stages for it")

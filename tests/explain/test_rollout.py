"""Gradient-weighted attention rollout on torchvision's and timm's ViTs: the attention it reads is the
model's own, the model is left as it was, the maps are class-specific, and CNNs are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from imgcls.architectures import ExplainTarget, build_architecture, explain_target
from imgcls.explain.gradcam import Explainer, methods_for
from imgcls.explain.rollout import _recorded_attention, attention_layers, rollout_maps
from imgcls.manifest import PreprocessSpec


def torchvision_vit(image_size: int = 32, layers: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=layers,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=4,
    ).eval()


def timm_vit(**kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4, **kwargs
    ).eval()


def randomise_head(model: nn.Module) -> nn.Module:
    # torchvision and timm zero-initialise the head: every class would have a zero gradient
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            module.reset_parameters()
    return model


def test_torchvision_attention_written_out_gives_the_models_own_outputs_and_weights() -> None:
    model = torchvision_vit()
    batch = torch.randn(3, 3, 32, 32)
    attention = model.encoder.layers[0].self_attention
    seen_inputs: list[torch.Tensor] = []
    handle = model.encoder.layers[0].ln_1.register_forward_hook(lambda _m, _a, out: seen_inputs.append(out))
    with torch.no_grad():
        expected = model(batch)
    handle.remove()
    with torch.no_grad():
        _, expected_weights = attention(*seen_inputs * 3, need_weights=True, average_attn_weights=False)

    with torch.no_grad(), _recorded_attention(attention_layers(model)) as recorded:
        logits = model(batch)

    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert len(recorded) == 2
    torch.testing.assert_close(recorded[0], expected_weights, rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(attention)  # the library's own forward is back


def test_timm_attention_is_read_from_the_unfused_path_and_the_fused_flag_restored() -> None:
    model = timm_vit()
    layers = attention_layers(model)
    before = [layer.fused_attn for layer in layers]
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(batch)

    with torch.no_grad(), _recorded_attention(layers) as recorded:
        logits = model(batch)

    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert [tuple(r.shape) for r in recorded] == [(2, 3, 17, 17)] * 2  # heads 3, class token + 4x4 patches
    torch.testing.assert_close(recorded[0].sum(-1), torch.ones(2, 3, 17))
    assert [layer.fused_attn for layer in layers] == before


@pytest.mark.parametrize("family", ["torchvision", "timm", "timm-avg-pool", "timm-registers"])
def test_rollout_maps_are_per_class_and_leave_no_gradients_behind(family: str) -> None:
    if family == "torchvision":
        model = torchvision_vit()
        target = explain_target("vit_b_16", model)
    else:
        options = {"timm-avg-pool": {"global_pool": "avg"}, "timm-registers": {"reg_tokens": 2}}.get(
            family, {}
        )
        model = timm_vit(**options)
        target = explain_target("timm:vit_tiny_patch16_224", model)
    randomise_head(model)
    batch = torch.randn(2, 3, 32, 32)

    maps, logits = rollout_maps(model, target, batch, [0, 0])
    other, _ = rollout_maps(model, target, batch, [3, 3])

    assert maps.shape == (2, 32, 32)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert float(maps.amax(dim=(1, 2)).min()) > 0.9  # min-max scaled on the grid, then resized bilinearly
    assert not torch.allclose(maps, other)  # the class decides the map
    with torch.no_grad():
        torch.testing.assert_close(logits, model(batch), rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_a_vit_explainer_defaults_to_rollout_and_offers_gradcam() -> None:
    model = randomise_head(torchvision_vit())
    explainer = Explainer(
        model,
        explain_target("vit_b_16", model),
        labels="abcd",
        preprocess=PreprocessSpec.resolve(32, resize=32),
    )
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)

    (default,) = explainer.explain([image])
    (gradcam,) = explainer.explain([image], method="gradcam")

    assert explainer.methods == ("rollout", "gradcam")
    assert default.method == "rollout" and gradcam.method == "gradcam"
    assert default.heatmap.shape == gradcam.heatmap.shape == (40, 50)
    assert not np.allclose(default.heatmap, gradcam.heatmap)


def test_rollout_is_refused_for_a_cnn() -> None:
    model = build_architecture("simple_cnn", 3, in_chans=3, image_size=32)
    target = explain_target("simple_cnn", model)
    explainer = Explainer(model, target, labels="abc", preprocess=PreprocessSpec.resolve(32))

    assert methods_for(target) == ("gradcam",)
    with pytest.raises(ValueError, match="supports gradcam"):
        explainer.crop_maps(torch.zeros(1, 3, 32, 32), method="rollout")
    with pytest.raises(ValueError, match="patch grid"):
        rollout_maps(model, ExplainTarget("features.12", "NCHW"), torch.zeros(1, 3, 32, 32))

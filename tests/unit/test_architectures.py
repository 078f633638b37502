"""Every registry family has an explanation target whose output is a feature map or a token grid."""

from __future__ import annotations

import pytest
import torch

from imgcls.architectures import build_architecture, explain_target
from trainer.explain_weights import probe_target
from trainer.models import create_model


@pytest.mark.parametrize(
    ("name", "image_size", "layout"),
    [
        ("simple_cnn", 32, "NCHW"),
        ("resnet18", 64, "NCHW"),
        ("mobilenet_v3_small", 64, "NCHW"),
        ("efficientnet_b0", 64, "NCHW"),
        ("vit_b_16", 32, "tokens"),
        ("timm:resnet18", 64, "NCHW"),
        ("timm:efficientnet_b0", 64, "NCHW"),
        ("timm:vit_tiny_patch16_224", 224, "tokens"),
    ],
)
def test_every_family_has_a_target_layer_that_probes_clean(name, image_size, layout):
    model = build_architecture(name, 4, in_chans=3, image_size=image_size).eval()
    target = explain_target(name, model)
    assert target.layout == layout
    assert probe_target(model, target, torch.zeros(1, 3, image_size, image_size)) is None
    if layout == "tokens":
        assert target.grid == (image_size // 16, image_size // 16) and target.prefix_tokens >= 1


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18", "mobilenet_v3_small", "vit_b_16"])
def test_the_trainers_model_loads_into_the_shared_architecture(name):
    """A bundle's weights.pt comes from the trainer's model; the explainer rebuilds it from imgcls alone."""
    trained = create_model(name, 3, in_chans=1, image_size=32).model
    rebuilt = build_architecture(name, 3, in_chans=1, image_size=32)
    rebuilt.load_state_dict(trained.state_dict())  # strict: same names, same shapes


def test_a_layer_with_the_wrong_output_is_refused_not_recorded():
    from imgcls.architectures import ExplainTarget

    model = build_architecture("simple_cnn", 3, in_chans=1, image_size=32).eval()
    problem = probe_target(model, ExplainTarget("neck.1"), torch.zeros(1, 1, 32, 32))
    assert problem is not None and "not [N, C, h, w]" in problem
    assert "no layer" in probe_target(model, ExplainTarget("features.99"), torch.zeros(1, 1, 32, 32))

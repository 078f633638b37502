from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgcls.errors import ModelError, WeightsNotFoundError
from trainer.models import MODEL_NAMES, create_model


@pytest.fixture(autouse=True)
def _empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test may find (or fetch) real pretrained weights: point every cache at an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "vit_b_16"])
def test_every_builtin_model_gets_a_head_for_the_dataset(name: str):
    built = create_model(name, num_classes=7, in_chans=3, image_size=64)
    with torch.inference_mode():
        out = built.model.eval()(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 7)
    (prefix,) = built.head_prefixes
    assert any(n.startswith(prefix + ".") for n, _ in built.model.named_parameters())


def test_vit_builds_for_a_non_default_image_size():
    built = create_model("vit_b_16", num_classes=4, image_size=32)
    with torch.inference_mode():
        assert built.model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 4)


def test_grayscale_input_adapts_the_stem():
    built = create_model("resnet18", num_classes=3, in_chans=1, image_size=32)
    with torch.inference_mode():
        assert built.model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_timm_models_are_available_by_prefix():
    built = create_model("timm:resnet10t", num_classes=5, image_size=32)
    assert built.head_prefixes == ("fc",)
    with torch.inference_mode():
        assert built.model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ModelError, match=r"unknown model 'resnet19'; valid names: simple_cnn, resnet18"):
        create_model("resnet19", num_classes=3)
    with pytest.raises(ModelError, match=r"unknown timm model 'not_a_model'"):
        create_model("timm:not_a_model", num_classes=3)


def test_pretrained_without_a_cached_file_fails_fast_with_the_fix():
    with pytest.raises(
        WeightsNotFoundError, match=r"not in the torch cache .*resnet18-f37072fd.pth.*model.weights"
    ):
        create_model("resnet18", num_classes=3, pretrained=True)
    with pytest.raises(WeightsNotFoundError, match=r"timm:resnet10t are not in the local"):
        create_model("timm:resnet10t", num_classes=3, pretrained=True)


def test_weights_from_a_local_file_load_into_the_backbone(tmp_path: Path):
    import torchvision

    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    built = create_model("resnet18", num_classes=3, weights=path, image_size=32)
    torch.testing.assert_close(built.model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(built.model.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    assert built.model.fc.out_features == 3
    assert built.weights_source == str(path)


def test_weights_found_in_the_torch_cache_are_used(tmp_path: Path):
    import torchvision

    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    source = torchvision.models.mobilenet_v3_small()
    torch.save(
        source.state_dict(), cache / Path(torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url).name
    )
    built = create_model("mobilenet_v3_small", num_classes=3, pretrained=True, image_size=32)
    torch.testing.assert_close(built.model.features[0][0].weight, source.features[0][0].weight)


def test_weights_for_another_architecture_are_rejected(tmp_path: Path):
    import torchvision

    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ModelError, match=r"weights do not fit this architecture"):
        create_model("resnet18", num_classes=3, weights=path)


def test_a_file_that_is_not_a_checkpoint_is_reported(tmp_path: Path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk.pth: cannot read weights"):
        create_model("simple_cnn", num_classes=3, weights=path, in_chans=1, image_size=16)


def test_timm_models_with_two_heads_treat_both_as_head():
    built = create_model("timm:deit_tiny_distilled_patch16_224", num_classes=3, image_size=224)
    assert built.head_prefixes == ("head", "head_dist")


def test_checkpoints_without_batchnorm_step_counters_load(tmp_path: Path):
    import torchvision

    source = torchvision.models.resnet18()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    built = create_model("resnet18", num_classes=3, weights=tmp_path / "old.pth", image_size=32)
    torch.testing.assert_close(built.model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_a_timm_vit_is_built_for_the_configured_size_and_its_224px_weights_resampled(tmp_path: Path):
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)

    built = create_model("timm:vit_tiny_patch16_224", num_classes=3, weights=path, image_size=64)

    assert built.model.patch_embed.grid_size == (4, 4)
    assert built.model.pos_embed.shape == (1, 1 + 16, 192)  # class token + 4x4 patches, from 14x14
    torch.testing.assert_close(built.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(built.model.pos_embed[:, :1], source.pos_embed[:, :1])
    assert built.model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)

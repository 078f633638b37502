"""Explanations as the literature tests them, for a family of each kind: the simple CNN, a torchvision
CNN and a ViT, each trained here on shapes whose position is known (``tests.explain.training``).

- the pointing game (Zhang et al., 2016): the map's peak falls on the shape that decides the class
  (Grad-CAM for the CNNs, the gradient-weighted rollout for the ViT);
- the model-randomisation check (Adebayo et al., 2018): a model with random weights gives other maps,
  for every method of every family;
- agreement: our Grad-CAM maps are pytorch-grad-cam's own, and mapping them back to the original image
  is exactly ``geometry.to_original``, zero where the center crop cut.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torchvision.models import VisionTransformer

from imgcls.architectures import explain_target
from imgcls.explain.geometry import crop_geometry, to_original
from imgcls.explain.gradcam import Explanation
from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import eval_transform
from tests.explain.shapes import peak_in_box
from tests.explain.training import RECIPES, Trained, to_tensors, train_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=list(RECIPES))
def trained(request: pytest.FixtureRequest) -> Trained:
    """Each family trained once for this module; its tests run one after the other."""
    return train_recipe(RECIPES[request.param])


Explained = dict[str, tuple[list[Explanation], np.ndarray]]


@pytest.fixture(scope="module")
def explained(trained: Trained) -> Explained:
    """Per method, the trained model's explanations of its held-out images, and which it classified
    correctly."""
    explainer = trained.explainer()
    results = {}
    for method in explainer.methods:
        explanations = explainer.explain(to_tensors(trained.test.images), method=method, batch_size=50)
        predicted = np.array([e.predicted_index for e in explanations])
        results[method] = explanations, predicted == trained.test.labels
    return results


def test_the_model_recognises_the_shapes(trained: Trained, explained: Explained) -> None:
    _, correct = explained[trained.explainer().default_method]

    assert correct.mean() >= 0.8, (
        f"test accuracy {correct.mean():.2f} (chance: 1/{len(trained.recipe.labels)})"
    )


def test_the_maps_point_at_the_shape_that_decides_the_class(trained: Trained, explained: Explained) -> None:
    for method in trained.recipe.pointing_methods:
        explanations, correct = explained[method]

        hits = [
            peak_in_box(e.heatmap, box)
            for e, box, ok in zip(explanations, trained.test.boxes, correct, strict=True)
            if ok
        ]

        assert len(hits) >= 0.5 * len(explanations)
        assert np.mean(hits) >= 0.8, (
            f"{method} pointing game: {np.mean(hits):.2f} of {len(hits)} maps hit the shape"
        )


def test_the_maps_change_when_the_weights_are_randomised(trained: Trained, explained: Explained) -> None:
    for method, (explanations, _) in explained.items():
        classes = [e.explained_index for e in explanations]  # the same classes, on random weights

        randomised = trained.explainer(trained.random).explain(
            to_tensors(trained.test.images), classes, method=method, batch_size=50
        )

        # Spearman's rank correlation is undefined against a constant map (Grad-CAM's ReLU empties a
        # map whose weighted channels sum negative: a random model's sometimes, the trained ViT's a
        # sixth to a third of the time): those pairs are left out, and must not be most.
        pairs = [
            (a.heatmap.ravel(), b.heatmap.ravel())
            for a, b in zip(explanations, randomised, strict=True)
            if np.ptp(a.heatmap) > 0 and np.ptp(b.heatmap) > 0
        ]
        assert len(pairs) >= 0.5 * len(explanations), method
        rho = np.median([spearmanr(a, b).statistic for a, b in pairs])
        assert rho <= 0.5, f"{method}: median Spearman correlation with random weights: {rho:.2f}"


def vit_reshape(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ViT recipe, written out for torchvision's VisionTransformer: drop the class
    token, lay the patch tokens out on their grid, channels first."""
    side = model.image_size // model.patch_size

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:, :].reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def direct_gradcam(trained: Trained, batch: torch.Tensor, classes: list[int]) -> np.ndarray:
    """pytorch-grad-cam called as its documentation shows, on the eager model and its target layer."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = trained.model
    layer = model.get_submodule(explain_target(trained.recipe.family, model).layer)
    reshape = vit_reshape(model) if isinstance(model, VisionTransformer) else None
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes])


def test_crop_maps_are_pytorch_grad_cams_own(trained: Trained) -> None:
    transform = eval_transform(trained.recipe.preprocess)
    batch = torch.stack([transform(image) for image in to_tensors(trained.test.images[:12])])
    classes = [i % 3 for i in range(12)]  # not only the predicted ones

    maps, logits = trained.explainer().crop_maps(batch, classes, method="gradcam")

    np.testing.assert_allclose(maps, direct_gradcam(trained, batch, classes), rtol=0, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(logits, trained.model(batch).numpy(), rtol=1e-5, atol=1e-5)


def test_heatmap_of_a_cut_non_square_image_is_its_crop_map_mapped_back(trained: Trained) -> None:
    # a 2:3 landscape image under the default crop: the shorter side resized to size / 0.875, then
    # the center crop cuts both ends of the long side (and a little of the short one)
    size = trained.recipe.image_size
    spec = PreprocessSpec.resolve(size)
    image = to_tensors(trained.test.images[:1])[0]
    wide = torch.cat([image, image.flip(-1)], dim=-1)[..., : size * 3 // 2].contiguous()
    height, width = wide.shape[-2:]

    (explanation,) = trained.explainer(spec=spec).explain([wide], [0], method="gradcam")

    assert explanation.crop_map.shape == (spec.crop_height, spec.crop_width)
    assert explanation.heatmap.shape == (height, width)
    direct = direct_gradcam(trained, eval_transform(spec)(wide)[None], [0])[0]
    np.testing.assert_allclose(explanation.crop_map, direct, rtol=0, atol=1e-5)
    assert np.array_equal(explanation.heatmap, to_original(explanation.crop_map, height, width, spec))
    # zero where the crop cut: columns whose centre falls a full resized pixel or more outside it
    geometry = crop_geometry(height, width, spec)
    cols = (np.arange(width) + 0.5) * geometry.resized_width / width - 0.5
    cut = (cols <= geometry.left - 1) | (cols >= geometry.left + geometry.crop_width)
    assert cut[0]
    assert cut[-1]
    assert (explanation.heatmap[:, cut] == 0).all()
    assert explanation.heatmap[:, ~cut].max() > 0

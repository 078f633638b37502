"""Grad-CAM (Selvaraju et al., 2017) with pytorch-grad-cam, on an eager model and its target layer;
and, for ViTs, gradient-weighted attention rollout (``imgcls.explain.rollout``).

The library does the method; what is ours is the glue: the layer per architecture
(:func:`imgcls.architectures.explain_target`), turning a ViT's tokens into a grid, running on the
bundle's preprocessing, and mapping each map back onto the original image (``imgcls.explain.geometry``).
An :class:`Explainer` is not thread-safe (the library keeps per-call state on its hooks): give each
thread its own, or call it from one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgcls.architectures import ExplainTarget
from imgcls.explain.geometry import to_original
from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import eval_transform

__all__ = ["METHODS", "Explainer", "Explanation", "methods_for"]

METHODS = ("gradcam", "rollout")


def methods_for(target: ExplainTarget) -> tuple[str, ...]:
    """The methods a model with this target supports, the recommended one first: for a ViT the
    gradient-weighted rollout, which passes the pointing game where Grad-CAM on its tokens does not
    (docs/explanations.md has the figures)."""
    return ("rollout", "gradcam") if target.layout == "tokens" else ("gradcam",)


@dataclass(frozen=True)
class Explanation:
    """One image's prediction and the map for ``explained_index``."""

    predicted_index: int
    predicted_label: str
    probability: float  # of the predicted class, temperature-scaled when the bundle has a temperature
    explained_index: int  # the class the map explains: the predicted one unless asked otherwise
    explained_label: str
    method: str
    probabilities: np.ndarray  # [classes]
    crop_map: np.ndarray  # [crop_height, crop_width] in [0, 1]: on what the model saw
    heatmap: np.ndarray  # [height, width] of the original image, in [0, 1]; 0 where the crop cut


def tokens_to_grid(target: ExplainTarget) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's ``reshape_transform``: ``[N, prefix + h*w, C]`` tokens -> ``[N, C, h, w]``."""
    if target.layout != "tokens":
        return None
    assert target.grid is not None  # the manifest and explain_target guarantee it
    height, width = target.grid

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, target.prefix_tokens :, :]
        return patches.reshape(tokens.shape[0], height, width, tokens.shape[-1]).permute(0, 3, 1, 2)

    return reshape


class Explainer:
    """Predicts and explains images with ``model`` (eval mode, on CPU or its device)."""

    def __init__(
        self,
        model: nn.Module,
        target: ExplainTarget,
        *,
        labels: Sequence[str],
        preprocess: PreprocessSpec,
        temperature: float | None = None,
        multilabel: bool = False,
    ) -> None:
        self.model = model.eval()
        self.target = target
        self.labels = tuple(labels)
        self.preprocess = preprocess
        self.temperature = temperature
        self.multilabel = multilabel  # scores are each label's sigmoid, as the service serves them
        self._transform = eval_transform(preprocess)
        self._layer = model.get_submodule(target.layer)
        self._reshape = tokens_to_grid(target)
        self.methods = methods_for(target)  # the default first

    def crop_maps(
        self, batch: torch.Tensor, classes: Sequence[int] | None = None, *, method: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maps on the input crop ([N, crop_h, crop_w], [0, 1]) and the logits ([N, classes]) for a
        preprocessed ``batch``; ``classes`` picks the class explained per image (default: the
        predicted one); ``method`` defaults to the model's recommended one."""
        method = method or self.default_method
        if method not in self.methods:
            raise ValueError(f"method {method!r}: this model supports {', '.join(self.methods)}")
        device = next(self.model.parameters()).device
        if method == "rollout":
            from imgcls.explain.rollout import rollout_maps

            maps, logits = rollout_maps(
                self.model, self.target, batch.to(device), None if classes is None else list(classes)
            )
            return maps.cpu().numpy().astype(np.float32), logits.float().cpu().numpy()

        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
        try:
            with (
                torch.enable_grad(),
                GradCAM(self.model, [self._layer], reshape_transform=self._reshape) as cam,
            ):
                maps = cam(input_tensor=batch.to(device), targets=targets)
                logits = cam.outputs.detach().float().cpu().numpy()
        finally:
            # the library's backward also fills every parameter's .grad: a model-sized buffer that
            # would outlive the call (and keep accumulating) for nothing
            self.model.zero_grad(set_to_none=True)
        return np.clip(maps.astype(np.float32), 0.0, 1.0), logits

    @property
    def default_method(self) -> str:
        return self.methods[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.multilabel:
            return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
        scaled = logits.astype(np.float64) / (self.temperature or 1.0)
        exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def explain(
        self,
        images: Sequence[torch.Tensor],
        classes: Sequence[int | None] | None = None,
        *,
        method: str | None = None,
        batch_size: int = 16,
    ) -> list[Explanation]:
        """Explain decoded uint8 ``[C, H, W]`` images (``imgcls.preprocess.load_image``) with ``method``
        (one of ``self.methods``; default the first); ``classes`` gives the class to explain per image,
        None for its prediction."""
        method = method or self.default_method
        wanted = list(classes) if classes is not None else [None] * len(images)
        if len(wanted) != len(images):
            raise ValueError(f"{len(images)} images but {len(wanted)} classes")
        results: list[Explanation] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([self._transform(image) for image in chunk])
            # First the prediction, so an image without a requested class explains its predicted one.
            with torch.inference_mode():
                logits = self.model(batch.to(next(self.model.parameters()).device)).float().cpu().numpy()
            predicted = logits.argmax(axis=1)
            explained = [
                p if c is None else c
                for p, c in zip(predicted, wanted[start : start + len(chunk)], strict=True)
            ]
            maps, _ = self.crop_maps(batch, explained, method=method)
            probabilities = self.probabilities(logits)
            for image, p, c, crop_map, probs in zip(
                chunk, predicted, explained, maps, probabilities, strict=True
            ):
                height, width = image.shape[-2:]
                results.append(
                    Explanation(
                        predicted_index=int(p),
                        predicted_label=self.labels[int(p)],
                        probability=float(probs[int(p)]),
                        explained_index=int(c),
                        explained_label=self.labels[int(c)],
                        method=method,
                        probabilities=probs,
                        crop_map=crop_map,
                        heatmap=to_original(crop_map, int(height), int(width), self.preprocess),
                    )
                )
        return results

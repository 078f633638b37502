"""Pictures of the errors: the most confident mistakes with their maps for the predicted and the true
class side by side, and example thumbnails of the most confused pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

from imgcls.architectures import explain_target
from imgcls.explain.geometry import overlay
from imgcls.explain.gradcam import Explainer
from imgcls.manifest import PreprocessSpec
from imgcls.preprocess import decode_converted, load_image
from trainer.data import Sample

__all__ = ["confused_pair_strips", "mistakes_gallery", "most_confident_errors"]

PANEL_SIDE = 160  # small images (8x8 digits) are enlarged to this, without smoothing


def _panel(image: Image.Image, caption: str) -> Image.Image:
    scale = PANEL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    panel = Image.new("RGB", (PANEL_SIDE, PANEL_SIDE + 18), "white")
    panel.paste(image.convert("RGB").resize(size, resample), ((PANEL_SIDE - size[0]) // 2, 0))
    ImageDraw.Draw(panel).text((4, PANEL_SIDE + 3), caption[:26], fill="black")
    return panel


def _row(panels: Sequence[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (sum(p.width for p in panels) + 6 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for panel in panels:
        row.paste(panel, (x, 0))
        x += panel.width + 6
    return row


def _picture(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return decode_converted(opened, "RGB")


def most_confident_errors(probabilities: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Indices of the wrong predictions, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:count].tolist()


def mistakes_gallery(
    model: nn.Module,
    architecture: str,
    spec: PreprocessSpec,
    samples: Sequence[Sample],
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    out_dir: Path,
    *,
    count: int,
) -> list[dict]:
    """One PNG per confident mistake in ``out_dir``: the image, the map of the predicted class, and of
    the true class (Grad-CAM; for a ViT the gradient-weighted rollout, its default method). Returns the
    rows the page and metrics.json list."""
    indices = most_confident_errors(probabilities, labels, count)
    if not indices:
        return []
    explainer = Explainer(model, explain_target(architecture, model), labels=class_names, preprocess=spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, index in enumerate(tqdm(indices, desc="mistakes gallery", unit="image", leave=False), start=1):
        sample = samples[index]
        image = load_image(Path(sample.path), spec.color_mode)
        predicted = int(probabilities[index].argmax())
        true = int(labels[index])
        for_predicted, for_true = explainer.explain([image, image], [predicted, true])
        picture = _picture(Path(sample.path))
        figure = _row(
            [
                _panel(picture, f"true {class_names[true]}"),
                _panel(overlay(picture, for_predicted.heatmap), f"why {class_names[predicted]}"),
                _panel(overlay(picture, for_true.heatmap), f"why {class_names[true]}"),
            ]
        )
        name = f"mistake-{rank:02d}.png"
        figure.save(out_dir / name)
        rows.append(
            {
                "path": str(sample.path),
                "true": class_names[true],
                "predicted": class_names[predicted],
                "confidence": round(float(probabilities[index, predicted]), 6),
                "method": for_predicted.method,
                "figure": f"{out_dir.name}/{name}",
            }
        )
    return rows


def confused_pair_strips(
    pairs: list[dict],
    samples: Sequence[Sample],
    predictions: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    out_dir: Path,
    *,
    examples: int = 4,
) -> None:
    """Add ``examples`` (paths) and ``figure`` to each pair: a strip of images of the true class that the
    model took for the other."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(class_names)}
    for rank, pair in enumerate(pairs, start=1):
        true, predicted = index[pair["true"]], index[pair["predicted"]]
        chosen = np.flatnonzero((labels == true) & (predictions == predicted))[:examples]
        pair["examples"] = [str(samples[i].path) for i in chosen]
        if len(chosen) == 0:
            continue
        strip = _row([_panel(_picture(Path(samples[i].path)), Path(samples[i].path).name) for i in chosen])
        name = f"confused-{rank:02d}.png"
        strip.save(out_dir / name)
        pair["figure"] = f"{out_dir.name}/{name}"

"""``imgcls explain``: Grad-CAM maps for images, from a bundle, written beside a line per prediction.

Its libraries are imported when it runs, so the rest of the command line starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer()


def _output_stems(images: list[Path]) -> list[str]:
    """One output name per image, after its file name; a repeated name gets -2, -3, ..."""
    seen: dict[str, int] = {}
    stems = []
    for image in images:
        count = seen.get(image.stem, 0) + 1
        seen[image.stem] = count
        stems.append(image.stem if count == 1 else f"{image.stem}-{count}")
    return stems


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.", show_default=False)],
    bundle: Annotated[
        Path, typer.Option(help="Bundle directory: <repo>/<name>/<version> (holds manifest.json).")
    ],
    out: Annotated[Path, typer.Option(help="Directory for the overlays and maps (created).")],
    label: Annotated[
        str | None,
        typer.Option(help="Explain this class for every image (default: each image's prediction)."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Explanation method: gradcam (every model) or rollout (gradient-weighted attention "
            "rollout, vision transformers only). Default: rollout for a vision transformer, else gradcam.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images explained together.")] = 16,
) -> None:
    """Explain predictions: per image, write NAME.METHOD.png (the map over the image) and NAME.METHOD.npy
    (the map at the image's own size, float32 in [0, 1]; 0 where the center crop cut), and print the
    prediction beside each."""
    from PIL import UnidentifiedImageError

    from imgcls.errors import DataError, describe_labels
    from imgcls.explain.bundle import ExplainUnavailableError, load_explainer
    from imgcls.explain.gradcam import METHODS

    if method is not None and method not in METHODS:
        raise ExplainUnavailableError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    explainer = load_explainer(bundle)
    method = method or explainer.default_method
    if method not in explainer.methods:
        raise ExplainUnavailableError(
            f"--method {method!r}: this bundle's model explains with {', '.join(explainer.methods)} "
            "(rollout needs a vision transformer)"
        )
    labels = explainer.labels
    wanted: int | None = None
    if label is not None:
        if label not in labels:
            raise DataError(
                f"--label {label!r} is not a class of this model; its classes: {describe_labels(labels)}"
            )
        wanted = labels.index(label)

    import numpy as np

    from imgcls.explain.geometry import overlay
    from imgcls.preprocess import decode_converted, load_image

    color_mode = explainer.preprocess.color_mode
    decoded = []
    for path in images:
        try:
            decoded.append(load_image(path, color_mode))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})".splitlines()[0]) from None
    out.mkdir(parents=True, exist_ok=True)
    explanations = explainer.explain(decoded, [wanted] * len(decoded), method=method, batch_size=batch_size)
    from PIL import Image

    for path, stem, result in zip(images, _output_stems(images), explanations, strict=True):
        overlay_path = out / f"{stem}.{method}.png"
        map_path = out / f"{stem}.{method}.npy"
        np.save(map_path, result.heatmap)
        with Image.open(path) as opened:
            picture = decode_converted(opened, "RGB")
        overlay(picture, result.heatmap).save(overlay_path)
        typer.echo(
            f"{path}: {result.predicted_label} ({result.probability:.3f}); "
            f"{method} for {result.explained_label} -> {overlay_path}, {map_path}"
        )

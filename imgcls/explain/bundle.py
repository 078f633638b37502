"""The eager model a bundle's explanations run on: rebuilt from ``manifest.architecture`` and the
weights file ``manifest.explain`` lists, checked against its recorded sha256.

A bundle without ``explain`` (written before explanations existed) is refused with how to re-export;
explaining a frozen artifact is not possible (hooks never fire inside TorchScript), and a map from
anything else would be silently wrong.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imgcls.architectures import ExplainTarget, build_architecture
from imgcls.errors import BundleError, ImgclsError, describe_error
from imgcls.explain.gradcam import Explainer
from imgcls.extras import require_extra
from imgcls.manifest import Manifest, load_manifest, sha256_file

__all__ = ["ExplainUnavailableError", "load_explainer"]


class ExplainUnavailableError(ImgclsError):
    """The bundle cannot be explained: it carries no eager weights, or asks for what is not installed."""

    exit_code = 2


def load_explainer(bundle_dir: Path, manifest: Manifest | None = None, *, device: str = "cpu") -> Explainer:
    """An :class:`Explainer` for the bundle at ``bundle_dir``; raises a message naming the fix when it
    cannot have one."""
    require_extra("explain", "explaining a prediction")
    bundle_dir = Path(bundle_dir)
    manifest = manifest or load_manifest(bundle_dir)
    spec = manifest.explain
    if spec is None:
        raise ExplainUnavailableError(
            f"{bundle_dir}: this bundle carries no eager weights for explanations (exported before imgcls "
            f"could explain, or with export.explainable=false); re-export it: imgcls export --run "
            f"{manifest.source.run_dir or 'RUN'} (or imgcls export --random-init for a random-weights bundle)"
        )
    if manifest.architecture.startswith("timm:"):
        require_extra("train", f"explaining {manifest.architecture}")  # timm comes with the train extra
    path = bundle_dir / spec.weights
    if not path.is_file():
        raise BundleError(
            f"{path}: listed in the manifest's explain section but missing; re-export the bundle"
        )
    if sha256_file(path) != spec.sha256:
        raise BundleError(
            f"{path}: sha256 does not match the manifest; the file was changed, re-export the bundle"
        )
    model = build_architecture(
        manifest.architecture,
        manifest.num_classes,
        in_chans=manifest.input.channels,
        image_size=manifest.input.height,
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises several types for a bad or mismatched file
        raise BundleError(
            f"{path}: cannot load the eager weights into {manifest.architecture} ({describe_error(exc)}); "
            "re-export the bundle"
        ) from None
    target = ExplainTarget(spec.target_layer, spec.layout, spec.token_grid, spec.prefix_tokens)
    explainer = Explainer(
        model.to(device).eval(),
        target,
        labels=manifest.labels,
        preprocess=manifest.preprocess,
        temperature=manifest.temperature,
        multilabel=manifest.task == "multilabel",
    )
    # what the model supports and the bundle was exported with (older bundles list only gradcam)
    explainer.methods = tuple(m for m in explainer.methods if m in spec.methods)
    return explainer

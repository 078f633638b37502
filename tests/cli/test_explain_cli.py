"""`imgcls explain` from a bundle: files per image, the prediction printed, and refusals that say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    from trainer.export import export_random_init

    out = tmp_path_factory.mktemp("explain") / "models" / "rand" / "1"
    export_random_init("simple_cnn", 3, 32, out, formats=("onnx",))
    return out


def _image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_random_init_bundle_is_explainable_and_maps_have_the_image_size(random_bundle, tmp_path, capsys):
    manifest = json.loads((random_bundle / "manifest.json").read_text())
    assert manifest["explain"]["target_layer"] == "features.12"
    first = _image(tmp_path / "wide.png", (60, 40), 1)
    second = _image(tmp_path / "tall.jpg", (30, 50), 2)
    out = tmp_path / "out"
    assert main(["explain", "--bundle", str(random_bundle), str(first), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wide.png: class_" in printed and "tall.jpg: class_" in printed
    for stem, (width, height) in (("wide", (60, 40)), ("tall", (30, 50))):
        heat = np.load(out / f"{stem}.gradcam.npy")
        assert heat.shape == (height, width) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        with Image.open(out / f"{stem}.gradcam.png") as overlay:
            assert overlay.size == (width, height) and overlay.mode == "RGB"


def test_label_option_explains_that_class_and_an_unknown_label_is_refused(random_bundle, tmp_path, capsys):
    image = _image(tmp_path / "a.png", (32, 32), 3)
    assert (
        main(
            [
                "explain",
                "--bundle",
                str(random_bundle),
                str(image),
                "--out",
                str(tmp_path),
                "--label",
                "class_2",
            ]
        )
        == 0
    )
    assert "gradcam for class_2" in capsys.readouterr().out
    assert (
        main(
            ["explain", "--bundle", str(random_bundle), str(image), "--out", str(tmp_path), "--label", "cat"]
        )
        == 2
    )
    assert (
        "--label 'cat' is not a class of this model; its classes: class_0, class_1, class_2"
        in capsys.readouterr().err
    )


def test_bundle_without_explain_section_is_refused_with_how_to_re_export(random_bundle, tmp_path, capsys):
    import shutil

    old = tmp_path / "old" / "1"
    shutil.copytree(random_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["explain"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    image = _image(tmp_path / "a.png", (32, 32), 4)
    assert main(["explain", "--bundle", str(old), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "carries no eager weights for explanations" in err and "imgcls export" in err
    assert not (tmp_path / "o").exists()


def test_changed_weights_file_and_unreadable_image_are_refused(random_bundle, tmp_path, capsys):
    import shutil

    changed = tmp_path / "changed" / "1"
    shutil.copytree(random_bundle, changed)
    with (changed / "weights.pt").open("ab") as handle:
        handle.write(b"x")
    image = _image(tmp_path / "a.png", (32, 32), 5)
    assert main(["explain", "--bundle", str(changed), str(image), "--out", str(tmp_path / "o")]) == 2
    assert "sha256 does not match" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["explain", "--bundle", str(random_bundle), str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err


def test_rollout_is_refused_for_a_cnn_bundle_with_the_methods_it_has(random_bundle, tmp_path, capsys):
    image = _image(tmp_path / "a.png", (32, 32), 6)

    code = main(
        ["explain", "--bundle", str(random_bundle), str(image), "--out", str(tmp_path), "--method", "rollout"]
    )

    assert code == 2
    assert "explains with gradcam (rollout needs a vision transformer)" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                "--bundle",
                str(random_bundle),
                str(image),
                "--out",
                str(tmp_path),
                "--method",
                "lime",
            ]
        )
        == 2
    )
    assert "choose one of gradcam, rollout" in capsys.readouterr().err


def test_a_vit_bundle_explains_with_rollout_by_default_and_with_gradcam_on_request(tmp_path, capsys):
    pytest.importorskip("timm")
    from trainer.export import export_random_init

    bundle = tmp_path / "models" / "vit" / "1"
    export_random_init("timm:vit_tiny_patch16_224", 3, 32, bundle, formats=("onnx",))
    assert json.loads((bundle / "manifest.json").read_text())["explain"]["methods"] == ["rollout", "gradcam"]
    image = _image(tmp_path / "photo.png", (48, 40), 7)
    out = tmp_path / "out"

    assert main(["explain", "--bundle", str(bundle), str(image), "--out", str(out)]) == 0
    assert (
        main(["explain", "--bundle", str(bundle), str(image), "--out", str(out), "--method", "gradcam"]) == 0
    )

    printed = capsys.readouterr().out
    assert "rollout for class_" in printed and "gradcam for class_" in printed
    rollout, gradcam = np.load(out / "photo.rollout.npy"), np.load(out / "photo.gradcam.npy")
    assert rollout.shape == gradcam.shape == (40, 48)
    assert rollout.min() >= 0.0 and rollout.max() <= 1.0
    assert (out / "photo.rollout.png").is_file() and (out / "photo.gradcam.png").is_file()

"""Multilabel pieces: data, splits, losses, thresholds, metrics, parity and the manifest."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from imgcls.errors import ConfigError, DataError
from trainer.config import load_config
from trainer.data import MULTILABEL, Sample, discover, label_matrix
from trainer.losses import MultilabelLoss, build_criterion, label_pos_weight
from trainer.multilabel import (
    label_set_ids,
    mean_average_precision,
    multilabel_metrics,
    tune_thresholds,
    validation_scores,
)
from trainer.parity import compare
from trainer.splits import group_split, read_split_file, split_samples, write_split_file

# --- data ---


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())


def test_csv_label_cells_hold_semicolon_separated_labels_and_may_be_empty(tmp_path: Path):
    _touch(tmp_path, "a.png", "b.png", "c.png")
    (tmp_path / "data.csv").write_text("path,label\na.png,cat;dog\nb.png,dog\nc.png,\n")
    source = discover(tmp_path / "data.csv", multilabel=True)
    assert source.multilabel and source.class_names == ["cat", "dog"]
    assert [(s.path.name, s.label, s.labels) for s in source.samples] == [
        ("a.png", MULTILABEL, (0, 1)),
        ("b.png", MULTILABEL, (1,)),
        ("c.png", MULTILABEL, ()),
    ]


def test_csv_with_one_row_per_label_merges_an_image_s_rows(tmp_path: Path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "data.csv").write_text("path,label\na.png,cat\na.png,dog\nb.png,dog\n")
    source = discover(tmp_path / "data.csv", multilabel=True)
    assert [(s.path.name, s.labels) for s in source.samples] == [("a.png", (0, 1)), ("b.png", (1,))]


def test_several_labels_in_a_single_label_csv_point_at_task_multilabel(tmp_path: Path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "data.csv").write_text("path,label\na.png,cat;dog\nb.png,dog\n")
    with pytest.raises(DataError, match=r"line 2: label 'cat;dog' holds several labels; .*task: multilabel"):
        discover(tmp_path / "data.csv")


def test_single_label_csv_refuses_one_image_with_two_labels(tmp_path: Path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "data.csv").write_text("path,label\na.png,cat\nb.png,dog\na.png,dog\n")
    with pytest.raises(DataError, match=r"line 4: 'a.png' is labelled 'dog' here but 'cat' on line 2"):
        discover(tmp_path / "data.csv")


def test_folder_convention_one_image_copied_into_each_of_its_label_folders(tmp_path: Path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat" / "x.png").write_bytes(b"both")
    (tmp_path / "dog" / "copy-of-x.png").write_bytes(b"both")
    (tmp_path / "dog" / "y.png").write_bytes(b"only dog")
    source = discover(tmp_path, multilabel=True)
    assert [(s.path.relative_to(tmp_path).as_posix(), s.labels) for s in source.samples] == [
        ("cat/x.png", (0, 1)),
        ("dog/y.png", (1,)),
    ]


def test_label_matrix_is_multi_hot_for_multilabel_and_one_hot_otherwise():
    samples = [
        Sample(Path("a"), MULTILABEL, labels=(0, 2)),
        Sample(Path("b"), MULTILABEL, labels=()),
        Sample(Path("c"), 1),
    ]
    assert label_matrix(samples, 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


# --- splits ---


def _multilabel_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    rates = [0.5, 0.2, 0.05]
    return [
        Sample(
            Path(f"/d/{i:04d}.png"),
            MULTILABEL,
            labels=tuple(k for k, r in enumerate(rates) if rng.random() < r),
        )
        for i in range(n)
    ]


def test_multilabel_split_stratifies_every_label_including_a_rare_one():
    samples = _multilabel_samples(1000)
    splits = split_samples(samples, ["a", "b", "c"], 0.1, 0.2, seed=0)
    totals = label_matrix(samples, 3).sum(axis=0)
    for name, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        counts = label_matrix(splits[name], 3).sum(axis=0)
        np.testing.assert_allclose(counts / totals, fraction, atol=0.02)
        assert len(splits[name]) == pytest.approx(fraction * 1000, abs=10)  # images without labels spread too


def test_multilabel_split_file_round_trips_label_sets(tmp_path: Path):
    samples = [
        Sample(tmp_path / f"{i}.png", MULTILABEL, labels=labels)
        for i, labels in enumerate([(0, 1), (), (1,)] * 4)
    ]
    splits = group_split(samples, ["cat", "dog"], 0.25, 0.25, seed=0)
    write_split_file(tmp_path / "split.csv", splits, ["cat", "dog"], tmp_path)
    with (tmp_path / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "labels", "split"]
    assert Counter(row["labels"] for row in rows) == {"cat;dog": 4, "": 4, "dog": 4}
    back = read_split_file(tmp_path / "split.csv", ["cat", "dog"], tmp_path)
    assert {n: [(s.path, s.labels) for s in p] for n, p in back.items()} == {
        n: [(s.path, s.labels) for s in p] for n, p in splits.items()
    }


# --- losses ---


def _logits_targets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 5, generator=generator) * 3
    targets = (torch.rand(16, 5, generator=generator) < 0.3).float()
    return logits, targets


def test_bce_is_torch_s_binary_cross_entropy_with_logits():
    logits, targets = _logits_targets()
    assert MultilabelLoss("bce")(logits, targets) == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets).item()
    )


def test_focal_is_torchvision_s_sigmoid_focal_loss_without_alpha():
    logits, targets = _logits_targets()
    expected = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="mean")
    assert MultilabelLoss("focal", gamma=2.0)(logits, targets).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_asymmetric_without_focusing_or_clip_is_bce():
    logits, targets = _logits_targets()
    loss = MultilabelLoss("asymmetric", gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    assert loss(logits, targets).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets).item()
    )


def test_asymmetric_clip_makes_very_easy_negatives_free_and_keeps_positives():
    loss = MultilabelLoss("asymmetric", gamma_neg=4.0, gamma_pos=0.0, clip=0.05)
    easy_negative = loss(torch.tensor([[-5.0]]), torch.tensor([[0.0]]))  # p = 0.0067 < clip
    positive = loss(torch.tensor([[-1.0]]), torch.tensor([[1.0]]))
    assert easy_negative.item() == 0.0
    assert positive.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.tensor(-1.0), torch.tensor(1.0)).item()
    )


def test_pos_weight_is_negatives_over_positives_and_needs_every_label():
    assert label_pos_weight(np.array([10, 25]), 100).tolist() == [9.0, 3.0]
    with pytest.raises(
        ConfigError,
        match=r"labels \[1\] \(indices into labels.json\) have no positive training images.*optim.class_weights=none",
    ):
        label_pos_weight(np.array([10, 0]), 100)


def test_build_criterion_gives_a_multilabel_loss_for_multilabel_runs():
    criterion = build_criterion(
        "bce",
        counts=np.array([5, 5]),
        weighting="inverse_frequency",
        beta=0.999,
        gamma=2.0,
        label_smoothing=0.0,
        multilabel_images=20,
    )
    assert isinstance(criterion, MultilabelLoss) and criterion.pos_weight.tolist() == [3.0, 3.0]


# --- thresholds and metrics ---


def test_thresholds_maximise_each_label_s_f1_with_a_margin_and_default_without_positives():
    scores = np.array([[0.9, 0.2], [0.7, 0.1], [0.4, 0.3], [0.2, 0.05]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds = tune_thresholds(scores, targets)
    assert thresholds[0] == pytest.approx((0.7 + 0.4) / 2)  # both positives kept, the negative below
    assert thresholds[1] == 0.5  # no positive to tune on


def test_multilabel_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(int)
    scores = np.clip(targets * 0.6 + rng.random((200, 4)) * 0.5, 0, 1)
    thresholds = np.array([0.5, 0.55, 0.6, 0.5])
    predicted = (scores >= thresholds).astype(int)
    metrics = multilabel_metrics(scores, targets, ["a", "b", "c", "d"], thresholds)
    assert (
        metrics["subset_accuracy"] == metrics["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    )
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(targets, predicted))
    assert metrics["f1_micro"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert metrics["map"] == pytest.approx(average_precision_score(targets, scores, average="macro"))
    assert metrics["per_class"]["c"]["threshold"] == 0.6


def test_map_skips_labels_without_positives():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    targets = np.array([[1, 0], [0, 0]])
    assert mean_average_precision(scores, targets) == 1.0


def test_validation_scores_cover_every_early_stopping_metric():
    logits, targets = _logits_targets()
    scores = validation_scores(logits.numpy(), targets.numpy().astype(int))
    assert set(scores) == {"loss", "accuracy", "f1_macro", "balanced_accuracy", "map"}


def test_label_sets_become_shared_ids_for_the_baseline_check():
    (train, test), names = label_set_ids(
        ["a", "b"], np.array([[1, 0], [1, 0], [0, 0]]), np.array([[0, 0], [1, 1]])
    )
    assert train.tolist() == [0, 0, 1] and test.tolist() == [1, 2]
    assert names == ["a", "(none)", "a;b"]


# --- parity and the manifest ---


def test_parity_on_label_sets_passes_numerically_close_logits_and_gates_int8_on_set_agreement():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((100, 3)).astype(np.float32) * 4
    thresholds = np.array([0.5, 0.5, 0.5])
    close = compare(reference, reference + 1e-6, tolerance=1e-4, thresholds=thresholds)
    assert close.passed and close.agreement_on == "label_set" and close.top1_agreement == 1.0
    flipped = reference.copy()
    flipped[:5, 0] = -flipped[:5, 0]  # five images change their label set
    int8 = compare(reference, flipped, tolerance=1e-4, precision="int8", thresholds=thresholds)
    assert int8.top1_agreement == pytest.approx(0.95) and not int8.passed


def test_manifest_requires_one_threshold_per_label_for_multilabel(tiny_bundle):
    from pydantic import ValidationError

    from imgcls.manifest import load_manifest

    manifest = load_manifest(tiny_bundle[0])
    fields = manifest.model_dump()
    with pytest.raises(ValidationError, match="one threshold per label"):
        type(manifest).model_validate({**fields, "task": "multilabel", "temperature": None})
    with pytest.raises(ValidationError, match="thresholds are for task: multilabel"):
        type(manifest).model_validate({**fields, "thresholds": [0.5] * len(manifest.labels)})
    ok = type(manifest).model_validate(
        {**fields, "task": "multilabel", "temperature": None, "thresholds": [0.5] * len(manifest.labels)}
    )
    assert ok.task == "multilabel"


# --- config ---


def test_multilabel_config_defaults_to_bce_and_map_and_refuses_single_label_options():
    config = load_config(None, ["task=multilabel"])
    assert (config.optim.loss, config.train.early_stopping_metric) == ("bce", "map")
    with pytest.raises(
        ConfigError, match=r"does not support optim.loss=cross_entropy, train.sampler=class_balanced"
    ):
        load_config(None, ["task=multilabel", "optim.loss=cross_entropy", "train.sampler=class_balanced"])
    with pytest.raises(ConfigError, match=r"optim.loss=bce scores each label on its own"):
        load_config(None, ["optim.loss=bce"])


# --- edges found in review ---


def test_macro_averages_skip_labels_absent_from_the_split():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    scores = targets * 0.9 + 0.05
    metrics = multilabel_metrics(scores, targets, ["a", "b"], np.array([0.5, 0.5]))
    assert metrics["f1_macro"] == metrics["precision_macro"] == metrics["recall_macro"] == 1.0
    assert validation_scores(np.where(targets == 1, 5.0, -5.0), targets)["f1_macro"] == 1.0


@pytest.mark.parametrize(
    "loss",
    [
        MultilabelLoss("focal", gamma=0.5),
        MultilabelLoss("asymmetric", gamma_neg=0.5, gamma_pos=0.5, clip=0.0),
        MultilabelLoss("asymmetric", gamma_neg=0.5, gamma_pos=0.5, clip=0.05),
    ],
)
def test_focusing_exponents_below_one_keep_gradients_finite_on_saturated_logits(loss):
    logits = torch.tensor([[-100.0, 100.0, 3.0]], requires_grad=True)
    loss(logits, torch.tensor([[0.0, 1.0, 1.0]])).backward()
    assert torch.isfinite(logits.grad).all()


def test_single_label_focal_loss_keeps_gradients_finite_when_saturated():
    from trainer.losses import FocalLoss

    logits = torch.tensor([[100.0, -100.0]], requires_grad=True)
    FocalLoss(gamma=0.5)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_a_split_file_of_the_other_task_is_refused_with_the_fix(tmp_path: Path):
    samples = [Sample(tmp_path / f"{i}.png", MULTILABEL, labels=(i % 2,)) for i in range(8)]
    splits = group_split(samples, ["cat", "dog"], 0.25, 0.25, seed=0)
    write_split_file(tmp_path / "split.csv", splits, ["cat", "dog"], tmp_path)
    with pytest.raises(DataError, match=r"a split of a multilabel run .* this run has task: multiclass"):
        read_split_file(tmp_path / "split.csv", ["cat", "dog"], tmp_path, multilabel=False)
    assert read_split_file(tmp_path / "split.csv", ["cat", "dog"], tmp_path, multilabel=True)["train"]


def test_one_label_is_enough_for_multilabel_data_but_not_for_single_label(tmp_path: Path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "data.csv").write_text("path,label\na.png,defect\nb.png,\n")
    assert discover(tmp_path / "data.csv", multilabel=True).class_names == ["defect"]
    (tmp_path / "one.csv").write_text("path,label\na.png,defect\nb.png,defect\n")
    with pytest.raises(
        DataError, match="needs at least 2 classes, found only 'defect'; give every row one of"
    ):
        discover(tmp_path / "one.csv")


def test_the_baseline_guesses_among_observed_label_sets_only():
    from trainer.multilabel import evaluate_multilabel

    train = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    targets = np.array([[1, 0], [0, 1]] * 20)
    logits = np.where(targets == 1, 4.0, -4.0)
    logits[0] = [4.0, 4.0]  # one prediction of a set never seen: {a, b}
    _, calibration, check = evaluate_multilabel(logits, targets, logits, targets, ["a", "b"], train)
    assert check.uniform_accuracy == 0.5  # two observed sets, not three
    assert calibration["temperature"] is None

"""Is the model clearly better than one that learned nothing? The check every run ends with.

Two baselines: always answering the training split's most frequent class (what a collapsed
model does on imbalanced data), and guessing uniformly (``1 / classes``). The model passes when
its test accuracy beats the better of them both by a margin that matters and by more than luck:

- skill ``(accuracy - baseline) / (1 - baseline)`` of at least ``MIN_SKILL``: the share of the
  possible improvement over the baseline that the model achieves (Cohen's kappa against a
  constant predictor), so 0.92 against a 0.90 majority class is as weak as 0.55 against 0.50;
- a one-sided exact binomial test of the test accuracy against the baseline at ``MAX_P_VALUE``,
  so a handful of test images cannot pass by chance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

from imgcls.manifest import BaselineCheck
from trainer.checkpoint import Progress
from trainer.config import RunConfig

__all__ = ["MAX_P_VALUE", "MIN_SKILL", "check_against_baselines", "likely_causes_of_chance"]

MIN_SKILL = 0.1
MAX_P_VALUE = 0.01


def check_against_baselines(
    predictions: np.ndarray,
    labels: np.ndarray,
    train_labels: Sequence[int],
    class_names: Sequence[str],
    *,
    likely_causes: Sequence[str] = (),
    unit: str = "class",
) -> BaselineCheck:
    """Compare test ``predictions`` (class indices) with the baselines; ``likely_causes`` go into
    the warning, most likely first. ``unit`` names what a class is in the warning (multilabel runs
    pass their label sets as classes: ``label set``)."""
    samples = len(labels)
    correct = int((predictions == labels).sum())
    accuracy = correct / samples if samples else 0.0
    majority = Counter(train_labels).most_common(1)[0][0] if train_labels else 0
    majority_accuracy = float((labels == majority).mean()) if samples else 0.0
    uniform_accuracy = 1.0 / len(class_names)
    baseline = max(majority_accuracy, uniform_accuracy)
    skill = (accuracy - baseline) / (1.0 - baseline) if baseline < 1.0 else 0.0
    p_value = float(binomtest(correct, samples, baseline, alternative="greater").pvalue) if samples else 1.0
    passed = skill >= MIN_SKILL and p_value < MAX_P_VALUE
    warning = None
    if not passed:
        causes = [*likely_causes]
        if p_value >= MAX_P_VALUE and skill >= MIN_SKILL:
            causes.insert(
                0, f"a test split of {samples} images is too small to tell; add data or test_fraction"
            )
        causes.append(f"labels that do not match the images, or too few images per {unit}")
        warning = (
            f"the model is not clearly better than a model that learned nothing: test accuracy "
            f"{accuracy:.4f} on {samples} images, against {majority_accuracy:.4f} for always answering "
            f"{class_names[majority]!r} (the most frequent training {unit}) and {uniform_accuracy:.4f} for "
            f"guessing (skill {skill:.2f}, needs {MIN_SKILL}; p = {p_value:.2g}, needs < {MAX_P_VALUE}). "
            "Likely causes: " + " ".join(f"({n}) {cause};" for n, cause in enumerate(causes, 1)).rstrip(";")
        )
    return BaselineCheck(
        accuracy=accuracy,
        samples=samples,
        majority_class=class_names[majority],
        majority_accuracy=majority_accuracy,
        uniform_accuracy=uniform_accuracy,
        skill=skill,
        p_value=min(1.0, p_value),
        passed=passed,
        warning=warning,
    )


def likely_causes_of_chance(config: RunConfig, progress: Progress, steps: int) -> list[str]:
    """What most often makes a run end at chance, judged from this run, most likely first."""
    cfg_train = config.train
    causes = []
    last = progress.history[-1] if progress.history else {}
    if progress.best_weights == "ema":
        causes.append(
            f"the averaged weights kept (train.ema_decay={cfg_train.ema_decay}) lag after {steps} optimiser "
            "steps; lower train.ema_decay or set it to null"
        )
    if steps < 100:
        causes.append(f"only {steps} optimiser steps in all; raise train.epochs or lower train.batch_size")
    train_accuracy = last.get("train_accuracy")
    if train_accuracy is not None and train_accuracy >= 0.9:
        causes.append(
            f"training accuracy reached {train_accuracy:.2f}: the model memorises the training split "
            "(more data, stronger augment.preset, model.drop_rate) or the splits differ"
        )
    else:
        causes.append(
            f"the learning rate (optim.lr={config.optim.lr}) is too high or too low for this model; "
            "try 3x and 1/3 of it"
        )
    return causes

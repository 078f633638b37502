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

__all__ = ["MAX_P_VALUE", "MIN_SKILL", "check_against_baselines"]

MIN_SKILL = 0.1
MAX_P_VALUE = 0.01


def check_against_baselines(
    predictions: np.ndarray,
    labels: np.ndarray,
    train_labels: Sequence[int],
    class_names: Sequence[str],
    *,
    likely_causes: Sequence[str] = (),
) -> BaselineCheck:
    """Compare test ``predictions`` (class indices) with the baselines; ``likely_causes`` go into
    the warning, most likely first."""
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
        causes.append("labels that do not match the images, or too few images per class")
        warning = (
            f"the model is not clearly better than a model that learned nothing: test accuracy "
            f"{accuracy:.4f} on {samples} images, against {majority_accuracy:.4f} for always answering "
            f"{class_names[majority]!r} (the most frequent training class) and {uniform_accuracy:.4f} for "
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

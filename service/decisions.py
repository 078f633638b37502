"""From a batch of scores to answers: the top-k labels, and a multilabel bundle's label set.

Shared by the HTTP routes and bulk prediction, so that both answer exactly alike (ties included).
"""

from __future__ import annotations

import numpy as np

__all__ = ["labels_above", "top_k_indices"]


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``[N, classes]``, the indices of the ``k`` largest, largest first, ties to the lower
    index: exactly ``argsort(-p, kind="stable")[:, :k]``, without sorting all classes on the event loop."""
    if 4 * k >= probabilities.shape[1]:
        return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    out = np.empty((len(probabilities), k), dtype=np.intp)
    for row, values in enumerate(probabilities):
        kth = np.partition(values, -k)[-k]
        candidates = np.flatnonzero(values >= kth)  # every tie at the boundary, in index order
        out[row] = candidates[np.argsort(-values[candidates], kind="stable")[:k]]
    return out


def labels_above(row: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The indices of the labels whose score reaches its threshold, highest score first (possibly none)."""
    chosen = np.flatnonzero(row >= thresholds)
    return chosen[np.argsort(-row[chosen], kind="stable")]

"""top_k_indices: the stable-argsort answer without a full sort."""

from __future__ import annotations

import numpy as np
import pytest

from service.routes_common import top_k_indices


@pytest.mark.parametrize("k", [1, 3, 5, 250])
def test_top_k_matches_a_stable_full_sort_including_ties(k: int):
    rng = np.random.default_rng(k)
    probabilities = rng.integers(0, 20, size=(16, 1000)).astype(np.float32)  # many ties
    expected = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k_indices(probabilities, k), expected)


def test_top_k_of_a_uniform_row_is_the_first_k_indices():
    np.testing.assert_array_equal(top_k_indices(np.full((2, 100), 0.01), 3), [[0, 1, 2], [0, 1, 2]])

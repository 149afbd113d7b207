"""Refine's query vector: normalise(a * text + b * mean(positives) - c * mean(negatives))."""

from __future__ import annotations

import numpy as np
import pytest

from cliprs.errors import InvalidInput
from cliprs_search.service.projects import ROCCHIO_A, ROCCHIO_B, ROCCHIO_C, check_direction, rocchio

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def none() -> np.ndarray:
    return np.empty((0, DIM), dtype=np.float32)


def test_the_formula_with_the_default_weights() -> None:
    assert (ROCCHIO_A, ROCCHIO_B, ROCCHIO_C) == (1.0, 0.75, 0.25)
    rng = np.random.default_rng(1)
    text, pos, neg = unit(rng, 1)[0], unit(rng, 3), unit(rng, 2)
    want = 1.0 * text + 0.75 * pos.mean(axis=0) - 0.25 * neg.mean(axis=0)
    got = rocchio(text, pos, neg)
    assert got.dtype == np.float32 and got.shape == (DIM,)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-6)
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-6


def test_hand_computed_example_and_custom_weights() -> None:
    e = np.eye(DIM, dtype=np.float32)
    # text e0, positives e1 and e2 (mean (0, .5, .5)), negative e3: with a=1, b=2, c=1
    # the sum is (1, 1, 1, -1) and its unit vector has 0.5 in each of those places.
    got = rocchio(e[0], e[1:3], e[3:4], a=1.0, b=2.0, c=1.0)
    np.testing.assert_allclose(got[:4], [0.5, 0.5, 0.5, -0.5], atol=1e-7)
    assert not got[4:].any()


def test_missing_terms_drop_out() -> None:
    rng = np.random.default_rng(2)
    text, pos, neg = unit(rng, 1)[0], unit(rng, 4), unit(rng, 2)
    np.testing.assert_allclose(rocchio(text, none(), none()), text, atol=1e-6)  # no labels: the text
    p = pos.mean(axis=0)
    np.testing.assert_allclose(rocchio(None, pos, none()), p / np.linalg.norm(p), atol=1e-6)
    only_neg = text - 0.25 * neg.mean(axis=0)
    np.testing.assert_allclose(rocchio(text, none(), neg), only_neg / np.linalg.norm(only_neg), atol=1e-6)


def test_labels_move_the_query_towards_positives_and_away_from_negatives() -> None:
    rng = np.random.default_rng(3)
    text, pos, neg = unit(rng, 1)[0], unit(rng, 5), unit(rng, 5)
    refined = rocchio(text, pos, neg)
    assert refined @ pos.mean(axis=0) > text @ pos.mean(axis=0)
    assert refined @ neg.mean(axis=0) < text @ neg.mean(axis=0)


def test_nothing_to_look_for_is_refused() -> None:
    rng = np.random.default_rng(4)
    neg = unit(rng, 3)
    with pytest.raises(InvalidInput, match="something to look for"):
        rocchio(None, none(), neg)  # negatives alone say only what is not wanted
    with pytest.raises(InvalidInput, match="something to look for"):
        rocchio(unit(rng, 1)[0], none(), neg, a=0.0)
    with pytest.raises(InvalidInput, match="something to look for"):
        check_direction(False, 3, 1.0, 0.0)
    check_direction(True, 0, 1.0, 0.0)
    check_direction(False, 1, 0.0, 0.75)
    v = unit(rng, 1)
    with pytest.raises(InvalidInput, match="cancel out"):
        rocchio(None, v, v, b=1.0, c=1.0)

"""Assertions shared by tests that compare logits or greedy generations."""
from __future__ import annotations

import numpy as np


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to the largest magnitude of `expected`, so that
    one tolerance serves logits of any scale."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray, rel_tol: float,
                        label: str) -> None:
    """The runtime's logits are within `rel_tol` of the reference's (relative to the
    largest logit) and pick the same token at every position; prints the error, the
    measured number that each tolerance cites."""
    error = max_relative_error(ours, theirs)
    print(f"{label}: max |logit diff| / max |logit| = {error:.2e}")
    assert error < rel_tol
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


def assert_context_dependent(tokens: list[int]) -> None:
    """A greedy comparison tests attention only when the tokens vary: a model whose greedy
    choice ignores the context repeats one token, and passes with attention broken."""
    assert len(set(tokens)) > 1, f"greedy output is one repeated token: {tokens}"

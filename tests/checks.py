"""Assertions shared by tests that compare greedy generations."""
from __future__ import annotations


def assert_context_dependent(tokens: list[int]) -> None:
    """A greedy comparison tests attention only when the tokens vary: a model whose greedy
    choice ignores the context repeats one token, and passes with attention broken."""
    assert len(set(tokens)) > 1, f"greedy output is one repeated token: {tokens}"

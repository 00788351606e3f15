"""Assertions shared by tests that compare logits or greedy generations, and the
random prompts those comparisons run on."""
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


def random_prompt(seed: int, vocab: int, length: int) -> list[int]:
    """`length` token ids drawn from 5 .. vocab - 1, above the special tokens of the tiny
    test vocabularies."""
    return np.random.default_rng(seed).integers(5, vocab, size=length).tolist()


def reference_logits(reference, ids: list[int]) -> np.ndarray:
    """awqcore.reference's logits [len(ids), vocab] of `ids` (without autograd)."""
    import torch

    with torch.no_grad():
        return reference.forward(ids).numpy()


def assert_greedy_matches(model, reference, ids: list[int], new_tokens: int,
                          label: object = "") -> list[int]:
    """The runtime's greedy continuation of `ids` equals the reference's, token by token;
    returns the reference's tokens."""
    import torch

    ours = model.generate(ids, max_new_tokens=new_tokens, stop=[])
    with torch.no_grad():
        theirs = reference.greedy_generate(ids, new_tokens)
    assert ours == theirs, label
    return theirs


def assert_reference_matches_transformers(reference, model, vocab: int, rel_tol: float,
                                          label: str) -> None:
    """awqcore.reference's logits of a random 72-token prompt (longer than the tiny
    models' sliding windows, 8, and their rope scalings' original context, 32) are within
    `rel_tol` of the transformers `model`'s (relative to the largest logit), with the
    same argmax at every position; prints the error."""
    import torch

    ids = np.random.default_rng(2).integers(0, vocab, size=72).tolist()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].float()
    ours = reference.forward(ids)
    error = float((ours - theirs).abs().max() / theirs.abs().max())
    print(f"{label}: max |reference - transformers| / max |logit| = {error:.1e}")
    assert error < rel_tol
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))

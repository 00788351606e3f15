"""Perplexity over non-overlapping windows, for the C++ runtime and the torch
reference alike.

Protocol (stated in every report): the documents are joined with blank lines
and tokenized once; the token stream is cut into consecutive, non-overlapping
windows of `seqlen` tokens; each window starts from an empty KV cache and
scores its tokens 2..seqlen (seqlen - 1 predictions); perplexity is
exp(mean negative log-likelihood) over all scored tokens of all windows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass
class PerplexityResult:
    perplexity: float
    windows: int
    seqlen: int
    scored_tokens: int

    def protocol(self) -> str:
        return (f"{self.windows} non-overlapping windows x {self.seqlen} tokens, "
                f"{self.scored_tokens} scored tokens, fresh cache per window")


def token_windows(ids: Sequence[int], seqlen: int, max_windows: int | None) -> list[list[int]]:
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2 (got {seqlen})")
    count = len(ids) // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    return [list(ids[i * seqlen:(i + 1) * seqlen]) for i in range(count)]


def window_nll(logits: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of window[1:] under logits[:-1] ([T, vocab] f32)."""
    logits = logits[:-1].astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
    targets = np.asarray(window[1:])
    return log_norm - logits[np.arange(len(targets)), targets]


def perplexity(forward: Callable[[list[int]], np.ndarray], windows: list[list[int]],
               progress: bool = True, desc: str = "perplexity") -> PerplexityResult:
    """forward(ids) -> logits [len(ids), vocab] for a fresh sequence."""
    iterator = windows
    if progress:
        from tqdm import tqdm
        iterator = tqdm(windows, desc=desc, unit="window")
    nll = np.concatenate([window_nll(np.asarray(forward(w)), w) for w in iterator])
    return PerplexityResult(float(np.exp(nll.mean())), len(windows), len(windows[0]), nll.size)

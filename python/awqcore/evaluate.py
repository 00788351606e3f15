"""Perplexity over non-overlapping windows, for the C++ runtime and the torch
reference alike.

Protocol (stated in every report): the documents are joined with blank lines
and tokenized once; the token stream is cut into consecutive, non-overlapping
windows of `seqlen` tokens; each window starts from an empty KV cache and
scores its tokens 2..seqlen (seqlen - 1 predictions); perplexity is
exp(mean negative log-likelihood) over all scored tokens of all windows.

`evaluate_runtime` runs that protocol on the C++ runtime, optionally next to a
torch reference model for the KL divergence and top-1 agreement of the
next-token distributions (what `awqcore ppl` prints).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is only needed with a reference model
    from . import Model
    from .reference import ReferenceModel


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


def documents_for_windows(docs: Iterable[str], seqlen: int, max_windows: Optional[int]
                          ) -> list[str]:
    """The leading documents that hold max_windows windows of seqlen tokens (all
    of them without a limit), so that only what is scored gets tokenized.
    English runs ~4 characters per token; 8 per token leaves a wide margin."""
    docs = list(docs)
    if max_windows is None:
        return docs
    budget, taken = 8 * seqlen * max_windows, []
    for doc in docs:
        taken.append(doc)
        budget -= len(doc)
        if budget <= 0:
            break
    return taken


def kl_top1(base: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position of logits [T, vocab]: KL(softmax(base) || softmax(other)) in nats
    (float64) and whether the two argmaxes agree."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(base), log_softmax(other)
    return (np.exp(lp) * (lp - lq)).sum(-1), base.argmax(-1) == other.argmax(-1)


def reference_model(name: str, vocab_size: int, option: str) -> "ReferenceModel":
    """The torch reference of an unquantized source model (built-in name, .gguf
    or HF folder), which must share the quantized model's vocabulary."""
    from .importers import load_source
    from .reference import ReferenceModel

    source = load_source(name)
    if source.config.vocab_size != vocab_size:
        raise ValueError(f"{option} {name} has vocabulary {source.config.vocab_size}, the "
                         f"quantized model {vocab_size}")
    return ReferenceModel(source.config, source.get)


def reference_perplexity(reference: "ReferenceModel", windows: list[list[int]],
                         progress: bool = True) -> PerplexityResult:
    """Perplexity of a torch reference model over `windows`."""
    import torch

    with torch.no_grad():
        return perplexity(lambda w: reference.forward(w).numpy(), windows, progress=progress,
                          desc="unquantized, torch")


@dataclass
class RuntimeEvaluation:
    result: PerplexityResult            # of the runtime
    base_perplexity: Optional[float]    # of the base model on the same windows
    mean_kl: Optional[float]            # KL(base || runtime) per scored position, nats
    top1_agreement: Optional[float]     # fraction of scored positions with equal argmax


def evaluate_runtime(model: "Model", windows: list[list[int]],
                     base: Optional["ReferenceModel"] = None, decode_path: bool = False,
                     progress: bool = True) -> RuntimeEvaluation:
    """Perplexity of the runtime over `windows`; with `base`, also the base
    model's perplexity and the KL / top-1 agreement against it, computed window
    by window (the runtime's logits are not kept: 40 windows x 512 x 49152 f32
    would be 4 GB).

    decode_path: feed each window in calls of awqcore.INT8_DECODE_MAX_TOKENS
    tokens, which compute every token exactly as a decode step does (int8
    activations, when the model was opened with activations="int8")."""
    from . import INT8_DECODE_MAX_TOKENS

    chunk = INT8_DECODE_MAX_TOKENS if decode_path else None
    kl, agree, base_nll = [], [], []

    def forward(window: list[int]) -> np.ndarray:
        logits = np.asarray(model.forward(window, chunk_tokens=chunk))
        if base is not None:
            import torch

            with torch.no_grad():
                base_logits = base.forward(window).numpy()
            base_nll.append(window_nll(base_logits, window))
            # The positions perplexity scores: each predicts the next token.
            k, a = kl_top1(base_logits[:-1], logits[:-1])
            kl.append(k)
            agree.append(a)
        return logits

    result = perplexity(forward, windows, progress=progress,
                        desc="int4, C++ runtime" + (" + base, torch" if base else ""))
    if base is None:
        return RuntimeEvaluation(result, None, None, None)
    return RuntimeEvaluation(result, float(np.exp(np.concatenate(base_nll).mean())),
                             float(np.concatenate(kl).mean()),
                             float(np.concatenate(agree).mean()))

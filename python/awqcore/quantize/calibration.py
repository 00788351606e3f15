"""Calibration text for AWQ: n blocks of seqlen tokens, offline and seeded.

By default the text is the calibration split of the Wikipedia summaries
(awqcore.data.wiki_texts("calibration")), disjoint by construction from the
split `awqcore ppl` evaluates on; `--calib-text FILE` takes plain text
(documents separated by blank lines) or JSONL with a "text" field instead.

Like AutoAWQ, documents are joined and cut into consecutive blocks, so a block
may span a document boundary. The documents are shuffled with the seed first,
so a seed picks a different sample of the text and the same seed always the
same blocks.
"""
from __future__ import annotations

import numpy as np

from ..data import read_text_file, wiki_texts

# English runs ~4 characters per token; reading 8 per token needed (a wide margin)
# avoids tokenizing all ~2 MB of summaries for a calibration of a few thousand tokens.
# Text with more characters per token (whitespace-heavy code or data) reads on, twice
# as much each time, until it has enough tokens or runs out.
CHARS_PER_TOKEN_BUDGET = 8


def calibration_blocks(tokenizer_json: str, n_samples: int, seqlen: int, seed: int = 0,
                       text_file: str | None = None) -> np.ndarray:
    """Token ids int64 [n_samples, seqlen] for calibration."""
    from tokenizers import Tokenizer

    if n_samples < 1 or seqlen < 2:
        raise ValueError(f"calibration needs at least 1 sample of 2 tokens "
                         f"(got {n_samples} x {seqlen})")
    docs = read_text_file(text_file) if text_file else wiki_texts("calibration")
    origin = text_file or "the Wikipedia summaries' calibration split"
    if not docs:
        raise ValueError(f"{origin}: no text to calibrate on")
    order = np.random.default_rng(seed).permutation(len(docs))
    needed = n_samples * seqlen
    tokenizer = Tokenizer.from_str(tokenizer_json)
    taken: list[str] = []
    budget_total = CHARS_PER_TOKEN_BUDGET * needed
    while True:
        budget = budget_total - sum(map(len, taken))
        for i in order[len(taken):]:
            taken.append(docs[i])
            budget -= len(docs[i])
            if budget <= 0:
                break
        ids = tokenizer.encode("\n\n".join(taken), add_special_tokens=False).ids
        if len(ids) >= needed or len(taken) == len(docs):
            break
        budget_total *= 2
    if len(ids) < needed:
        raise ValueError(f"{origin} has {len(ids)} tokens, fewer than the {n_samples} x {seqlen} "
                         f"= {needed} that calibration asks for; lower --calib-samples or "
                         f"--calib-seqlen")
    return np.asarray(ids[:needed], dtype=np.int64).reshape(n_samples, seqlen)

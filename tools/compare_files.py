#!/usr/bin/env python3
"""Quality cost of a storage choice: two .awqbin files of one model (e.g. f16
vs int8 tables, or an f16 vs int4 lm_head) run through the C++ runtime on the
same held-out windows; prints each file's perplexity and the mean next-token
KL(base || other) in nats with the top-1 agreement.

    python tools/compare_files.py base.awqbin other.awqbin --max-windows 8

Both runs are exact (f32 activations and KV cache, as `awqcore ppl`), so the
difference is the stored weights alone.
"""
import argparse
import sys

import numpy as np

import awqcore
from awqcore.data import wiki_texts
from awqcore.evaluate import documents_for_windows, kl_top1, token_windows, window_nll


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base")
    p.add_argument("other")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    models = [awqcore.Model(f, threads=args.threads, max_seq_len=args.seqlen, activations="f32")
              for f in (args.base, args.other)]
    if models[0].config["vocab_size"] != models[1].config["vocab_size"]:
        raise SystemExit("the two files have different vocabularies")
    docs = documents_for_windows(wiki_texts("evaluation"), args.seqlen, args.max_windows)
    ids = models[0].tokenizer.encode("\n\n".join(docs)).ids
    windows = token_windows(ids, args.seqlen, args.max_windows)
    nll = [[], []]
    kl, agree = [], []
    for i, window in enumerate(windows):
        logits = [np.asarray(m.forward(window)) for m in models]
        for side in (0, 1):
            nll[side].append(window_nll(logits[side], window))
        for row in range(0, len(window) - 1, 128):  # bounded f64 copies (262k vocabularies)
            end = min(row + 128, len(window) - 1)
            k, a = kl_top1(logits[0][row:end], logits[1][row:end])
            kl.append(k)
            agree.append(a)
        print(f"window {i + 1}/{len(windows)}", file=sys.stderr, flush=True)
    for path, values in zip((args.base, args.other), nll):
        print(f"perplexity {float(np.exp(np.concatenate(values).mean())):.4f}  {path}")
    print(f"mean KL(base || other) {float(np.concatenate(kl).mean()):.3e} nats, top-1 agreement "
          f"{100 * float(np.concatenate(agree).mean()):.2f}% over {sum(map(len, kl))} positions "
          f"({len(windows)} windows x {args.seqlen})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

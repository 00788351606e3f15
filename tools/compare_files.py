#!/usr/bin/env python3
"""Quality cost of a storage choice: .awqbin files of one model (e.g. f16 vs
int8 tables, or a table vs an int4 lm_head) run through the C++ runtime on the
same held-out windows; prints each file's perplexity and, for each file after
the first, the mean next-token KL(base || other) in nats with the top-1
agreement.

    python tools/compare_files.py base.awqbin other.awqbin [more.awqbin ...] --max-windows 8

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
    p.add_argument("others", nargs="+", metavar="other")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    paths = [args.base, *args.others]
    models = [awqcore.Model(f, threads=args.threads, max_seq_len=args.seqlen, activations="f32")
              for f in paths]
    if len({m.config["vocab_size"] for m in models}) != 1:
        raise SystemExit("the files have different vocabularies")
    docs = documents_for_windows(wiki_texts("evaluation"), args.seqlen, args.max_windows)
    ids = models[0].tokenizer.encode("\n\n".join(docs)).ids
    windows = token_windows(ids, args.seqlen, args.max_windows)
    nll = [[] for _ in models]
    kl = [[] for _ in models]  # [0] unused: the base against itself
    agree = [[] for _ in models]
    for i, window in enumerate(windows):
        base = np.asarray(models[0].forward(window))
        nll[0].append(window_nll(base, window))
        for j, model in enumerate(models[1:], 1):
            logits = np.asarray(model.forward(window))
            nll[j].append(window_nll(logits, window))
            for row in range(0, len(window) - 1, 128):  # bounded f64 copies (262k vocabularies)
                end = min(row + 128, len(window) - 1)
                k, a = kl_top1(base[row:end], logits[row:end])
                kl[j].append(k)
                agree[j].append(a)
        # Results so far after every window: a long run can be read (or cut) early.
        print(f"after window {i + 1}/{len(windows)}:", flush=True)
        for j, path in enumerate(paths):
            line = f"perplexity {float(np.exp(np.concatenate(nll[j]).mean())):.4f}  {path}"
            if j:
                line += (f"; mean KL(base || this) {float(np.concatenate(kl[j]).mean()):.3e} "
                         f"nats, top-1 agreement {100 * float(np.concatenate(agree[j]).mean()):.2f}%")
            print(line, flush=True)
    print(f"{sum(len(w) - 1 for w in windows)} scored positions ({len(windows)} windows x "
          f"{args.seqlen}); base {args.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

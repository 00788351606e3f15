"""Compare quantization variants of one model from ONE calibration pass, in and out of domain.

    python3 tools/quality_sweep.py smollm2-135m --calib-samples 32 --calib-seqlen 256 \
        --ood-text ood.txt [--ood-text more.txt ...] [--group-size 64] [--wiki-windows 40] \
        [--ood-windows 12]

AWQ's layer-by-layer calibration pass runs once (scale search included, no clip); every
variant is then derived per layer from the same activation statistics and scales:
  rtn           round to nearest, unscaled weights
  gptq          GPTQ on the unscaled weights
  awq-noclip    AWQ scales, then round to nearest
  awq-full      AWQ scales + the full clip search (AutoAWQ's grid)
  awq-heldout   AWQ scales + clip chosen on the even sequences, kept only where it also
                helps on the odd ones
  awq-mild      AWQ scales + the clip search over shrinks >= 0.85
  awq-gptq      AWQ scales, then GPTQ (no clip: the CLI's --clip off; the CLI's default
                is awq-gptq-full@attn)
  awq-gptq-full, awq-gptq-heldout, awq-gptq-mild  AWQ scales + that clip search's
                shrinks as GPTQ's grid range (fractions of each group's max |w|), then
                GPTQ (which compensates the clipping too)
A GPTQ variant may name its damping after a colon (e.g. awq-gptq:0.1; default
gptq.DAMP, a fraction of the Hessian's mean diagonal). A clipping variant may limit the
clip search to some linears after an @: attn, mlp, gate-up, down or no-down (all but
down_proj; e.g. awq-full@mlp), to find where clipping helps or hurts, and add other
linears' modes after a + (e.g. awq-gptq-full@attn+mild@mlp: the full search for the
attention, the mild one for the MLP; the first scope that holds a linear decides).
Each variant is written as a .awqbin and evaluated through the C++ runtime (exact f32
mode) on the same windows; FP through the torch reference. Prints perplexities and each
variant's share of RTN's increase: (ppl - FP) / (RTN - FP), one table per text (the wiki
evaluation split, then each --ood-text).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch


CLIP_ONLY = {"": ("",), "attn": ("self_attn.",), "mlp": ("mlp.",),  # the @ suffix: the
             "gate-up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",),  # names
             "no-down": ("self_attn.", "mlp.gate_proj", "mlp.up_proj")}
VARIANTS = ("rtn", "gptq", "awq-noclip", "awq-full", "awq-heldout", "awq-mild", "awq-gptq",
            "awq-gptq-heldout")
SEARCHES = ("full", "heldout", "mild")  # the clip searches a variant may name
BASES = ("rtn", "gptq", "awq-noclip", "awq", "awq-gptq")  # awq needs a search


def parse_variant(variant: str) -> tuple[str, float | None, list[tuple[str, str]]]:
    """"awq-gptq-full:0.1@attn+mild@mlp" -> ("awq-gptq", 0.1, [("full", "attn"), ("mild",
    "mlp")]): the base method, GPTQ's damping (None: gptq.DAMP) and the clip rules
    (search, scope) in order, the first whose scope holds a linear deciding. Raises
    ValueError naming what is wrong."""
    first, *more = variant.split("+")
    spec, at, scope = first.partition("@")
    method, colon, damp = spec.partition(":")
    search = next((m for m in SEARCHES if method.startswith("awq") and method.endswith("-" + m)),
                  None)
    base = method[:-len(search) - 1] if search else method
    if base not in BASES or (base == "awq" and not search):
        raise ValueError(f"{variant}: unknown method {method!r} (choose from "
                         f"{', '.join(VARIANTS)}, awq-gptq-full, awq-gptq-mild)")
    if colon and "gptq" not in base:
        raise ValueError(f"{variant}: a damping (':') needs a GPTQ method")
    rules = [(search, scope)] if search else []
    if at and (not search or scope not in CLIP_ONLY or not scope):
        raise ValueError(f"{variant}: '@{scope}' needs a clip search and a scope of "
                         f"{', '.join(s for s in CLIP_ONLY if s)}")
    for part in more:
        search, at, scope = part.partition("@")
        if not rules or not rules[0][1]:
            raise ValueError(f"{variant}: '+' needs a first clip search with an @ scope "
                             "(without one it holds every linear)")
        if search not in SEARCHES or scope not in CLIP_ONLY or not scope:
            raise ValueError(f"{variant}: {part!r} is not SEARCH@SCOPE (searches "
                             f"{', '.join(SEARCHES)}; scopes "
                             f"{', '.join(s for s in CLIP_ONLY if s)})")
        rules.append((search, scope))
    return base, float(damp) if damp else None, rules


def main(argv: list[str] | None = None) -> int:
    import awqcore
    from awqcore.data import read_text_file, wiki_texts
    from awqcore.evaluate import (documents_for_windows, evaluate_runtime, reference_model,
                                  reference_perplexity, token_windows)
    from awqcore.importers import load_source
    from awqcore.quantize import pipeline
    from awqcore.quantize.awq import CLIP_EXCLUDED, INPUT_OF, AwqQuantizer, fake_quantize
    from awqcore.quantize.clip import clamp_to_shrinks, clip_shrinks
    from awqcore.quantize.gptq import DAMP, gptq_int4
    from awqcore.quantize.pipeline import layer_float_names
    from awqcore.quantize.rtn import quantize_int4
    from awqcore.source import LINEAR_NAMES, layer_prefix

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--calib-text", help="calibration text file (default: the Wikipedia "
                   "summaries' calibration split), as awqcore quantize --calib-text")
    p.add_argument("--loss-tokens", type=int, default=1024)
    p.add_argument("--ood-text", required=True, action="append",
                   help="out-of-domain text file (repeatable: each is evaluated apart)")
    p.add_argument("--wiki-windows", type=int, default=40)
    p.add_argument("--ood-windows", type=int, default=12)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-fp", action="store_true",
                   help="skip the full-precision reference (slow on large models): "
                   "report each variant against RTN only")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch and runtime threads (1 on a machine shared with other jobs: "
                   "oversubscribed threads wait on each other)")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    try:
        parsed = {v: parse_variant(v) for v in variants}
    except ValueError as e:
        p.error(str(e))
    if "wiki" in args.ood_text or len(set(args.ood_text)) < len(args.ood_text):
        p.error("each --ood-text once, and none named 'wiki' (the in-domain table's name)")
    g = args.group_size
    torch.set_num_threads(args.threads)

    source = load_source(args.model)
    if source.config.num_experts:
        p.error(f"{args.model} has experts; the sweep covers dense models only")
    start = time.perf_counter()
    quantizer = AwqQuantizer(source, g, progress=False, calib_samples=args.calib_samples,
                             calib_seqlen=args.calib_seqlen, calib_text=args.calib_text,
                             loss_tokens=args.loss_tokens,
                             clip="off", gptq=True)
    results = {v: {} for v in variants}  # variant -> layer -> (norms, {prefix: int4})
    for layer in range(source.config.num_layers):
        names = layer_float_names(source, layer)
        original = {n: np.asarray(source.get(n), dtype=np.float32) for n in names}
        weights = dict(original)
        scaled = quantizer.fold_layer(layer, weights)
        stats, scales = quantizer.layer_stats, quantizer.input_scale
        pre = layer_prefix(layer)
        for v in variants:
            method, damp, rules = parsed[v]
            awq, gptq = method.startswith("awq"), "gptq" in method
            norms = {n: (weights if awq else original)[n] for n in names
                     if not (n.endswith(".weight") and n[len(pre):-7] in INPUT_OF)}
            out = {}
            for key in LINEAR_NAMES:
                w = scaled[key].clone() if awq else torch.from_numpy(original[pre + key + ".weight"]).clone()
                s = scales[key] if awq else torch.ones(w.shape[1])
                search = next((m for m, scope in rules if key.startswith(CLIP_ONLY[scope])),
                              None)
                shrink = None  # [out, G, 1]: GPTQ's grid range (gptq.py)
                if search and key not in CLIP_EXCLUDED:
                    shrink = clip_shrinks(w, stats[INPUT_OF[key]], s, search, fake_quantize)
                    if not gptq:
                        clamp_to_shrinks(w, shrink, g)
                if gptq:
                    out[pre + key] = gptq_int4(w, stats[INPUT_OF[key]].hessian(s), g,
                                               damp=DAMP if damp is None else damp,
                                               shrink=shrink)
                else:
                    out[pre + key] = quantize_int4(w.numpy(), g)
            results[v][layer] = (norms, out)
        print(f"layer {layer} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print(f"calibration pass + variants: {time.perf_counter() - start:.0f} s; stages "
          f"{ {k: round(t) for k, t in quantizer.times.items()} }", file=sys.stderr)

    class Replay:
        def __init__(self, variant):
            self.variant = variant

        def quantize_layer(self, layer, weights, linears):
            norms, out = results[self.variant][layer]
            weights.update(norms)
            return out

    tmp = tempfile.mkdtemp(prefix="quality_sweep_")
    texts = {"wiki": wiki_texts("evaluation"),
             **{path: read_text_file(path) for path in args.ood_text}}
    n_windows = {k: args.wiki_windows if k == "wiki" else args.ood_windows for k in texts}
    windows = {}
    ppl = {k: {} for k in texts}
    for v in variants:
        path = os.path.join(tmp, v + ".awqbin")
        pipeline.QUANTIZERS["awq"] = lambda source, group_size, progress=True, v=v: Replay(v)
        pipeline.quantize_model(source, path, method="awq", group_size=g, progress=False)
        model = awqcore.Model(path, threads=args.threads, max_seq_len=512,
                              activations="f32")
        for k, docs in texts.items():
            if k not in windows:
                docs = documents_for_windows(docs, 512, n_windows[k])
                windows[k] = token_windows(model.tokenizer.encode("\n\n".join(docs)).ids, 512,
                                           n_windows[k])
            ppl[k][v] = evaluate_runtime(model, windows[k], progress=False).result.perplexity
        print(f"{v}: " + ", ".join(f"{k} {ppl[k][v]:.3f}" for k in texts), file=sys.stderr)
        os.remove(path)
    if args.no_fp:
        fp = {k: float("nan") for k in texts}
    else:
        reference = reference_model(args.model, source.config.vocab_size, "model")
        fp = {k: reference_perplexity(reference, windows[k], progress=False).perplexity
              for k in texts}
    print(f"{args.model} g{g}, calibration {args.calib_samples} x {args.calib_seqlen}")
    for k in texts:
        print(f"\n{k}: {len(windows[k])} windows x 512")
        print(f"{'variant':30s} {'ppl':>9s} {'share':>6s} {'vs rtn':>7s}")
        print(f"{'FP':30s} {fp[k]:9.3f} {0:6.3f}")
        rtn = ppl[k].get("rtn", float("nan"))
        for v in variants:  # share: nan when RTN is no worse than FP (nothing to share)
            share = (ppl[k][v] - fp[k]) / (rtn - fp[k]) if rtn > fp[k] else float("nan")
            print(f"{v:30s} {ppl[k][v]:9.3f} {share:6.3f} {ppl[k][v] / rtn - 1:+7.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

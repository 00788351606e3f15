"""Per-layer diagnosis: do the calibration-time choices of AWQ, its clip search and GPTQ
hold on text the calibration never saw?

    python3 tools/quality_diagnose.py smollm2-135m --ood-text ood.txt \
        [--calib-samples 32 --calib-seqlen 256] [--probe-samples 16] [--layers 0-5] \
        [--no-scales] [--json out.json] [--threads 1] [--quiet]

One calibration pass (AwqQuantizer, clip off) runs layer by layer; beside it, "probes"
carry their own token blocks through the same full-precision layers:
  calib-all  the calibration blocks again, with the scale-search loss on every token
             (the calibration pass itself computes it on a sample, --loss-tokens);
             left out with --no-scales, which skips the scale part (the slow one)
  wiki       the held-out Wikipedia split (the one `awqcore ppl` evaluates)
  ood        --ood-text, a text unlike Wikipedia
Per layer it measures, on the calibration tokens and on every probe:
  scales  each scale group's module-output loss for the ratio the calibration search
          chose, for the unscaled weights (RTN), and for the probe's own best ratio;
  linears each linear's output error mean_t |x_t (W' - W)^T|^2 / out, exactly over all
          of a set's tokens from its Gram matrix, for: RTN; AWQ's scales; AWQ + the full
          clip search (bounds from the calibration tokens); AWQ + the clip bounds the
          probe's own tokens would pick (what that text prefers); GPTQ (Hessian from
          the calibration tokens, gptq.DAMP); AWQ + GPTQ;
          AWQ + GPTQ on the full clip search's grid (--clip full; the default method
          takes it for v and o only).
The summary gives geometric means over layers of each error as a multiple of RTN's on
the same tokens (1 = RTN; lower is better), so a choice that fits the calibration text
shows as < 1 on "calib" and >= 1 on "wiki"/"ood". --json keeps every layer's numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """"0-5,9" -> [0, 1, 2, 3, 4, 5, 9]; None -> every layer. Raises ValueError naming
    what is wrong: not numbers, an empty range ("5-2") or layers out of range."""
    if not spec:
        return list(range(n_layers))
    layers: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = (s.strip() for s in part.partition("-"))
        hi = hi if dash else lo
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ValueError(f"--layers: {part!r} is not a layer or a range lo-hi with lo <= hi")
        layers.update(range(int(lo), int(hi) + 1))
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"--layers: {bad} outside the model's layers 0..{n_layers - 1}")
    return sorted(layers)


def output_error(wq: torch.Tensor, w: torch.Tensor, gram: torch.Tensor) -> float:
    """mean_t |x_t (wq - w)^T|^2 / out for inputs with Gram matrix gram = X^T X / n [in, in]."""
    d = wq - w  # [out, in]
    return float(((d @ gram) * d).sum()) / w.shape[0]


def geomean(values: list[float]) -> float:
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, finite)) / len(finite)) if finite else float("nan")


def linear_errors(w_fp: torch.Tensor, w_scaled: torch.Tensor, s: torch.Tensor,
                  rows: torch.Tensor, g: int, calib_stats, grams: dict[str, tuple],
                  clipped: bool) -> dict[str, dict]:
    """variant -> set -> output error, for one linear. grams: set -> (InputStats, Gram of x
    [in, in], Gram of x / s [in, in]); calib_stats: the calibration set's InputStats;
    rows [out]: what AWQ divided the scaled weights' output rows by (the next group's
    scales, for v and up; ones otherwise), multiplied back so every variant's error is
    in the FP output's units."""
    from awqcore.quantize.awq import fake_quantize
    from awqcore.quantize.clip import clamp_to_shrinks, clip_shrinks, search_clip
    from awqcore.quantize.gptq import gptq_quantize

    def clamp(w: torch.Tensor, shrink: torch.Tensor) -> torch.Tensor:
        w = w.clone()
        clamp_to_shrinks(w, shrink, g)
        return w

    def dequantized(codes, scales, zeros) -> torch.Tensor:
        groups = codes.float().reshape(codes.shape[0], -1, g)
        return ((groups - zeros.float()[..., None]) * scales.float()[..., None]).reshape(
            codes.shape)

    # Weights in the unscaled space (compared with H of x) or the scaled one (H of x / s).
    unscaled = {"rtn": fake_quantize(w_fp, g),
                "gptq": dequantized(*gptq_quantize(w_fp, calib_stats.hessian(
                    torch.ones_like(s)), g))}
    scaled = {"awq": fake_quantize(w_scaled, g)}
    hessian = calib_stats.hessian(s)
    scaled["awq-gptq"] = dequantized(*gptq_quantize(w_scaled, hessian, g))
    if clipped:
        shrink = clip_shrinks(w_scaled, calib_stats, s, "full", fake_quantize)
        scaled["awq+clip"] = fake_quantize(clamp(w_scaled, shrink), g)
        scaled["awq-gptq+clip"] = dequantized(*gptq_quantize(w_scaled, hessian, g,
                                                             shrink=shrink))
    back = rows[:, None]  # [out, 1]
    result: dict[str, dict] = {}
    for name, (stats, gram, gram_s) in grams.items():
        row = {v: output_error(q, w_fp, gram) for v, q in unscaled.items()}
        row.update({v: output_error(q * back, w_scaled * back, gram_s)
                    for v, q in scaled.items()})
        if clipped:  # the shrinks this set's own tokens would choose
            own = search_clip(w_scaled, stats.scaled_gram(s), g, fake_quantize)
            row["awq+own clip"] = output_error(fake_quantize(clamp(w_scaled, own), g) * back,
                                               w_scaled * back, gram_s)
        for variant, value in row.items():
            result.setdefault(variant, {})[name] = value
    return result


def scale_losses(quantizer, probe, layer: int, group, w: dict, samples: dict,
                 x_mean: torch.Tensor) -> dict:
    """The probe's module loss over the calibration search's candidates (same x_mean, so
    the same scales): {"losses": [20], "unscaled": RTN's loss}."""
    from awqcore.quantize.awq import search_scales

    r = search_scales(x_mean, [w[n] for n in group.linears],
                      probe.module_loss(layer, group, w, samples), quantizer.group_size)
    return {"losses": r.losses, "unscaled": r.unscaled_loss}


def main(argv: list[str] | None = None) -> int:
    from awqcore.data import wiki_texts
    from awqcore.importers import load_source
    from awqcore.quantize.awq import CLIP_EXCLUDED, INPUT_OF, N_GRID, AwqQuantizer
    from awqcore.quantize.pipeline import layer_float_names
    from awqcore.source import layer_prefix

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--ood-text", required=True, help="out-of-domain text file")
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--loss-tokens", type=int, default=1024)
    p.add_argument("--probe-samples", type=int, default=16,
                   help="blocks of --calib-seqlen tokens per held-out probe")
    p.add_argument("--layers", help="e.g. 0-5,9 (default: all; later layers still need "
                   "every earlier one's forward pass)")
    p.add_argument("--no-scales", action="store_true",
                   help="skip the scale-search part (the linears' errors only)")
    p.add_argument("--json", help="write every layer's numbers here")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = args.group_size

    source = load_source(args.model)
    if source.config.num_experts:
        p.error(f"{args.model} has experts; the diagnosis covers dense models only")
    try:
        layers = parse_layers(args.layers, source.config.num_layers)
    except ValueError as e:
        p.error(str(e))
    common = dict(progress=False, calib_seqlen=args.calib_seqlen, clip="off", gptq=True,
                  device="cpu")
    calib = AwqQuantizer(source, g, calib_samples=args.calib_samples,
                         loss_tokens=args.loss_tokens, **common)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n\n".join(wiki_texts("evaluation")))
        wiki_file = f.name
    try:
        probes = {} if args.no_scales else {
            "calib-all": AwqQuantizer(source, g, calib_samples=args.calib_samples,
                                      loss_tokens=0, **common)}
        probes |= {
            "wiki": AwqQuantizer(source, g, calib_samples=args.probe_samples, loss_tokens=0,
                                 calib_text=wiki_file, **common),
            "ood": AwqQuantizer(source, g, calib_samples=args.probe_samples, loss_tokens=0,
                                calib_text=args.ood_text, **common),
        }
    finally:
        os.remove(wiki_file)

    report: dict = {"layers": {}}
    start = time.perf_counter()
    for layer in range(max(layers) + 1):
        pre = layer_prefix(layer)
        original = {n: np.asarray(source.get(n), dtype=np.float32)
                    for n in layer_float_names(source, layer)}
        w = {n[len(pre):].removesuffix(".weight"): torch.tensor(v) for n, v in original.items()}
        if layer not in layers:  # only carry every set's activations on
            for q in (calib, *probes.values()):
                q.observe(layer, w)
            continue
        scaled = calib.fold_layer(layer, dict(original))
        stats, scales = calib.layer_stats, calib.input_scale
        seen = {name: q.observe(layer, w) for name, q in probes.items()}
        entry: dict = {"scales": {}, "linears": {}}
        for group in [] if args.no_scales else calib.scale_groups():
            chosen = calib.searches[group.name]
            x_mean = stats[group.source].x_mean()
            row = {"ratio": chosen.ratio, "calib": {"losses": chosen.losses,
                                                    "unscaled": chosen.unscaled_loss}}
            for name, (_, samples) in seen.items():
                row[name] = scale_losses(calib, probes[name], layer, group, w, samples, x_mean)
            entry["scales"][group.name] = row
        for key, source_key in INPUT_OF.items():
            s = scales[key]
            grams = {"calib": (stats[source_key], stats[source_key].hessian(torch.ones_like(s)),
                               stats[source_key].hessian(s))}
            for name in ("wiki", "ood"):
                st = seen[name][0][source_key]
                grams[name] = (st, st.hessian(torch.ones_like(s)), st.hessian(s))
            rows = next((scales[gr.linears[0]] for gr in calib.scale_groups()
                         if gr.prev == key), torch.ones(w[key].shape[0]))
            entry["linears"][key] = linear_errors(w[key], scaled[key], s, rows, g,
                                                  stats[source_key], grams,
                                                  key not in CLIP_EXCLUDED)
        report["layers"][layer] = entry
        if not args.quiet:
            print(f"layer {layer} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    summary = summarize(report, N_GRID)
    report["summary"] = summary
    print(format_summary(summary, args))
    if args.json:
        from awqcore.atomic_write import write_atomic
        write_atomic(args.json, json.dumps(report, indent=1))
    return 0


def summarize(report: dict, n_grid: int) -> dict:
    """Geometric means over the diagnosed layers, each value relative to RTN on the same
    tokens. scales: group -> set -> {chosen, best} (the loss of the calibration's choice
    and of the set's own best candidate) and "agree" (how often the set's best ratio is
    the chosen one); linears: linear -> variant -> set -> error."""
    scales: dict = {}
    linears: dict = {}
    for entry in report["layers"].values():
        for group, row in entry["scales"].items():
            chosen = None if row["ratio"] is None else round(row["ratio"] * n_grid)
            for name in ("calib", "calib-all", "wiki", "ood"):
                losses, rtn = row[name]["losses"], row[name]["unscaled"]
                values = [*losses, rtn]
                at_choice = rtn if chosen is None else losses[chosen]
                best = int(np.nanargmin(values))
                acc = scales.setdefault(group, {}).setdefault(
                    name, {"chosen": [], "best": [], "agree": []})
                acc["chosen"].append(at_choice / rtn)
                acc["best"].append(values[best] / rtn)
                acc["agree"].append(best == (n_grid if chosen is None else chosen))
        for key, variants in entry["linears"].items():
            for variant, per_set in variants.items():
                for name, value in per_set.items():
                    linears.setdefault(key, {}).setdefault(variant, {}).setdefault(
                        name, []).append(value / variants["rtn"][name])
    return {
        "scales": {gr: {n: {"chosen": geomean(a["chosen"]), "best": geomean(a["best"]),
                            "agree": sum(a["agree"]) / len(a["agree"])}
                        for n, a in sets.items()} for gr, sets in scales.items()},
        "linears": {k: {v: {n: geomean(x) for n, x in sets.items()}
                        for v, sets in variants.items()} for k, variants in linears.items()},
    }


def format_summary(summary: dict, args) -> str:
    sets = ("calib", "wiki", "ood")
    lines = [f"{args.model} g{args.group_size}, calibration {args.calib_samples} x "
             f"{args.calib_seqlen} (scale loss on {args.loss_tokens or 'all'} tokens), "
             f"probes {args.probe_samples} x {args.calib_seqlen}; geometric means over "
             "layers, relative to RTN on the same tokens"]
    if summary["scales"]:
        lines += ["", "scale search: module loss of the calibration's choice / the set's own "
                  "best choice (agree: share of layers where they are the same ratio)",
                  f"{'group':6s}" + "".join(f" {n:>22s}" for n in ("calib", "calib-all",
                                                                   *sets[1:]))]
    for group, per_set in summary["scales"].items():
        cells = [f"{r['chosen']:.3f}/{r['best']:.3f} {r['agree']:4.0%}" for r in
                 (per_set[n] for n in ("calib", "calib-all", "wiki", "ood"))]
        lines.append(f"{group:6s}" + "".join(f" {c:>22s}" for c in cells))
    lines += ["", "linear output error (calib / wiki / ood)"]
    variants = list(dict.fromkeys(v for per in summary["linears"].values() for v in per))
    lines.append(f"{'linear':17s}" + "".join(f" {v:>20s}" for v in variants if v != "rtn"))
    for key, per_variant in summary["linears"].items():
        cells = []
        for v in variants:
            if v == "rtn":
                continue
            r = per_variant.get(v)
            cells.append("/".join(f"{r[n]:.2f}" for n in sets) if r else "-")
        lines.append(f"{key:17s}" + "".join(f" {c:>20s}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

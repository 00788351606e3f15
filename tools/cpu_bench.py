#!/usr/bin/env python3
"""The README's CPU tables in one run: per model, awqcore against llama.cpp
(on the model's own GGUF, same threads, same run) for decode at prompt 32 and
512, prefill of 512 tokens, batch 8 summed decode against batch 1, GB/s and %
of the roofline (read bandwidth / bytes per decode step, counted by `awqcore
bench`); SmolLM2 also at context 4096; a Llama-2-7B-shaped random model
(decode only, against its roofline). Markdown on stdout (or --out), with the
machine named: CPU model, ISA flags, measured read bandwidth.

    python tools/cpu_bench.py --out cpu_tables.md            # ~15-20 min on 2 cores
    python tools/cpu_bench.py --quick                        # plumbing check, tiny sizes

Models (built from the built-in sources into --workdir, removed afterwards
unless --keep): SmolLM2-135M RTN g64 and Gemma 3 270M RTN g128 with the
default file (int8 tables); Qwen2.5-Coder-1.5B RTN g128 with the default file
and the smallest one (int8 embedding + int4 lm_head); synthetic:llama2-7b.
A model whose source is missing is skipped with a note. Run it on an idle
machine: every number is one run's median of --reps repetitions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8")

# label, source, group size, quantize options, bench plan
MODELS = [
    ("SmolLM2-135M, RTN g64, default file", "smollm2-135m", 64, {}, "full+long"),
    ("Gemma 3 270M, RTN g128, default file", "gemma3-270m", 128, {}, "full"),
    ("Qwen2.5-Coder-1.5B, RTN g128, default file", "qwen2.5-coder-1.5b", 128, {}, "full"),
    ("Qwen2.5-Coder-1.5B, RTN g128, smallest file (int4 lm_head)", "qwen2.5-coder-1.5b", 128,
     {"lm_head": "int4"}, "ours"),
    ("Llama-2-7B shapes, random int4 g128 (synthetic:llama2-7b)", "synthetic:llama2-7b", 128, {},
     "decode"),
]


def machine() -> dict:
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("?", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count()}


def cached_gguf(name: str):
    """The built-in model's GGUF already assembled in the cache (its packages
    may be installed in another environment), else None."""
    from awqcore.importers import registry

    files = {"gemma3-270m": registry.GEMMA3_FILE, "qwen2.5-coder-1.5b": registry.QWEN_CODER_FILE}
    path = registry.cache_dir() / files[name] if name in files else None
    return str(path) if path is not None and path.is_file() else None


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def bench(args: argparse.Namespace, model: str, out: str, options: list[str]) -> dict:
    from awqcore.benchmark import main as bench_main

    argv = [model, "--threads", str(args.threads), "--json", out, "--quiet", *options]
    if os.path.isdir(args.llama_cpp_path):
        argv += ["--llama-cpp-path", args.llama_cpp_path]
    say(f"  awqcore bench {' '.join(argv)}")
    with contextlib.redirect_stdout(sys.stderr):
        bench_main(argv)
    with open(out) as f:
        return json.load(f)


def rows_of(report: dict) -> dict:
    return {(r["engine"], r["batch"], r["prefill_len"]): r for r in report["rows"] if "error" not in r}


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def model_table(label: str, reports: list[dict], peer_rows: dict) -> list[str]:
    rows: dict = dict(peer_rows)
    for report in reports:
        rows.update(rows_of(report))
    errors = [f"{r['engine']}: {r['error']}" for rep in reports for r in rep["rows"] if "error" in r]
    first = reports[0]
    lines = [f"### {label}", "",
             f"decode reads {first['decode_weight_bytes'] / 1e6:.1f} MB of weights per step + "
             f"{first['kv_bytes_per_cached_token'] / 1e3:.1f} KB of KV cache per cached token; "
             f"measured read bandwidth {first['read_bandwidth_GB_s']:.1f} GB/s", "",
             "| what | awqcore tok/s | llama.cpp tok/s | ratio | awqcore GB/s | % of roofline "
             "(awqcore / llama.cpp) |", "|---|---|---|---|---|---|"]

    def line(what: str, ours, theirs, key: str) -> None:
        if ours is None:
            return
        mine = ours[key]["median"]
        peer = theirs[key]["median"] if theirs else None
        ratio = f"{mine / peer:.2f}x" if peer else "-"
        gbs = fmt(ours.get("decode_GB_s"), ".2f") if key == "decode_tok_s" else "-"
        pct = "-"
        if key == "decode_tok_s":
            pct = f"{fmt(ours.get('decode_bw_pct'), '.0f')}%"
            if theirs and theirs.get("decode_bw_pct") is not None:
                pct += f" / {theirs['decode_bw_pct']:.0f}%"
        lines.append(f"| {what} | {mine:.1f} | {fmt(peer)} | {ratio} | {gbs} | {pct} |")

    prompts = sorted({p for (_, b, p) in rows if b == 1})
    for p in prompts:
        line(f"decode, prompt {p}", rows.get(("awqcore", 1, p)), rows.get(("llama.cpp", 1, p)),
             "decode_tok_s")
    for p in prompts:
        if p >= 128:
            line(f"prefill pp{p}", rows.get(("awqcore", 1, p)), rows.get(("llama.cpp", 1, p)),
                 "prefill_tok_s")
    for (engine, b, p), r in sorted(rows.items()):
        base = rows.get(("awqcore", 1, p))
        if engine == "awqcore" and b > 1 and base:
            lines.append(f"| batch {b} summed decode, prompt {p} | {r['decode_tok_s']['median']:.1f} "
                         f"| - | {r['decode_tok_s']['median'] / base['decode_tok_s']['median']:.2f}x "
                         f"of batch 1 | {fmt(r.get('decode_GB_s'), '.2f')} | "
                         f"{fmt(r.get('decode_bw_pct'), '.0f')}% | ")
    for r in (r for rep in reports for r in rep["rows"] if "profile" in r):
        top = sorted(r["profile"], key=lambda op: -op["pct"])[:6]
        lines += ["", f"decode step profile (prompt {r['prefill_len']}): " + ", ".join(
            f"{op['op']} {op['pct']:.0f}%" for op in top)]
    lines += [f"- {e}" for e in errors] + [""]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", help="write the markdown here too")
    p.add_argument("--workdir", help="where the model files go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the model files")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (prompt 8/16, 4 decode tokens, 1 rep, a small synthetic model): "
                        "checks the plumbing, numbers meaningless")
    p.add_argument("--models", help="comma-separated indexes into the model list (default: all)")
    p.add_argument("--llama-cpp-path", default=os.environ.get("AWQCORE_LLAMA_CPP_PATH", ""),
                   help="a site-packages folder holding llama_cpp, when it is not importable here "
                        "(default: $AWQCORE_LLAMA_CPP_PATH)")
    args = p.parse_args()

    from awqcore.importers import load_source
    from awqcore.quantize import quantize_model

    start = time.time()
    info = machine()
    workdir = args.workdir or tempfile.mkdtemp(prefix="awqcore-cpu-bench-")
    os.makedirs(workdir, exist_ok=True)
    if args.quick:
        short, long_, decode, reps = 8, 16, 4, 1
    else:
        short, long_, decode, reps = 32, 512, 64, 3
    chosen = [MODELS[int(i)] for i in args.models.split(",")] if args.models else MODELS
    md = []
    peers_by_source: dict[str, dict] = {}
    try:
        for index, (label, source_name, group, options, plan) in enumerate(chosen):
            say(f"[{time.time() - start:5.0f} s] {label}")
            base = os.path.join(workdir, f"m{index}")
            if source_name.startswith("synthetic:"):
                model = "synthetic:layers=2,hidden=256,ffn=512,heads=4,vocab=1024" \
                    if args.quick else source_name
            else:
                model = base + ".awqbin"
                if not os.path.exists(model):
                    try:
                        source = load_source(cached_gguf(source_name) or source_name)
                    except Exception as e:  # a missing package: skip the model
                        md += [f"### {label}", "", f"skipped: {e}", ""]
                        continue
                    quantize_model(source, model, method="rtn", group_size=group, progress=False,
                                   embeddings="int8", **options)
            reports = []
            common = ["--decode", str(decode), "--reps", str(reps)]
            if plan == "decode":
                reports.append(bench(args, model, base + "-decode.json",
                                     ["--prefill", str(short), "--no-peers", *common]))
            else:
                reports.append(bench(args, model, base + "-b1.json",
                                     ["--prefill", f"{short},{long_}", "--profile", *common]
                                     + (["--no-peers"] if plan == "ours" else [])))
                if plan != "ours":
                    reports.append(bench(args, model, base + "-b8.json",
                                         ["--prefill", str(short), "--batch", "8", "--no-peers",
                                          *common]))
                if plan == "full+long":
                    context = 64 if args.quick else 4096
                    reports.append(bench(args, model, base + "-long.json",
                                         ["--prefill", str(context), "--decode", str(decode),
                                          "--reps", "1"]))
            # The smallest file is compared with llama.cpp's rows of the default
            # file's run (same GGUF, same run of this script).
            peer_rows = peers_by_source.get(source_name, {}) if plan == "ours" else {}
            md += model_table(label, reports, peer_rows)
            peers_by_source[source_name] = {k: r for rep in reports for k, r in rows_of(rep).items()
                                            if k[0] == "llama.cpp"}
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    bandwidth = next((line for line in md if "measured read bandwidth" in line), "")
    head = [f"## CPU: {info['cpu']}, {args.threads} threads of {info['cores']} cores",
            "", f"ISA flags: {' '.join(info['isa']) or 'none of ' + ', '.join(ISA_FLAGS)}; "
            f"{bandwidth.rsplit('; ', 1)[-1] if bandwidth else ''}; "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}; one run, medians of {reps}; "
            f"llama.cpp through llama-cpp-python on each model's GGUF; took {time.time() - start:.0f} s", ""]
    text = "\n".join(head + md)
    print(text)
    if args.out:
        from awqcore.atomic_write import write_atomic
        write_atomic(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

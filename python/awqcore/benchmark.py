"""`awqcore bench`: prefill/decode speed of the C++ runtime against its peers.

    awqcore bench smollm2-g64.awqbin --threads 2 --prefill 32,512 --decode 128 --reps 5
    awqcore bench smollm2-g64.awqbin --batch 1,4,8 --prefill 32 --no-peers
    python tools/benchmark.py smollm2-g64.awqbin --json out.json

One row per (engine, batch, prefill length, decode length), AutoAWQ-style:
prefill and decode tokens/s (median of --reps repetitions, with min..max),
peak RSS of the engine's process, model bytes, and the decode bandwidth
achieved: bytes a decode step must read (every weight once, the tied or
separate lm_head included) x tokens/s, also as % of this machine's read
bandwidth, measured by the tool in the same run (threads summing a 1 GB
buffer with numpy, best of 3).

Batch B > 1 (awqcore only; the peers run batch 1): B different prompts of
the prefill length go through one `generate([...])` with max_batch B, so each
decode step appends one token to each of the B sequences in one pass over the
weights. The rates are aggregate (B x tokens per sequence / time); prefill
time is that of a call asking for 1 new token (B prefills + 1 sample each),
decode time the rest of a call asking for decode + 1. Decode GB/s counts the
weights once per step, i.e. tokens/s / B.

Peers, when installed (the `bench` extra): llama.cpp through llama-cpp-python
on the GGUF the model was quantized from (metadata general.source, or --gguf),
same threads; and the torch FP32 reference (awqcore.reference, eager; it has
no KV cache, so each decode step recomputes the sequence: its decode rate is
measured over --torch-decode steps).

awqcore runs with int8 decode activations (W4A8, the default) and, with
--activations int8,f32, also with exact f32 ones (row "awqcore-f32").

Each engine runs in its own subprocess (clean peak RSS, no thread pools
competing). Kernel timings feed token ids straight in (no tokenizer) and time
the forward passes only; the "end-to-end" line adds tokenization, sampling and
detokenization of a text prompt through awqcore.Model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

import numpy as np

from .atomic_write import atomic_write, write_atomic


# ---------------------------------------------------------------- bandwidth

def measure_read_bandwidth(threads: int, gigabytes: float = 1.0, repeats: int = 3) -> float:
    """Bytes/s of `threads` threads reading disjoint slices of one buffer (numpy
    releases the GIL inside the reduction). The buffer is 1 GB, ~30x the L3, so
    the reads stream from DRAM; the best of `repeats` is the machine's capacity.

    The reduction is the max of uint8, which numpy runs in SIMD at far more
    than memory speed, so it measures memory and not arithmetic. A float32 sum
    does not: numpy's pairwise summation is compute-bound on this 2 GHz Xeon
    (2 threads: 9.9 GB/s against 16.6 GB/s for the uint8 max and 15.9 GB/s
    for a hand-written AVX2 load loop), so it made every "% of bandwidth"
    ~1.6x too high."""
    n = int(gigabytes * 1e9)
    buffer = np.ones(n, dtype=np.uint8)  # touching it commits the pages
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.max, args=(buffer[bounds[i]:bounds[i + 1]],))
                   for i in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, buffer.nbytes / (time.perf_counter() - start))
    return best


# ------------------------------------------------------------------ workers
# Each returns {"load_s", "runs": [{"prefill_s", "decode_s"}...], "peak_rss"}.

def _prompt(n: int, vocab: int) -> list[int]:
    # Fixed pseudo-random ids away from the special tokens at the bottom of the vocabulary.
    return [int(i) for i in (np.arange(n, dtype=np.int64) * 7919 % (vocab - 200) + 100)]


def _peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _worker_awqcore(spec: dict) -> dict:
    import awqcore

    batch = spec.get("batch", 1)
    start = time.perf_counter()
    model = awqcore.Model(spec["model"], threads=spec["threads"], verify=False,
                          max_seq_len=spec["prefill"] + spec["decode"] + 1, max_batch=batch,
                          activations=spec.get("activations", "int8"))
    load_s = time.perf_counter() - start
    ids = _prompt(spec["prefill"], model.config["vocab_size"])
    result = {"load_s": load_s, "runs": _timed_runs(model, spec, ids)}
    if spec.get("end_to_end"):  # batch 1 only
        tok = model.tokenizer
        text = "The history of the printing press " * max(1, spec["prefill"] // 6)
        start = time.perf_counter()
        prompt = tok.encode(text).ids[:spec["prefill"]]
        out = model.generate(prompt, max_new_tokens=spec["decode"], stop=[])
        tok.decode(out)
        result["end_to_end_s"] = time.perf_counter() - start
        result["end_to_end_tokens"] = len(out)
    result["peak_rss"] = _peak_rss()
    return result


def _timed_runs(model, spec: dict, ids: list[int]) -> list[dict]:
    """Prefill and decode seconds of the prompt (or of `batch` prompts generated
    together), as the runtime timed its forward passes (Model.last_timing):
    greedy, no stop ids, decode + 1 new tokens are `decode` steps after the
    prefill. (Timing a 1-token batch run and subtracting it from a longer one
    gave negative decode times for short decodes on tiny models.)"""
    batch = spec.get("batch", 1)
    vocab = model.config["vocab_size"]
    # Different prompts (the first id shifted), so no two sequences are alike.
    work = ids if batch == 1 else [[(ids[0] + 1 + b) % vocab] + ids[1:] for b in range(batch)]
    runs = []
    for _ in range(spec["reps"] + 1):  # the first run warms caches and page mappings
        model.generate(work, max_new_tokens=spec["decode"] + 1, stop=[])
        runs.append(model.last_timing())
    return runs[1:]


def _worker_llamacpp(spec: dict) -> dict:
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=spec["gguf"], n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_ctx=spec["prefill"] + spec["decode"] + 8, n_batch=max(32, spec["prefill"]),
                verbose=False)
    load_s = time.perf_counter() - start
    ids = _prompt(spec["prefill"], llm.n_vocab())
    runs = []
    for _ in range(spec["reps"] + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(spec["decode"]):
            llm.eval([ids[i % len(ids)]])
        runs.append({"prefill_s": prefill_s, "decode_s": time.perf_counter() - start})
    return {"load_s": load_s, "runs": runs[1:], "peak_rss": _peak_rss()}


def _worker_torch(spec: dict) -> dict:
    import torch

    from .importers import load_source
    from .reference import ReferenceModel

    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    source = load_source(spec["fp_reference"])
    model = ReferenceModel(source.config, source.get)
    load_s = time.perf_counter() - start
    ids = _prompt(spec["prefill"], source.config.vocab_size)
    runs = []
    with torch.inference_mode():
        for _ in range(spec["reps"] + 1):
            start = time.perf_counter()
            model.forward(ids)
            prefill_s = time.perf_counter() - start
            seq = list(ids)
            start = time.perf_counter()
            for _step in range(spec["decode"]):
                seq.append(int(model.forward(seq)[-1].argmax()))
            runs.append({"prefill_s": prefill_s, "decode_s": time.perf_counter() - start})
    return {"load_s": load_s, "runs": runs[1:], "peak_rss": _peak_rss()}


def _worker_bandwidth(spec: dict) -> dict:
    return {"bytes_per_s": measure_read_bandwidth(spec["threads"])}


WORKERS = {"bandwidth": _worker_bandwidth, "awqcore": _worker_awqcore, "llama.cpp": _worker_llamacpp, "torch-fp32": _worker_torch}


def _run_worker(engine: str, spec: dict) -> dict:
    """Runs one engine in a fresh interpreter; returns its result or {"error": ...}."""
    proc = subprocess.run([sys.executable, "-m", "awqcore.benchmark", "--worker", engine,
                           json.dumps(spec)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{engine} failed: {tail}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------- driver

def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def decode_bytes_per_token(path: str) -> tuple[int, int]:
    """(bytes one decode step reads, model tensor bytes): every tensor once,
    except that an untied embedding table is only gathered (one row)."""
    from .awqbin import read_awqbin

    f = read_awqbin(path)
    total = sum(e.nbytes for e in f.tensors.values())
    per_token = total
    # Either form of each table (docs/format.md): f16 .weight, or int8
    # .weight_q8 + .weight_q8_scales.
    table_forms = (".weight", ".weight_q8", ".weight_q8_scales")
    if any("lm_head" + s in f.tensors for s in table_forms):
        per_token -= sum(f.tensors[n].nbytes for n in
                         ("model.embed_tokens" + s for s in table_forms) if n in f.tensors)
    return per_token, total


def _gguf_for(path: str) -> Optional[str]:
    """The GGUF the .awqbin came from, when it is the built-in SmolLM2/Qwen file."""
    from .awqbin import read_awqbin
    from .importers import registry

    source = str(read_awqbin(path).metadata.get("general.source", ""))
    if registry.SMOLLM2_FILE in source:
        try:
            return str(registry.smollm2_gguf_path())
        except Exception:
            return None
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="FILE", help=".awqbin model file")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every engine (default: all cores)")
    p.add_argument("--prefill", default="32,512",
                   help="comma-separated prompt lengths (default 32,512; AutoAWQ sweeps 32..2048)")
    p.add_argument("--decode", default="128", help="comma-separated decode lengths (default 128)")
    p.add_argument("--activations", default="int8",
                   help="comma-separated decode activation modes for awqcore: int8 (default, "
                        "row 'awqcore') and/or f32 (row 'awqcore-f32')")
    p.add_argument("--batch", default="1",
                   help="comma-separated batch sizes for awqcore (default 1; peers run batch 1)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (default 3)")
    p.add_argument("--gguf", help="GGUF for the llama.cpp peer (default: the model's source GGUF)")
    p.add_argument("--fp-reference", metavar="MODEL",
                   help="built-in name or path for the torch FP32 peer (default: none)")
    p.add_argument("--torch-decode", type=int, default=8,
                   help="decode steps timed for the torch peer (it recomputes the sequence; default 8)")
    p.add_argument("--no-peers", action="store_true", help="awqcore only")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PNG", help="bar chart of decode/prefill tok/s (needs matplotlib)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file not found: {args.model}")
    prefills = [int(v) for v in str(args.prefill).split(",")]
    decodes = [int(v) for v in str(args.decode).split(",")]
    batches = [int(v) for v in str(args.batch).split(",")]
    modes = str(args.activations).split(",")
    if not set(modes) <= {"int8", "f32"}:
        raise ValueError(f"--activations takes int8 and/or f32 (got {args.activations!r})")
    if args.plot:  # fail before the benchmark, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    if min(prefills + decodes + batches) < 1 or args.reps < 1 or args.threads < 1:
        raise ValueError("prefill/decode lengths, batch sizes, --reps and --threads must be positive")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    engines = [{"int8": "awqcore", "f32": "awqcore-f32"}[m] for m in modes]
    gguf = args.gguf or _gguf_for(args.model)
    if not args.no_peers:
        try:
            import llama_cpp  # noqa: F401
            if gguf:
                engines.append("llama.cpp")
            else:
                say("llama.cpp peer skipped: no GGUF (pass --gguf)")
        except ImportError:
            say("llama.cpp peer skipped: pip install 'awqcore[bench]'")
        if args.fp_reference:
            engines.append("torch-fp32")

    per_token_bytes, model_bytes = decode_bytes_per_token(args.model)
    from . import cpu_kernels_info
    say(f"awqcore CPU kernels: {cpu_kernels_info()}")
    say(f"measuring read bandwidth ({args.threads} threads, 1 GB) ...")
    # In a subprocess too: the 1 GB buffer must not count in the engines' peak RSS.
    measured = _run_worker("bandwidth", {"threads": args.threads})
    if "error" in measured:
        raise RuntimeError(measured["error"])
    bandwidth = measured["bytes_per_s"]
    rows = []
    for prefill in prefills:
        for decode in decodes:
            runs = [(engine, batch) for engine in engines
                    for batch in (batches if engine.startswith("awqcore") else [1])]
            for engine, batch in runs:
                spec = {"model": args.model, "gguf": gguf, "fp_reference": args.fp_reference,
                        "threads": args.threads, "prefill": prefill, "reps": args.reps,
                        "decode": args.torch_decode if engine == "torch-fp32" else decode,
                        "batch": batch, "end_to_end": engine == "awqcore" and batch == 1,
                        "activations": "f32" if engine == "awqcore-f32" else "int8"}
                say(f"{engine}: batch {batch}, prefill {prefill}, decode {spec['decode']}, "
                    f"{args.reps} reps ...")
                result = _run_worker("awqcore" if engine.startswith("awqcore") else engine, spec)
                row = {"engine": engine, "batch": batch, "prefill_len": prefill,
                       "decode_len": spec["decode"], "threads": args.threads}
                if "error" in result:
                    row["error"] = result["error"]
                    say(result["error"])
                else:
                    # Aggregate rates: batch sequences of prefill / decode tokens each.
                    row["prefill_tok_s"] = _summary([batch * prefill / r["prefill_s"] for r in result["runs"]])
                    row["decode_tok_s"] = _summary([batch * spec["decode"] / r["decode_s"]
                                                    for r in result["runs"]])
                    row["load_s"] = result["load_s"]
                    row["peak_rss"] = result["peak_rss"]
                    if engine.startswith("awqcore"):
                        row["model_bytes"] = model_bytes
                        # A decode step reads the weights once for the whole batch.
                        gbs = per_token_bytes * row["decode_tok_s"]["median"] / batch
                        row["decode_GB_s"] = gbs / 1e9
                        row["decode_bw_pct"] = 100 * gbs / bandwidth
                        if "end_to_end_s" in result:
                            row["end_to_end_tok_s"] = ((result["end_to_end_tokens"] + prefill)
                                                       / result["end_to_end_s"])
                rows.append(row)

    report = {"model": args.model, "threads": args.threads, "read_bandwidth_GB_s": bandwidth / 1e9,
              "decode_bytes_per_token": per_token_bytes, "load_avg": os.getloadavg(), "rows": rows}
    print(format_table(report))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    return 0


def format_table(report: dict) -> str:
    def rate(s: Optional[dict]) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}..{s['max']:.1f})" if s else "-"

    lines = [f"read bandwidth {report['read_bandwidth_GB_s']:.1f} GB/s ({report['threads']} threads); "
             f"decode reads {report['decode_bytes_per_token'] / 1e6:.1f} MB/token; "
             f"load average {' '.join(f'{v:.1f}' for v in report['load_avg'])}",
             "engine      batch  prefill  decode  prefill tok/s (min..max)  decode tok/s (min..max)"
             "  peak RSS  model MB  decode GB/s  % of read BW  load s"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"{r['engine']:<11} {r['error']}")
            continue
        lines.append(
            f"{r['engine']:<11} {r['batch']:>5}  {r['prefill_len']:>7}  {r['decode_len']:>6}  "
            f"{rate(r['prefill_tok_s']):>24}  {rate(r['decode_tok_s']):>23}  "
            f"{r['peak_rss'] / 1e6:>6.0f}MB  "
            f"{(r['model_bytes'] / 1e6 if 'model_bytes' in r else float('nan')):>8.1f}  "
            f"{r.get('decode_GB_s', float('nan')):>11.2f}  {r.get('decode_bw_pct', float('nan')):>12.1f}"
            f"  {r['load_s']:>6.3f}")
    if any(r["batch"] > 1 for r in report["rows"]):
        lines.append("batch > 1: tok/s summed over the batch's sequences; GB/s counts the weights "
                     "once per decode step")
    for r in report["rows"]:
        if r["engine"] == "awqcore" and "end_to_end_tok_s" in r:
            lines.append(f"awqcore end-to-end (tokenize + prefill {r['prefill_len']} + decode "
                         f"{r['decode_len']} + detokenize): {r['end_to_end_tok_s']:.1f} tok/s")
    ours = {(r["prefill_len"], r["decode_len"]): r for r in report["rows"]
            if r["engine"] == "awqcore" and r["batch"] == 1 and "error" not in r}
    for r in report["rows"]:
        mine = ours.get((r["prefill_len"], r["decode_len"]))
        if r["engine"] == "awqcore" or "error" in r:
            continue
        mine = mine or next((m for (p, _), m in ours.items() if p == r["prefill_len"]), None)
        if mine:
            lines.append(f"awqcore / {r['engine']} at prefill {r['prefill_len']}: "
                         f"prefill {mine['prefill_tok_s']['median'] / r['prefill_tok_s']['median']:.2f}x, "
                         f"decode {mine['decode_tok_s']['median'] / r['decode_tok_s']['median']:.2f}x")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    rows = [r for r in report["rows"] if "error" not in r]
    labels = [f"{r['engine']}\npp{r['prefill_len']} b{r['batch']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("prefill_tok_s", "decode_tok_s")):
        ax.bar(labels, [r[key]["median"] for r in rows])
        ax.set_title(key.replace("_", " "))
    fig.tight_layout()
    # savefig given a file object takes the format from its argument, not a name.
    with atomic_write(path) as out:
        fig.savefig(out, format=os.path.splitext(path)[1][1:] or "png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # internal: one engine in this process
        print(json.dumps(WORKERS[argv[1]](json.loads(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(prog="awqcore bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

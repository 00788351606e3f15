"""`awqcore bench`: prefill/decode speed of the C++ runtime against its peers.

    awqcore bench smollm2-g64.awqbin --threads 2 --prefill 32,512 --decode 128 --reps 5
    awqcore bench smollm2-g64.awqbin --batch 1,4,8 --prefill 32 --no-peers
    python tools/benchmark.py smollm2-g64.awqbin --json out.json

One row per (engine, batch, prefill length, decode length), AutoAWQ-style:
prefill and decode tokens/s (median of --reps repetitions, with min..max),
peak RSS of the engine's process, model bytes, and the decode bandwidth
achieved: bytes a decode step must read (roofline.py: every weight once, the
tied or separate lm_head included, one embedding row, k of E experts on MoE
layers, and the KV cache at the step's position, averaged over the decode)
x steps/s, also as % of this machine's read bandwidth, measured by the tool
in the same run (threads reading a 1 GB buffer with numpy, best of 3). That
percentage is the share of the roofline reached: the roofline is read
bandwidth / bytes per token, shown as "roofline tok/s". llama.cpp's rows are
counted the same way from its GGUF (its own quantization types).

--profile: where a decode step's time goes. After the timed runs, awqcore's
batch rows generate once more with the runtime's op timers on
(cpp/src/op_profile.h; AWQCORE_PROFILE=1 does the same for any program) and
print per op ms/token, % of the step and, for ops that read weights, GB/s.
"other" is the rest of the step (residual adds, the pass's own overhead).

A "synthetic:..." model (e.g. synthetic:llama2-7b) is written first as a file
of random int4 codes with the shapes of the quantized model (bench_models.py),
into a temporary folder removed afterwards: speed only, no quality.

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
    if spec.get("profile"):
        result["profile"] = _profiled_run(model, spec, ids)
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


def _profiled_run(model, spec: dict, ids: list[int]) -> dict:
    """One more generate with the op timers on: seconds per op over its decode
    steps (op_profile.h), the steps' tokens and the runtime's decode seconds."""
    from . import _core

    batch = spec.get("batch", 1)
    vocab = model.config["vocab_size"]
    work = ids if batch == 1 else [[(ids[0] + 1 + b) % vocab] + ids[1:] for b in range(batch)]
    _core.set_op_profiling(True)
    _core.reset_op_profile()
    try:
        model.generate(work, max_new_tokens=spec["decode"] + 1, stop=[])
        profile = _core.op_profile()
    finally:
        _core.set_op_profiling(False)
    profile["decode_s"] = model.last_timing()["decode_s"]
    return profile


def _worker_llamacpp(spec: dict) -> dict:
    if spec.get("llama_cpp_path"):
        sys.path.append(spec["llama_cpp_path"])  # last: its packages never shadow ours
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


def _gguf_for(path: str) -> Optional[str]:
    """The GGUF the .awqbin came from, when it is a built-in model's (SmolLM2,
    Qwen2.5-Coder-1.5B, Gemma 3 270M) and is on this machine."""
    from .awqbin import read_awqbin
    from .importers import registry

    source = str(read_awqbin(path).metadata.get("general.source", ""))
    for name, locate in ((registry.SMOLLM2_FILE, registry.smollm2_gguf_path),
                         (registry.QWEN_CODER_FILE, registry.qwen_coder_gguf_path),
                         (registry.GEMMA3_FILE, registry.gemma3_gguf_path)):
        if name not in source:
            continue
        cached = registry.cache_dir() / name
        if cached.is_file():
            return str(cached)
        try:
            return str(locate())
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
    p.add_argument("--llama-cpp-path", metavar="DIR", default=os.environ.get("AWQCORE_LLAMA_CPP_PATH"),
                   help="a site-packages folder holding llama_cpp, searched after this "
                        "environment's own (default: $AWQCORE_LLAMA_CPP_PATH)")
    p.add_argument("--profile", action="store_true",
                   help="also time each op of awqcore's decode steps (one extra generate per "
                        "awqcore row) and print ms/token, %% and GB/s per op")
    p.add_argument("--synthetic-lm-head", default="table", choices=("table", "int4"),
                   help="lm_head form of a synthetic:... model's random file (default table)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PNG", help="bar chart of decode/prefill tok/s (needs matplotlib)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    if not str(args.model).startswith("synthetic:"):
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"model file not found: {args.model}")
        return _run(args)
    import shutil
    import tempfile

    from .bench_models import write_random_int4_file

    folder = tempfile.mkdtemp(prefix="awqcore-bench-")
    try:
        path = os.path.join(folder, "synthetic.awqbin")
        write_random_int4_file(args.model, path, lm_head=args.synthetic_lm_head,
                               progress=not args.quiet)
        return _run(argparse.Namespace(**{**vars(args), "model": path, "label": args.model}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
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
        if args.llama_cpp_path and args.llama_cpp_path not in sys.path:
            sys.path.append(args.llama_cpp_path)
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

    from . import cpu_kernels_info
    from .roofline import decode_bytes, gguf_decode_bytes

    say(f"awqcore CPU kernels: {cpu_kernels_info()}")
    counts = {mode: decode_bytes(args.model, mode) for mode in modes}
    peer_counts = {"llama.cpp": gguf_decode_bytes(gguf) if gguf and "llama.cpp" in engines else None}
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
                        "llama_cpp_path": args.llama_cpp_path,
                        "threads": args.threads, "prefill": prefill, "reps": args.reps,
                        "decode": args.torch_decode if engine == "torch-fp32" else decode,
                        "batch": batch, "end_to_end": engine == "awqcore" and batch == 1,
                        "activations": "f32" if engine == "awqcore-f32" else "int8",
                        "profile": args.profile and engine.startswith("awqcore")}
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
                    count = (counts["f32" if engine == "awqcore-f32" else "int8"]
                             if engine.startswith("awqcore") else peer_counts.get(engine))
                    if count is not None:
                        _add_roofline(row, count, bandwidth)
                    if "profile" in result:
                        row["profile"] = _profile_rows(result["profile"], count)
                    if "end_to_end_s" in result:
                        row["end_to_end_tok_s"] = ((result["end_to_end_tokens"] + prefill)
                                                   / result["end_to_end_s"])
                rows.append(row)

    report = {"model": getattr(args, "label", args.model), "threads": args.threads,
              "read_bandwidth_GB_s": bandwidth / 1e9,
              "decode_weight_bytes": counts[modes[0]].weights,
              "decode_weight_bytes_by_op": counts[modes[0]].by_op,
              "kv_bytes_per_cached_token": counts[modes[0]].kv(0), "load_avg": os.getloadavg(),
              "rows": rows}
    print(format_table(report))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    return 0


def _add_roofline(row: dict, count, bandwidth: float) -> None:
    """Decode GB/s and the roofline of one row: a step of B sequences reads the
    weights once and each sequence's cache at its position, averaged over the
    decode (position prefill .. prefill + decode - 1)."""
    batch = row["batch"]
    position = row["prefill_len"] + (row["decode_len"] - 1) / 2
    step_bytes = count.per_step(position, batch)
    steps_per_s = row["decode_tok_s"]["median"] / batch
    row["model_bytes"] = count.model
    row["decode_bytes_per_step"] = step_bytes
    row["decode_GB_s"] = step_bytes * steps_per_s / 1e9
    row["decode_bw_pct"] = 100 * step_bytes * steps_per_s / bandwidth
    row["roofline_tok_s"] = batch * bandwidth / step_bytes


def _profile_rows(profile: dict, count) -> list[dict]:
    """Per op: ms per decode step, % of the step, GB/s for ops that read weights.
    The step is the runtime's decode time (forward passes) plus sampling; what
    the timers do not cover is "other"."""
    steps = max(profile["decode_calls"], 1)
    seconds = dict(profile["seconds"])
    timed = sum(v for k, v in seconds.items() if k not in ("sampling", "other"))
    seconds["other"] += max(0.0, profile["decode_s"] - timed - seconds["other"])
    total = sum(seconds.values())
    rows = []
    for op, sec in seconds.items():
        per_step = sec / steps
        weight_bytes = count.by_op.get(op, 0) if count is not None else 0
        if op == "attention" and count is not None:
            weight_bytes = 0  # the cache, not weights: shown without GB/s
        rows.append({"op": op, "ms": 1e3 * per_step, "pct": 100 * sec / total if total else 0.0,
                     "GB_s": weight_bytes / per_step / 1e9 if weight_bytes and per_step > 0 else None})
    return rows


def format_table(report: dict) -> str:
    def rate(s: Optional[dict]) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}..{s['max']:.1f})" if s else "-"

    nan = float("nan")
    lines = [f"{report['model']}: read bandwidth {report['read_bandwidth_GB_s']:.1f} GB/s "
             f"({report['threads']} threads); decode reads "
             f"{report['decode_weight_bytes'] / 1e6:.1f} MB of weights per step + "
             f"{report['kv_bytes_per_cached_token'] / 1e3:.1f} KB of KV cache per cached token; "
             f"load average {' '.join(f'{v:.1f}' for v in report['load_avg'])}",
             "engine      batch  prefill  decode  prefill tok/s (min..max)  decode tok/s (min..max)"
             "  peak RSS  model MB  decode GB/s  % of read BW  roofline tok/s  load s"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"{r['engine']:<11} {r['error']}")
            continue
        lines.append(
            f"{r['engine']:<11} {r['batch']:>5}  {r['prefill_len']:>7}  {r['decode_len']:>6}  "
            f"{rate(r['prefill_tok_s']):>24}  {rate(r['decode_tok_s']):>23}  "
            f"{r['peak_rss'] / 1e6:>6.0f}MB  "
            f"{(r['model_bytes'] / 1e6 if 'model_bytes' in r else nan):>8.1f}  "
            f"{r.get('decode_GB_s', nan):>11.2f}  {r.get('decode_bw_pct', nan):>12.1f}"
            f"  {r.get('roofline_tok_s', nan):>14.1f}  {r['load_s']:>6.3f}")
    lines.append("% of read BW = % of the roofline (read bandwidth / bytes per decode step: "
                 "weights + KV cache at the step's position)")
    for r in report["rows"]:
        if "profile" not in r:
            continue
        lines.append(f"profile of a decode step: {r['engine']}, batch {r['batch']}, prompt "
                     f"{r['prefill_len']} (one run, wall clock; noisy on a loaded machine)")
        lines.append("  op                 ms/step      %     GB/s")
        for op in r["profile"]:
            gbs = f"{op['GB_s']:8.1f}" if op["GB_s"] is not None else "       -"
            lines.append(f"  {op['op']:<17} {op['ms']:>8.3f}  {op['pct']:>5.1f}  {gbs}")
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

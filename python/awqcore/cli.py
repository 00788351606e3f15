"""The `awqcore` command: quantize a model, inspect a .awqbin file, run one.

    awqcore quantize smollm2-135m --out smollm2.awqbin
    awqcore inspect smollm2.awqbin --verify
    awqcore run smollm2.awqbin -p "What is the capital of France?" --chat
    awqcore run smollm2.awqbin --chat          (interactive, multi-turn)
    awqcore ppl smollm2.awqbin --fp-reference smollm2-135m --kl-base smollm2-135m
    awqcore convert autoawq-folder --out model.awqbin
    awqcore serve smollm2.awqbin --port 8000       (OpenAI-compatible HTTP server)

User errors (a bad file, a bad argument, a missing path) print one line
"awqcore: error: ..." and exit with status 2; there is no traceback for them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from .errors import Error

# `awqcore quantize`'s methods (quantize.pipeline.QUANTIZERS, named here so that the
# parser does not import torch); without --method, pipeline.default_method picks one.
QUANTIZE_METHODS = ("rtn", "awq", "gptq", "awq-gptq")

EXIT_USAGE = 2


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


# ---------------------------------------------------------------- quantize

def _openmp_threads_sleep() -> None:
    """Makes torch's OpenMP threads sleep when they wait (OMP_WAIT_POLICY=PASSIVE)
    unless the user chose otherwise. libgomp spins a waiting thread for ~300k
    iterations first; on a machine busy with other jobs a descheduled worker then
    leaves the others spinning on every op of the searches, multiplying their CPU
    time (README, "Time and memory"). The runtime reads the
    variable when torch loads it, and it holds for the whole process, every OpenMP
    library in it included: so only the quantize command, which owns its process,
    sets it, never an import of the library."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_quantize(args: argparse.Namespace) -> int:
    _openmp_threads_sleep()
    from .importers import load_source
    from .quantize import quantize_model
    from .quantize.pipeline import CALIBRATED_METHODS, default_method

    import resource

    # Only the options the user gave: the method rejects those that do not apply.
    given = {"calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen,
             "calib_text": args.calib_text, "seed": args.seed, "loss_tokens": args.loss_tokens,
             "clip": "off" if args.no_clip else args.clip, "device": args.device}
    options = {k: v for k, v in given.items() if v is not None}
    if args.method == "rtn" and args.threads:  # rtn runs no torch
        raise ValueError(f"option threads applies to the calibrated methods "
                         f"({', '.join(CALIBRATED_METHODS)}) only")
    if args.method != "rtn":  # None: the model's default, a calibrated method
        import torch

        # torch's default is the physical cores it detects; the searches are
        # matmul-bound, so every core the process may use helps (on a machine busy
        # with other jobs, fewer threads than cores avoid threads waiting on each other).
        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    source = load_source(args.model)
    method = args.method or default_method(source.config)
    summary = quantize_model(source, args.out, method=method, group_size=args.group_size,
                             progress=not args.quiet, embeddings=args.embeddings,
                             lm_head=args.lm_head, **options)
    ratio = summary["fp16_bytes"] / summary["file_bytes"]
    print(f"wrote {summary['path']}: {_mb(summary['file_bytes'])} "
          f"(FP16 would be {_mb(summary['fp16_bytes'])}, {ratio:.2f}x smaller); "
          f"{summary['quantized_linears']} linears quantized with {summary['method']}, "
          f"group size {summary['group_size']}, {summary['embeddings']} embedding tables"
          f"{', int4 lm_head' if summary['lm_head'] == 'int4' else ''}, "
          f"in {summary['seconds']:.1f} s ({summary['cpu_seconds']:.1f} CPU-s)")
    report = summary["report"]
    if "stage_seconds" in report:
        print(f"time per stage ({report['device']}): " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds
                                             in report["stage_seconds"].items()))
    for note in report.get("notes", []):
        print(f"note: {note}")
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak resident memory: {_mb(peak)}")
    if args.export_hf:
        from .importers.autoawq_format import export_hf

        print(f"wrote {export_hf(args.out, args.export_hf)}: AutoAWQ GEMM checkpoint "
              "(config.json, model.safetensors, tokenizer)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .importers.autoawq_format import convert_hf

    summary = convert_hf(args.folder, args.out)
    print(f"wrote {summary['path']}: {summary['linears']} int4 linears (group size "
          f"{summary['group_size']}) copied from {args.folder} without re-quantizing")
    return 0


# ----------------------------------------------------------------- inspect

def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def cmd_inspect(args: argparse.Namespace) -> int:
    from .awqbin import read_awqbin

    f = read_awqbin(args.file)
    m = f.metadata

    def show(keys: list[str]) -> None:
        for key in keys:
            if key in m:
                print(f"  {key.split('.', 1)[1]:<24} {m[key]}")

    print(f"{args.file}: .awqbin v{f.header['version']}, {_mb(f.file_size)} "
          f"({f.file_size:,} bytes)")
    print(f"architecture: {m.get('general.architecture', '?')}  name: {m.get('general.name', '?')}")
    if "general.source" in m:
        print(f"source: {m['general.source']}")
    print("hyperparameters:")
    show(sorted(k for k in m if k.startswith("model.")))
    print("quantization:")
    show(sorted(k for k in m if k.startswith("quant.")))
    tokenizer_json = m.get("tokenizer.json", "")
    template = m.get("tokenizer.chat_template", "")
    print(f"tokenizer: {len(tokenizer_json):,} chars of JSON, chat template "
          f"{'%d chars' % len(template) if template else 'absent'}"
          f"{' (reduced for C++: chat.* keys)' if 'chat.format' in m else ''}, "
          f"bos {m.get('tokenizer.bos_token_id', '?')}, eos {m.get('tokenizer.eos_token_ids', '?')}")

    by_dtype: dict[str, list[int]] = {}
    for entry in f.tensors.values():
        count_bytes = by_dtype.setdefault(entry.dtype, [0, 0])
        count_bytes[0] += 1
        count_bytes[1] += entry.nbytes
    total = sum(nbytes for _, nbytes in by_dtype.values())
    print(f"tensors: {len(f.tensors)}, {_mb(total)} of data")
    print(_table([(dt, str(n), _mb(b), f"{100 * b / max(total, 1):.1f}%")
                  for dt, (n, b) in sorted(by_dtype.items())], ("dtype", "count", "size", "share")))

    names = list(f.tensors)
    shown = names if len(names) <= 12 else names[:6] + [None] + names[-6:]
    rows = []
    for name in shown:
        if name is None:
            rows.append((f"... {len(names) - 12} more ...", "", "", ""))
            continue
        e = f.tensors[name]
        rows.append((name, e.dtype, "x".join(map(str, e.shape)), f"{e.nbytes:,}"))
    print(_table(rows, ("name", "dtype", "shape", "bytes")))

    if args.verify:
        bad = f.verify()
        if bad:
            listed = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            print(f"awqcore: error: {len(bad)} tensor(s) fail their CRC-32 check: {listed}",
                  file=sys.stderr)
            return 1
        print(f"verify: all {len(f.tensors)} tensor checksums OK")
    return 0


# --------------------------------------------------------------------- run

def cmd_run(args: argparse.Namespace) -> int:
    import awqcore

    if args.prompt is None and not args.chat:
        raise ValueError("give a prompt (-p TEXT), or --chat for an interactive chat")
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat")
    model = awqcore.Model(args.file, threads=args.threads, max_seq_len=args.max_seq_len,
                          device=args.device)
    if args.device == "cuda":
        print(f"{awqcore.cuda_device_info()}: {model.config['device_memory_bytes'] / 2**20:.0f} MiB "
              f"of device memory (weights, KV cache, scratch)", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    if args.chat and args.prompt is None:
        return _interactive_chat(model, args, system)
    if args.chat:
        from .chat import chat_prompt_ids

        ids = chat_prompt_ids(model, [*system, {"role": "user", "content": args.prompt}])
    else:
        ids = model.tokenizer.encode(args.prompt).ids
    _answer(model, ids, args)
    return 0


def _interactive_chat(model, args: argparse.Namespace, system: list[dict]) -> int:
    """Multi-turn chat on stdin: the whole conversation is the prompt of each
    answer. Ctrl-C stops the answer being written (it stays in the history as
    far as it got); at the prompt it ends the program, as Ctrl-D does."""
    from .chat import chat_prompt_ids

    if not model.chat_template:
        raise ValueError("this model has no chat template; run without --chat")
    history = list(system)
    print(f"chat with {model.config.get('name') or args.file}: Ctrl-C stops an answer, "
          "/reset forgets, Ctrl-D quits", file=sys.stderr)
    while True:
        # The prompt goes to stderr: stdout carries the answers alone.
        print("> ", end="", file=sys.stderr, flush=True)
        try:
            line = input()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line == "/reset":
            history = list(system)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = _answer(model, chat_prompt_ids(model, history), args, interruptible=True)
        except (ValueError, Error) as e:
            # The conversation may have outgrown the cache: say so, keep the program.
            print(f"awqcore: error: {_describe(e)} (/reset starts over)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def _answer(model, ids: list[int], args: argparse.Namespace, interruptible: bool = False) -> str:
    """Streams the continuation of `ids` to stdout, the speed and stop reason to
    stderr; returns the text. interruptible: Ctrl-C ends the answer, not the program."""
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    tok = model.tokenizer
    generated: list[int] = []
    printed = ""
    interrupted = False
    start = time.perf_counter()
    first = None
    stream = model.stream(ids, max_new_tokens=args.n_predict, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          repetition_penalty=args.repetition_penalty)
    try:
        for token in stream:
            if first is None:
                first = time.perf_counter()
            generated.append(token)
            # Decoding the whole continuation each time (not token by token) gets
            # multi-token characters and tokenizer-specific spacing right.
            text = tok.decode(generated, skip_special_tokens=True)
            # A trailing U+FFFD is half of a UTF-8 character whose rest is yet to come.
            if text.startswith(printed) and not text.endswith("\ufffd"):
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
    except KeyboardInterrupt:
        if not interruptible:
            raise
        interrupted = True
    finally:
        stream.close()  # stops the worker at once when the loop ended early
    end = time.perf_counter()
    text = tok.decode(generated, skip_special_tokens=True)
    sys.stdout.write(text[len(printed):] if text.startswith(printed) else "\n" + text)
    sys.stdout.write("\n")
    sys.stdout.flush()

    if first is not None:
        prefill = first - start
        decode_n = len(generated) - 1
        decode_rate = f"{decode_n / (end - first):.1f} tok/s" if decode_n and end > first else "n/a"
        print(f"prefill: {len(ids)} tokens in {prefill:.3f} s ({len(ids) / prefill:.1f} tok/s); "
              f"decode: {decode_n} tokens, {decode_rate}", file=sys.stderr)
    reason = "interrupted (Ctrl-C)" if interrupted else model.last_stop_reason
    if reason == "context_full":
        reason += f" (prompt + output reached --max-seq-len {args.max_seq_len})"
    print(f"stopped: {reason}", file=sys.stderr)
    return text


# --------------------------------------------------------------------- ppl

def cmd_ppl(args: argparse.Namespace) -> int:
    import awqcore
    from .data import read_text_file, wiki_texts
    from .evaluate import (documents_for_windows, evaluate_runtime, reference_model,
                           reference_perplexity, token_windows)

    # Without --decode-path the runtime computes exactly (f32 activations and KV
    # cache), so the number measures the quantized weights alone; with it, what
    # generation's decode steps compute (int8 activations, f16 cache).
    model = awqcore.Model(args.file, threads=args.threads, max_seq_len=args.seqlen,
                          activations="int8" if args.decode_path else "f32")
    docs = read_text_file(args.text) if args.text else wiki_texts("evaluation")
    docs = documents_for_windows(docs, args.seqlen, args.max_windows)
    ids = model.tokenizer.encode("\n\n".join(docs)).ids
    windows = token_windows(ids, args.seqlen, args.max_windows)
    text_name = args.text or "Wikipedia summaries, evaluation split (disjoint from calibration)"
    c = model.config
    base = reference_model(args.kl_base, c["vocab_size"], "--kl-base") if args.kl_base else None
    evaluation = evaluate_runtime(model, windows, base=base, decode_path=args.decode_path,
                                  progress=not args.quiet)
    result = evaluation.result
    print(f"text: {text_name}")
    print(f"protocol: {result.protocol()}"
          + (f"; runtime fed {awqcore.INT8_DECODE_MAX_TOKENS} tokens per call: decode-step "
             "arithmetic (int8 activations, f16 KV cache)" if args.decode_path
             else "; runtime exact (f32 activations and cache)"))
    print(f"perplexity {result.perplexity:10.3f}  {os.path.basename(args.file)} "
          f"(int4 {c['quant_method']} g{c['group_size']}, C++ runtime)")
    if args.fp_reference:
        if args.fp_reference == args.kl_base:  # already computed on the same windows
            fp = evaluation.base_perplexity
        else:
            reference = reference_model(args.fp_reference, c["vocab_size"], "--fp-reference")
            fp = reference_perplexity(reference, windows, progress=not args.quiet).perplexity
        print(f"perplexity {fp:10.3f}  {args.fp_reference} "
              f"(unquantized source weights, torch reference)")
    if base is not None:
        print(f"vs {args.kl_base} (torch reference) over the {result.scored_tokens} scored "
              f"positions: mean KL(base || int4) {evaluation.mean_kl:.5f} nats, "
              f"top-1 agreement {100 * evaluation.top1_agreement:.2f}%")
    return 0


# ------------------------------------------------------------------- bench

def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import run as run_benchmark

    return run_benchmark(args)


# ------------------------------------------------------------------- serve

def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
    except ImportError as e:
        raise ValueError(f"awqcore serve needs the server extra ({e}): pip install "
                         "'awqcore[server]'") from None

    serve(args.file, host=args.host, port=args.port, max_batch=args.max_batch,
          max_seq_len=args.max_seq_len, max_queue=args.max_queue,
          prefill_chunk=args.prefill_chunk, prefill_budget=args.prefill_budget,
          prefix_reuse=not args.no_prefix_reuse, threads=args.threads, device=args.device, api_key=args.api_key, model_name=args.model_name,
          max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
          log_level=args.log_level)
    return 0


# -------------------------------------------------------------------- main

def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, with a message naming the bound."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum} (got {text})")
        return value
    parse.__name__ = "int"  # argparse's message for a non-number: "invalid int value"
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="awqcore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"awqcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quantize", help="quantize a model to a .awqbin file")
    q.add_argument("model", metavar="MODEL",
                   help="built-in name (e.g. smollm2-135m), a .gguf file or a Hugging Face folder")
    q.add_argument("--out", "-o", required=True, help="output .awqbin path")
    q.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128),
                   help="input columns per quantization group (default 64)")
    q.add_argument("--method", choices=QUANTIZE_METHODS,
                   help="rtn: round to nearest (no calibration, seconds); awq: "
                   "activation-aware scales and clipping from calibration text; gptq: "
                   "GPTQ's second-order error compensation; awq-gptq: AWQ's scales and the "
                   "attention's clip bounds, then GPTQ on that grid (default awq-gptq; awq for "
                   "a model with experts)")
    q.add_argument("--embeddings", default="int8", choices=("f16", "int8"),
                   help="storage of the token embedding and lm_head tables: int8 with one f16 "
                   "scale per 32 columns (half the bytes of f16; for small models the lm_head "
                   "is about half of what a decode step reads; its quality cost, measured per "
                   "model, is in the README), or f16 (default int8)")
    q.add_argument("--lm-head", default="table", choices=("table", "int4"),
                   help="table: the lm_head in the --embeddings form (shared with the embedding "
                   "when the model ties them); int4: a 4-bit linear (round to nearest at "
                   "--group-size), the smallest file and the fewest bytes per decoded token, "
                   "at a measured quality cost (README); a tied model's file becomes untied "
                   "(default table)")
    awq = q.add_argument_group("calibration (--method awq, gptq, awq-gptq)")
    awq.add_argument("--calib-samples", type=_positive_int,
                     help="calibration blocks (default 32)")
    awq.add_argument("--calib-seqlen", type=_int_at_least(2),
                     help="tokens per calibration block, at least 2 (default 256)")
    awq.add_argument("--calib-text", metavar="FILE",
                     help="calibrate on this plain text (documents separated by blank lines) "
                     "or JSONL with a 'text' field; default: the Wikipedia summaries' "
                     "calibration split (disjoint from the one `awqcore ppl` evaluates on)")
    clip = awq.add_mutually_exclusive_group()
    clip.add_argument("--clip", choices=("full", "heldout", "mild", "attn", "off"),
                     help="AWQ's clip search: full (AutoAWQ's: shrinks down to 0.55 of a "
                     "group's max, chosen on all calibration tokens), heldout (chosen on half "
                     "the calibration sequences, kept only where it also helps on the other "
                     "half), mild (shrinks down to 0.85), attn (full, on the attention's "
                     "linears only: the MLP's bounds fit the calibration text and cost on "
                     "other text, e.g. code on a coder model; README), off (default: attn "
                     "for awq-gptq, full for awq, off for gptq)")
    clip.add_argument("--no-clip", action="store_true", help="the same as --clip off")
    awq.add_argument("--threads", type=_positive_int,
                     help="torch threads on the CPU (default: every core the process may use)")
    awq.add_argument("--device", choices=("cpu", "cuda"),
                     help="where torch runs the calibration (default: cuda when torch sees "
                     "one, else cpu with all cores)")
    awq.add_argument("--seed", type=int,
                     help="seeds the calibration text sample and the scale search's loss "
                     "sample; the same seed gives the same file (default 0)")
    awq.add_argument("--loss-tokens", type=_non_negative_int, metavar="N",
                     help="tokens the scale search's loss is computed on (default 1024; "
                     "0 = all calibration tokens, slower)")
    q.add_argument("--export-hf", metavar="DIR",
                   help="also write an AutoAWQ GEMM checkpoint (Hugging Face folder loadable "
                   "by transformers, vLLM, TGI) of the quantized model to DIR")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)

    cv = sub.add_parser("convert", help="import an AutoAWQ GEMM checkpoint (HF folder) into "
                        ".awqbin without re-quantizing")
    cv.add_argument("folder", metavar="DIR")
    cv.add_argument("--out", "-o", required=True, help="output .awqbin path")
    cv.set_defaults(func=cmd_convert)

    i = sub.add_parser("inspect", help="show a .awqbin file's configuration and tensors")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--verify", action="store_true",
                   help="check every tensor's CRC-32; exit 1 if any fails")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="generate text with a .awqbin model")
    r.add_argument("file", metavar="FILE")
    r.add_argument("-p", "--prompt",
                   help="the text to continue (with --chat: the user's message; --chat without "
                   "it: an interactive multi-turn chat)")
    r.add_argument("-n", "--n-predict", type=int, default=64, help="max new tokens (default 64)")
    r.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template as a user message; "
                   "without -p, chat interactively (history kept; Ctrl-C stops an answer, "
                   "/reset forgets the conversation, Ctrl-D quits)")
    r.add_argument("--system", help="the chat's system message (with --chat)")
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    r.add_argument("--top-p", type=float, default=1.0, help="1 = off (default)")
    r.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="CTRL-style penalty of tokens already in the sequence; 1 = off (default)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="worker threads (default: all cores)")
    r.add_argument("--max-seq-len", type=_positive_int, default=2048,
                   help="KV-cache capacity in tokens (default 2048)")
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the forward pass runs (default cpu; cuda: GPU 0)")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("ppl", help="perplexity through the C++ runtime (and the FP reference)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--text", help="plain text (documents separated by blank lines) or JSONL "
                   "with a 'text' field; default: the held-out Wikipedia summaries")
    p.add_argument("--seqlen", type=_positive_int, default=512, help="window length (default 512)")
    p.add_argument("--max-windows", type=_positive_int, default=None,
                   help="evaluate at most this many windows (default: all)")
    p.add_argument("--fp-reference", metavar="MODEL",
                   help="also evaluate this unquantized source model (built-in name, .gguf or "
                   "HF folder) with the torch reference on the same windows")
    p.add_argument("--kl-base", metavar="MODEL",
                   help="also report the mean KL divergence and top-1 agreement of the "
                   "quantized model's next-token distribution against this model's (run "
                   "with the torch reference), usually the unquantized source")
    p.add_argument("--decode-path", action="store_true",
                   help="score every position with the arithmetic of generation's decode steps "
                   "(int8 activations, f16 KV cache; windows fed 8 tokens per call) "
                   "instead of the exact f32 arithmetic")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ppl)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, "
                       "streaming) with continuous batching")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    s.add_argument("--max-batch", type=_positive_int, default=8,
                   help="requests decoding together, one KV cache each (default 8)")
    s.add_argument("--max-seq-len", type=_positive_int, default=4096,
                   help="context per request in tokens, prompt + completion (default 4096)")
    s.add_argument("--max-queue", type=_non_negative_int, default=64,
                   help="requests waiting beyond the free slots; one more is answered 503 "
                        "(default 64)")
    s.add_argument("--prefill-chunk", type=_positive_int, default=256,
                   help="prompt tokens prefilled between two decode steps (default 256)")
    s.add_argument("--prefill-budget", type=_positive_int, default=None,
                   help="the same while a client is mid-stream, whose next token each "
                   "prefill delays (default: no budget, as --prefill-chunk)")
    s.add_argument("--no-prefix-reuse", action="store_true",
                   help="prefill every prompt whole, even where a free slot's cache holds its "
                        "start (a shared system prompt, a chat's earlier turns)")
    s.add_argument("--threads", type=_positive_int, default=None,
                   help="worker threads (default: all cores)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the forward pass runs (default cpu; cuda: GPU 0)")
    s.add_argument("--api-key", default=os.environ.get("AWQCORE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $AWQCORE_API_KEY; "
                   "unset: no key)")
    s.add_argument("--model-name", help="the model's name in the API (default: the file name "
                   "without .awqbin)")
    s.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20,
                   help="larger request bodies are answered 413 (default 1 MiB)")
    s.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="on SIGINT/SIGTERM, seconds running requests may go on before they "
                   "are cancelled (default 10)")
    s.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info: one line per request)")
    s.set_defaults(func=cmd_serve)

    from .benchmark import add_arguments as add_bench_arguments
    b = sub.add_parser("bench", help="prefill/decode speed vs llama.cpp and torch (table, JSON)")
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, Error) as e:
        # FormatError is a ValueError; FileNotFoundError and friends are OSErrors;
        # Error is the runtime's ("built without CUDA", "no CUDA device", ...).
        print(f"awqcore: error: {_describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nawqcore: interrupted", file=sys.stderr)
        return 130


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {os.fsdecode(e.filename)}"
    return str(e) or type(e).__name__


if __name__ == "__main__":
    raise SystemExit(main())

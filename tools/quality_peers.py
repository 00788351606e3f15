"""AWQ quality against a peer implementation, in one run and one evaluation path.

    python3 tools/quality_peers.py smollm2-135m --group-size 64 --calib-samples 16 \
        --calib-seqlen 256 --ood-text ood.txt [--peers autoawq,llmcompressor] \
        [--peer-python autoawq=$HOME/venvs/autoawq/bin/python] [--json out.json]

What runs, from ONE set of calibration token blocks (awqcore's own loader,
quantize.calibration.calibration_blocks, with --seed, --calib-samples, --calib-seqlen
and --calib-text: the exact [N, T] tensor awqcore's AWQ pass embeds):
  RTN            awqcore --method rtn
  awqcore AWQ    awqcore --method awq (scales + full clip search)
  awqcore AWQ+GPTQ  awqcore --method awq-gptq (the default method: AWQ's scales and the
                 attention's clip bounds, then GPTQ)
                 (--methods rtn,awq-gptq leaves out the awq row; RTN always runs)
  peer AWQ       each peer of --peers that is installed in --peer-python:
    autoawq        AutoAWQ 0.2.9, GEMM, zero point, scales + clip (its defaults),
                   calibrated on the same blocks, in f32 on the CPU
    llmcompressor  llm-compressor's AWQModifier (scales; it has no clip search),
                   W4A16 asymmetric at the same group size, on the same blocks
Every quantized model is an .awqbin (the peer's AutoAWQ checkpoint converted with
`awqcore convert`'s code: int4 codes, scales and zeros copied exactly; its float
tensors are f32 in the checkpoint, stored like ours: embedding f16, norms f32) and is
evaluated by the C++ runtime in its exact f32 mode; FP is the torch reference of the
source weights. Same text, same tokenization, same windows of --eval-seqlen tokens
for all (evaluate.py's protocol): the held-out Wikipedia split (in domain) and
--ood-text (out of domain). Prints perplexities and each row's share of RTN's
increase, (ppl - FP) / (RTN - FP), and writes the same as JSON with --json.

The peers are optional (`pip install awqcore[peers]` for AutoAWQ,
`awqcore[peers-llmcompressor]` for llm-compressor, each best in a venv of its own:
AutoAWQ 0.2.9 needs transformers 4.51; README, "The peer tool"). A peer runs as a
subprocess of --peer-python (default: this Python), which needs only the peer and
torch, not awqcore; a peer that is missing there is skipped with the reason, and
the table says which peers ran.

The source model reaches the peer as a Hugging Face folder written here from the
weights awqcore quantizes (for a GGUF: its dequantized tensors), in f32, with the
config.json our AutoAWQ export writes (importers/autoawq_format.hf_config), so both
tools start from identical weights.

AutoAWQ 0.2.9 on the CPU, patched at run time in the peer process (the installed
package is not modified, nothing of it is copied here): its scale search saves the
module's weights with `{k: v.cpu() ...}`, which on the CPU returns the same tensors,
and the first ratio then scales them in place (`fc.weight.mul_`): every later ratio
is tried on, and the search leaves behind, weights multiplied by the first ratio's
scales with nothing dividing them back out (llm-awq's issue tracker: "clone weights in
AWQ scale grid search"; on a GPU `.cpu()` copies, so it does not arise). The worker
recompiles AwqQuantizer._compute_best_scale from its installed source with that
one line changed to `v.cpu().clone()`, and refuses to run if the line is not there
exactly once.

llm-compressor 0.14 on the CPU, patched the same way: its AWQ pins the cached
activations' host memory before the grid search (IntermediatesCache.pin_memory),
which raises without an accelerator; pinning only speeds up host-to-device copies, so
the worker makes it a no-op when torch sees no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

# peer name -> (module to import, pip requirement, what the row is called)
PEERS = {"autoawq": ("awq", "autoawq==0.2.9", "AutoAWQ 0.2.9 AWQ"),
         "llmcompressor": ("llmcompressor", "llmcompressor", "llm-compressor AWQ")}
# The line of AwqQuantizer._compute_best_scale the worker patches, and its fix.
AUTOAWQ_ALIASED = "org_sd = {k: v.cpu() for k, v in module2inspect.state_dict().items()}"
AUTOAWQ_CLONED = "org_sd = {k: v.cpu().clone() for k, v in module2inspect.state_dict().items()}"
# awqcore method -> what its row is called
AWQCORE_ROWS = {"rtn": "RTN", "awq": "awqcore AWQ", "awq-gptq": "awqcore AWQ+GPTQ"}


# ---------------------------------------------------------------- arithmetic, table
def share_of_rtn(ppl: float, fp: float, rtn: float) -> float:
    """How much of RTN's perplexity increase over FP a row keeps: 0 = FP, 1 = RTN."""
    if not rtn > fp:
        return math.nan  # RTN no worse than FP: no increase to share
    return (ppl - fp) / (rtn - fp)


def with_shares(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """rows: name -> text -> perplexity, holding "FP" and "RTN". Returns
    name -> text -> {"ppl", "share"}."""
    fp, rtn = rows["FP"], rows["RTN"]
    return {name: {t: {"ppl": p, "share": share_of_rtn(p, fp[t], rtn[t])}
                   for t, p in ppls.items()}
            for name, ppls in rows.items()}


def without_nan(value):
    """JSON has no NaN: a share with no RTN increase to divide by becomes null."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def format_table(results: dict[str, dict[str, dict[str, float]]], texts: list[str]) -> str:
    width = max(len(n) for n in results) + 2
    head = f"{'':{width}s}" + "".join(f"{t + ' ppl':>11s}{'share':>7s}" for t in texts)
    lines = [head]
    for name, per_text in results.items():
        cells = "".join(f"{per_text[t]['ppl']:11.3f}{per_text[t]['share']:7.3f}" for t in texts)
        lines.append(f"{name:{width}s}{cells}")
    return "\n".join(lines)


# ---------------------------------------------------------------- peers
def peer_status(peer: str, python: str) -> tuple[str | None, str]:
    """(version, "") when `python` imports the peer, else (None, why not)."""
    module, requirement, _ = PEERS[peer]
    probe = (f"import importlib.metadata as m, {module}; "
             f"print(m.version({requirement.split('==')[0]!r}))")
    try:
        done = subprocess.run([python, "-W", "ignore", "-c", probe], capture_output=True,
                              text=True, timeout=300)
    except OSError as e:
        return None, f"{python} cannot run ({e})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{python} cannot import {module} ({last}); pip install {requirement}"
    return done.stdout.strip().splitlines()[-1], ""  # the version; a peer may log before it


def write_float_checkpoint(source, folder: str) -> None:
    """The source's weights as an unquantized Hugging Face folder (f32 safetensors,
    config.json, tokenizer.json), named and shaped as transformers loads them."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from awqcore.atomic_write import write_atomic
    from awqcore.importers import expected_tensor_shapes
    from awqcore.importers.autoawq_format import FAMILIES, checkpoint_name, hf_config

    c, tok = source.config, source.tokenizer
    config = hf_config(c, tok.bos_token_id, tok.eos_token_ids or [-1], 128)
    del config["quantization_config"]
    config["torch_dtype"] = "float32"
    offset = np.float32(FAMILIES[c.architecture].norm_offset)
    tensors = {}
    for name in expected_tensor_shapes(c):
        t = np.asarray(source.get(name), dtype=np.float32)
        if name.endswith("norm.weight"):  # the checkpoint's w of the stored multiplier
            t = t - offset
        tensors[checkpoint_name(c, name)] = torch.from_numpy(np.ascontiguousarray(t))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.safetensors")
    save_file(tensors, path + ".partial", metadata={"format": "pt"})
    os.replace(path + ".partial", path)  # atomic: a folder never holds half a file
    write_atomic(os.path.join(folder, "config.json"), json.dumps(config, indent=1))
    write_atomic(os.path.join(folder, "tokenizer.json"), tok.json)


def run_peer(peer: str, python: str, hf_dir: str, calib_path: str, group_size: int,
             out_dir: str, threads: int, quiet: bool) -> None:
    """The peer's checkpoint of hf_dir calibrated on calib_path, into out_dir
    (RuntimeError with the worker's last output when it fails)."""
    cmd = [python, "-W", "ignore", os.path.abspath(__file__), "--worker", peer, hf_dir,
           calib_path, out_dir, "--group-size", str(group_size), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0:
        tail = "\n".join(((done.stderr or "") + (done.stdout or "")).splitlines()[-15:])
        raise RuntimeError(f"{peer} failed (exit {done.returncode}){': ' + tail if tail else ''}")


def patched_best_scale_source(source: str) -> str:
    """AwqQuantizer._compute_best_scale's source with its weight snapshot cloned;
    RuntimeError unless the aliasing line is there exactly once."""
    if source.count(AUTOAWQ_ALIASED) != 1:
        raise RuntimeError("AutoAWQ's _compute_best_scale does not contain the aliasing line "
                           f"{AUTOAWQ_ALIASED!r} once; this tool patches AutoAWQ 0.2.9 only")
    return source.replace(AUTOAWQ_ALIASED, AUTOAWQ_CLONED)


def autoawq_folder_from_codes(source, codes_path: str, folder: str, group_size: int) -> None:
    """An AutoAWQ GEMM checkpoint (what `awqcore convert` reads) of a peer's int4 codes,
    zeros and scales (u8 [out, in], u8 [out, in/g], f32 [out, in/g] per linear, as
    `<linear>.codes/.zeros/.scales`) and float tensors. The scales are stored in f16 as
    in every AutoAWQ checkpoint and .awqbin: a relative change of at most 2^-11."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from awqcore.atomic_write import write_atomic
    from awqcore.importers.autoawq_format import hf_config, to_gemm
    from awqcore.quantize.rtn import pack_int4

    raw = load_file(codes_path)
    tensors = {}
    for name, t in raw.items():
        if name.endswith(".codes"):
            prefix = name[:-len(".codes")]
            qweight, qzeros, scales = to_gemm(pack_int4(t), raw[prefix + ".scales"]
                                              .astype(np.float16), raw[prefix + ".zeros"])
            tensors.update({f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros,
                            f"{prefix}.scales": scales})
        elif not name.endswith((".scales", ".zeros")):
            tensors[name] = t
    c, tok = source.config, source.tokenizer
    config = hf_config(c, tok.bos_token_id, tok.eos_token_ids or [-1], group_size)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.safetensors")
    save_file(tensors, path + ".partial", metadata={"format": "pt"})
    os.replace(path + ".partial", path)
    write_atomic(os.path.join(folder, "config.json"), json.dumps(config, indent=1))


def _autoawq_worker(hf_dir: str, calib_path: str, out_dir: str, group_size: int) -> None:
    """Runs in the peer's Python: AutoAWQ's AWQ with its defaults, f32, on the CPU."""
    import inspect
    import textwrap

    import numpy as np
    import torch
    from awq import AutoAWQForCausalLM
    from awq.quantize import quantizer

    source = textwrap.dedent(inspect.getsource(quantizer.AwqQuantizer._compute_best_scale))
    namespace: dict = {}
    exec(compile(patched_best_scale_source(source), quantizer.__file__, "exec"),
         vars(quantizer), namespace)
    quantizer.AwqQuantizer._compute_best_scale = namespace["_compute_best_scale"]

    blocks = np.load(calib_path)  # int64 [N, T]
    model = AutoAWQForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32,
                                               device_map=None, safetensors=True)
    config = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
    # Token lists of exactly T tokens: AutoAWQ keeps each (<= max_calib_seq_len),
    # joins them and cuts them back into the same N blocks of T.
    model.quantize(None, quant_config=config, calib_data=blocks.tolist(),
                   max_calib_samples=blocks.shape[0], max_calib_seq_len=blocks.shape[1])
    model.save_quantized(out_dir)


def _llmcompressor_worker(hf_dir: str, calib_path: str, out_dir: str, group_size: int) -> None:
    """Runs in the peer's Python: llm-compressor's AWQModifier (scales; it has no clip
    search) then its W4 asymmetric group quantizer, f32, on the CPU. Writes the int4
    codes, zeros and scales it chose and the float tensors AWQ changed or kept, as
    one safetensors file (llmcompressor.safetensors) that main() turns into an AutoAWQ
    GEMM checkpoint."""
    import numpy as np
    import torch
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationScheme,
                                                 QuantizationStrategy)
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        # Pinning host memory needs an accelerator; it only speeds up copies to one.
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    blocks = np.load(calib_path)  # int64 [N, T]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False,
                               strategy=QuantizationStrategy.GROUP, group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    recipe = [AWQModifier(duo_scaling=True),
              QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    data = Dataset.from_dict({"input_ids": blocks.tolist(),
                              "attention_mask": np.ones_like(blocks).tolist()})
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(blocks),
            max_seq_length=blocks.shape[1], shuffle_calibration_samples=False)
    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not hasattr(module, "weight_scale"):
                continue
            scale, zero = module.weight_scale, module.weight_zero_point  # [out, in/g]
            q = quantize(module.weight, scale, zero, weights)  # in [-8, 7]
            # Unsigned codes and zeros, (q + 8 - (z + 8)) * s = (q - z) * s.
            out[name + ".codes"] = (q.round() + 8).to(torch.uint8)
            out[name + ".zeros"] = (zero.round() + 8).to(torch.uint8)
            out[name + ".scales"] = scale.float()
        for name, tensor in model.state_dict().items():
            if name.endswith(".weight") and name[:-7] + ".codes" in out:
                continue
            if not name.endswith(("weight_scale", "weight_zero_point", "weight_g_idx")):
                # A copy: a tied lm_head shares the embedding's storage, which
                # safetensors refuses to save twice (convert_hf then reads one of them).
                out[name] = tensor.float().clone()
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(out_dir, "llmcompressor.safetensors"))


WORKERS = {"autoawq": _autoawq_worker, "llmcompressor": _llmcompressor_worker}


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="quality_peers' peer worker (internal)")
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("hf_dir")
    p.add_argument("calib")
    p.add_argument("out_dir")
    p.add_argument("--group-size", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    WORKERS[args.peer](args.hf_dir, args.calib, args.out_dir, args.group_size)
    print(f"{args.peer}: quantized in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="built-in name, .gguf, Hugging Face folder or synthetic:...")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--calib-text", help="calibration text file (default: the Wikipedia "
                   "summaries' calibration split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ood-text", required=True, help="out-of-domain text file")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--wiki-windows", type=int, default=20)
    p.add_argument("--ood-windows", type=int, default=12)
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated, of {', '.join(PEERS)}; empty for none")
    p.add_argument("--peer-python", action="append", default=[], metavar="[PEER=]PYTHON",
                   help="the Python a peer is installed in (PEER=PYTHON for one peer, "
                   "PYTHON for the others; repeatable; default: this Python)")
    p.add_argument("--methods", default=",".join(AWQCORE_ROWS),
                   help="awqcore's rows, comma-separated, of " + ", ".join(AWQCORE_ROWS)
                   + " (rtn is always run: every share needs it)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--keep", help="keep the .awqbin files and the peer's checkpoint here")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: evaluate a row's .awqbin already in that folder (from "
                   "a run with the same options) instead of quantizing it again")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch and runtime threads (1 on a machine shared with other jobs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if args.reuse and not args.keep:
        p.error("--reuse needs --keep (the folder of an earlier run)")
    args.peers = [x for x in args.peers.split(",") if x]
    args.methods = list(dict.fromkeys(["rtn", *[m for m in args.methods.split(",") if m]]))
    unknown = [m for m in args.methods if m not in AWQCORE_ROWS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(AWQCORE_ROWS)})")
    pythons = dict(item.split("=", 1) if "=" in item else ("", item)
                   for item in args.peer_python)
    unknown = [x for x in [*args.peers, *pythons] if x and x not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)} (choose from {', '.join(PEERS)})")
    args.peer_python = {peer: pythons.get(peer, pythons.get("", sys.executable))
                        for peer in args.peers}
    return args


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    import awqcore
    from awqcore.atomic_write import write_atomic
    from awqcore.data import read_text_file, wiki_texts
    from awqcore.evaluate import (documents_for_windows, evaluate_runtime, reference_model,
                                  reference_perplexity, token_windows)
    from awqcore.importers import load_source
    from awqcore.importers.autoawq_format import convert_hf
    from awqcore.quantize.calibration import calibration_blocks
    from awqcore.quantize.pipeline import quantize_model

    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    source = load_source(args.model)
    g = args.group_size
    calib = dict(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                 seed=args.seed, calib_text=args.calib_text)
    work = args.keep or tempfile.mkdtemp(prefix="quality_peers_")
    os.makedirs(work, exist_ok=True)
    files, seconds, peers = {}, {}, {}

    def timed(name: str, make, path: str) -> None:
        if args.reuse and os.path.isfile(path):
            say(f"{name}: reusing {path}")
            return
        start = time.perf_counter()
        make()
        seconds[name] = round(time.perf_counter() - start, 1)
        say(f"{name}: {seconds[name]:.0f} s")

    for method in args.methods:
        name = AWQCORE_ROWS[method]
        files[name] = os.path.join(work, method + ".awqbin")
        options = {} if method == "rtn" else calib
        timed(name, lambda path=files[name], m=method, o=options: quantize_model(
            source, path, method=m, group_size=g, progress=not args.quiet, **o), files[name])

    if args.peers:
        blocks = calibration_blocks(source.tokenizer.json, args.calib_samples,
                                    args.calib_seqlen, seed=args.seed,
                                    text_file=args.calib_text)  # [N, T], as awqcore's AWQ
        calib_path = os.path.join(work, "calibration_blocks.npy")
        np.save(calib_path, blocks)
        hf_dir = os.path.join(work, "float_hf")
        write_float_checkpoint(source, hf_dir)
    for peer in args.peers:
        python = args.peer_python[peer]
        version, why = peer_status(peer, python)
        if version is None:
            peers[peer] = {"ran": False, "reason": why}
            say(f"skipping peer {peer}: {why}")
            continue
        label = PEERS[peer][2]
        out_dir, path = os.path.join(work, peer), os.path.join(work, peer + ".awqbin")

        def quantize_with_peer() -> None:
            run_peer(peer, python, hf_dir, calib_path, g, out_dir, args.threads, args.quiet)
            gemm = out_dir
            if peer == "llmcompressor":
                gemm = out_dir + "_gemm"
                autoawq_folder_from_codes(source, os.path.join(out_dir,
                                                               "llmcompressor.safetensors"),
                                          gemm, g)
            shutil.copy(os.path.join(hf_dir, "tokenizer.json"), gemm)  # peers write none
            convert_hf(gemm, path)
        try:
            timed(label, quantize_with_peer, path)
        except (RuntimeError, ValueError, OSError) as e:  # one peer's failure ends no run
            peers[peer] = {"ran": False, "version": version, "reason": str(e)}
            say(f"skipping peer {peer}: {e}")
            continue
        files[label] = path
        peers[peer] = {"ran": True, "version": version}

    texts = {"wiki": wiki_texts("evaluation"), "ood": read_text_file(args.ood_text)}
    limit = {"wiki": args.wiki_windows, "ood": args.ood_windows}
    windows, ppl = {}, {"FP": {}}
    for name, path in files.items():
        model = awqcore.Model(path, threads=args.threads, max_seq_len=args.eval_seqlen,
                              activations="f32")
        ppl[name] = {}
        for t, docs in texts.items():
            if t not in windows:  # one tokenization for every row
                docs = documents_for_windows(docs, args.eval_seqlen, limit[t])
                windows[t] = token_windows(model.tokenizer.encode("\n\n".join(docs)).ids,
                                           args.eval_seqlen, limit[t])
            ppl[name][t] = evaluate_runtime(model, windows[t],
                                            progress=not args.quiet).result.perplexity
        say(f"{name}: " + ", ".join(f"{t} {p:.3f}" for t, p in ppl[name].items()))
    reference = reference_model(args.model, source.config.vocab_size, "model")
    for t in texts:
        ppl["FP"][t] = reference_perplexity(reference, windows[t],
                                            progress=not args.quiet).perplexity
    order = ["FP", "RTN", *[PEERS[p][2] for p in args.peers if peers[p]["ran"]],
             *[AWQCORE_ROWS[m] for m in AWQCORE_ROWS if m != "rtn" and m in args.methods]]
    results = with_shares({name: ppl[name] for name in order})

    ran = [p for p in args.peers if peers[p]["ran"]]
    print(f"{args.model} g{g}; calibration {args.calib_samples} x {args.calib_seqlen} "
          f"(seed {args.seed}, the same blocks for every calibrated row); "
          + ", ".join(f"{t} {len(windows[t])} x {args.eval_seqlen}" for t in texts)
          + f" ({args.ood_text}); quantized rows: C++ runtime f32, FP: torch reference")
    print("peers run: " + (", ".join(f"{p} {peers[p]['version']}" for p in ran) or "none")
          + "".join(f"; {p} skipped: {peers[p]['reason']}" for p in args.peers
                    if not peers[p]["ran"]))
    print(format_table(results, list(texts)))
    if args.json:
        write_atomic(args.json, json.dumps({
            "model": args.model, "group_size": g, "calibration": calib,
            "eval_seqlen": args.eval_seqlen, "ood_text": args.ood_text,
            "windows": {t: len(w) for t, w in windows.items()},
            "scored_tokens": {t: len(w) * (args.eval_seqlen - 1) for t, w in windows.items()},
            "peers": peers, "seconds": seconds, "threads": args.threads,
            "results": without_nan(results)}, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(main())

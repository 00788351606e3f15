#!/usr/bin/env bash
# The main job on the bundled default model, on a fresh machine:
# install, quantize SmolLM2-135M-Instruct to int4 with AWQ (group size 64),
# generate, and report speed (tokens/s) and quality (perplexity of AWQ against
# round-to-nearest and the unquantized model on held-out text).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
mkdir -p out
model=out/smollm2-135m-awq-g64.awqbin
rtn=out/smollm2-135m-rtn-g64.awqbin
# The default method (awq-gptq: AWQ's scales and the attention's clip bounds, then
# GPTQ) on the default 32 x 256 calibration tokens: minutes on 2 cores (README, "AWQ").
# The embedding table is stored as int8 (the default; --embeddings f16 keeps
# it f16): half its bytes, a next-token KL of ~1e-6 nats (README).
echo "== quantize (default method, group size 64)"
awqcore quantize smollm2-135m --group-size 64 --out "$model"
echo "== quantize (round-to-nearest, for comparison)"
awqcore quantize smollm2-135m --method rtn --group-size 64 --quiet --out "$rtn"
echo "== generate"
awqcore run "$model" -p "The capital of France is" -n 48
awqcore run "$model" --chat -p "Write one sentence about the ocean." -n 48
echo "== quality: perplexity on held-out Wikipedia text"
windows=${AWQCORE_PPL_WINDOWS:-8}
awqcore ppl "$model" --seqlen 512 --max-windows "$windows" --fp-reference smollm2-135m
awqcore ppl "$rtn" --seqlen 512 --max-windows "$windows" --quiet

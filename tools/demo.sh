#!/usr/bin/env bash
# The main job on the bundled default model, on a fresh machine:
# install, quantize SmolLM2-135M-Instruct to int4 (group size 64), generate,
# and report speed (tokens/s) and quality (perplexity, int4 vs unquantized).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
mkdir -p out
model=out/smollm2-135m-g64.awqbin
method=${AWQCORE_METHOD:-rtn}
# AWQ with the small 16 x 256 calibration: the default 128 x 512 is too slow
# on 2 cores until the calibration speed work lands (issue 3).
calibration=()
[ "$method" = awq ] && calibration=(--calib-samples 16 --calib-seqlen 256)
echo "== quantize ($method, group size 64)"
awqcore quantize smollm2-135m --method "$method" --group-size 64 "${calibration[@]}" --out "$model"
echo "== generate"
awqcore run "$model" -p "The capital of France is" -n 48
awqcore run "$model" --chat -p "Write one sentence about the ocean." -n 48
echo "== quality: perplexity on held-out Wikipedia text"
awqcore ppl "$model" --seqlen 512 --max-windows ${AWQCORE_PPL_WINDOWS:-4} --fp-reference smollm2-135m

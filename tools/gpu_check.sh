#!/usr/bin/env bash
# One command on a CUDA machine: build (CMake, sm_90 only for speed), run the
# CUDA kernel tests, the benchmark and its torch fp16 peer, the
# mixture-of-experts decode benchmark, and the Python GPU-vs-CPU tests.
# Logs go to $OUT (or ./gpu_check_logs). Usage: bash tools/gpu_check.sh [arch] [moe]
# "moe": only what the MoE path needs (cuda/moe.cu): the MoE kernel test
# (test_cuda_moe), the MoE decode benchmark and the MoE Python tests; minutes
# fewer than the whole check.
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-90}"
ONLY_MOE=0; [ "${2:-}" = "moe" ] && ONLY_MOE=1
LOG="${OUT:-gpu_check_logs}"; mkdir -p "$LOG"
JOBS="$(nproc)"
status=0
step() { echo "== $1"; }

step "build (sm_$ARCH)"
KERNEL_TESTS=(test_cuda_kernels test_cuda_attention test_cuda_moe)
[ "$ONLY_MOE" = 1 ] && KERNEL_TESTS=(test_cuda_moe)
TARGETS=(); [ "$ONLY_MOE" = 1 ] && TARGETS=(--target "${KERNEL_TESTS[@]}" gpu_bench)
cmake -S . -B build-gpu -DAWQCORE_BUILD_TESTS=ON -DAWQCORE_CUDA=ON -DAWQCORE_CUDA_ARCHITECTURES="$ARCH" \
  -DCMAKE_BUILD_TYPE=Release >"$LOG/cmake.log" 2>&1 \
  && cmake --build build-gpu -j "$JOBS" "${TARGETS[@]}" >>"$LOG/cmake.log" 2>&1 \
  || { tail -30 "$LOG/cmake.log"; exit 1; }

step "C++ kernel tests"
for t in "${KERNEL_TESTS[@]}"; do
  build-gpu/cpp/tests/$t 2>&1 | tee "$LOG/$t.log" | grep -v "^\[PASS\]" || status=1
done

step "mixture-of-experts decode benchmark"
build-gpu/gpu_bench moe 2>&1 | tee "$LOG/moe_bench.log" || status=1

if [ "$ONLY_MOE" = 0 ]; then
step "benchmark"
build-gpu/gpu_bench 2>&1 | tee "$LOG/bench.log" || status=1

step "per-kernel time shares of decode steps (nsys)"
if command -v nsys >/dev/null 2>&1; then
  # Graph replays are traced per kernel node; the 64-token prompt's GEMM rows
  # are the int4 GEMM kernel, every other row is the decode step's.
  nsys profile --cuda-graph-trace=node --force-overwrite true -o "$LOG/decode" build-gpu/gpu_bench decode \
    >"$LOG/nsys.log" 2>&1 \
    && nsys stats --report cuda_gpu_kern_sum --format table "$LOG/decode.nsys-rep" 2>&1 | tee "$LOG/kernel_shares.txt" | head -25 \
    || { tail -5 "$LOG/nsys.log"; status=1; }
else
  echo "nsys not installed: no per-kernel table"
fi

step "torch fp16 peer (same GPU, same run)"
python3 tools/gpu_torch_peer.py 2>&1 | tee "$LOG/torch_peer.log" || status=1

fi

step "Python GPU tests"
if python3 -m pip install -q --no-build-isolation --no-deps -C cmake.define.AWQCORE_CUDA_ARCHITECTURES="$ARCH" . >"$LOG/pip.log" 2>&1; then
  SELECT=(); [ "$ONLY_MOE" = 1 ] && SELECT=(-k moe)
  python3 -m pytest -q tests/test_cuda.py "${SELECT[@]}" -s -p no:cacheprovider 2>&1 | tee "$LOG/pytest.log" | tail -25 \
    || status=1
else
  tail -20 "$LOG/pip.log"; status=1
fi
exit $status

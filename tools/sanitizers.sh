#!/usr/bin/env bash
# The C++ tests under sanitizers, and the .awqbin and tokenizer.json readers
# under a fuzzer; run by
# tools/test.sh after the main suite. Steps (default: all three):
#   asan  every ctest suite built with AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan  test_concurrency (Sessions on one Model in parallel threads),
#         test_session, test_engine and test_engine_scheduling (the Engine's thread against callers'
#         threads) and tests/test_threads.py (Python Models from several
#         threads, over an extension built with TSan) under ThreadSanitizer
#   fuzz  cpp/fuzz/fuzz_awqbin (libFuzzer, Clang, with ASan + UBSan) for
#         AWQCORE_FUZZ_SECONDS (default 60) from the seed corpus cpp/fuzz/corpus,
#         then cpp/fuzz/fuzz_tokenizer for AWQCORE_FUZZ_TOKENIZER_SECONDS
#         (default 30) from cpp/fuzz/tokenizer_corpus
# Builds go to build/sanitize-*/ and build/fuzz/ (reused when present). Any
# sanitizer report or fuzzer crash fails the step; a crash input is kept in
# build/fuzz/ (add it to cpp/tests as a regression case). Without clang++ the
# fuzz step is skipped with a message, or fails when AWQCORE_REQUIRE_FUZZ=1
# (CI: tools/install.sh installs clang there).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${AWQCORE_JOBS:-2}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(asan tsan fuzz)

configure() {  # build_dir, extra cmake args...
  local dir=$1
  shift
  cmake -S . -B "$dir" -DAWQCORE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
}

step_asan() {
  configure build/sanitize-address -DAWQCORE_BUILD_TESTS=ON -DAWQCORE_SANITIZE=address,undefined
  cmake --build build/sanitize-address -j "$jobs" >/dev/null
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build/sanitize-address --output-on-failure
}

step_tsan() {
  # The interpreter itself, not a launcher script (pyenv's python3 is a bash
  # script, and bash under the preloaded TSan runtime below dies by SIGSEGV).
  local python
  python=$(python3 -c 'import sys; print(sys.executable)')
  configure build/sanitize-thread -DAWQCORE_BUILD_TESTS=ON -DAWQCORE_SANITIZE=thread \
    -DAWQCORE_BUILD_PYTHON=ON -DPython_EXECUTABLE="$python" \
    -Dnanobind_DIR="$(python3 -c 'import nanobind; print(nanobind.cmake_dir())')"
  cmake --build build/sanitize-thread -j "$jobs" --target test_concurrency test_session test_engine test_engine_scheduling _core >/dev/null
  TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/sanitize-thread --output-on-failure \
    -R '^(test_concurrency|test_session|test_engine|test_engine_scheduling)$'
  # Python threads over the TSan-built extension: the package's sources with
  # that _core, and the TSan runtime preloaded (python is not instrumented).
  local package=build/sanitize-thread/python
  rm -rf "$package" && mkdir -p "$package"
  cp -r python/awqcore "$package/" && cp build/sanitize-thread/_core*.so "$package/awqcore/"
  env LD_PRELOAD="$(${CXX:-g++} -print-file-name=libtsan.so)" TSAN_OPTIONS=halt_on_error=1 \
    PYTHONPATH="$package" "$python" -m pytest -q -p no:cacheprovider --noconftest tests/test_threads.py
}

step_fuzz() {
  if ! command -v clang++ >/dev/null; then
    echo "fuzz: clang++ not found (apt-get install clang; tools/install.sh does it in CI)"
    [ "${AWQCORE_REQUIRE_FUZZ:-0}" = 1 ] && return 1
    echo "fuzz: SKIPPED"
    return 0
  fi
  configure build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DAWQCORE_BUILD_TESTS=OFF \
    -DAWQCORE_SANITIZE=address,undefined -DAWQCORE_BUILD_FUZZERS=ON
  cmake --build build/fuzz -j "$jobs" --target fuzz_awqbin fuzz_tokenizer >/dev/null
  fuzz_target fuzz_awqbin corpus 16384 "${AWQCORE_FUZZ_SECONDS:-60}"
  fuzz_target fuzz_tokenizer tokenizer_corpus 65536 "${AWQCORE_FUZZ_TOKENIZER_SECONDS:-30}"
}

# fuzz_target NAME SEEDS MAX_LEN SECONDS: runs build/fuzz's NAME from the seeds
# in cpp/fuzz/SEEDS. New inputs go to a scratch corpus; the committed seeds
# stay as they are.
fuzz_target() {
  local name=$1 seeds=$2 max_len=$3 seconds=$4
  rm -rf "build/fuzz/$name-corpus" && mkdir -p "build/fuzz/$name-corpus"
  if ! (cd build/fuzz && ASAN_OPTIONS=detect_leaks=1 "./cpp/fuzz/$name" "$name-corpus" \
          "../../cpp/fuzz/$seeds" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
          -max_len="$max_len" -print_final_stats=1 >"$name.log" 2>&1); then
    tail -n 80 "build/fuzz/$name.log"
    return 1
  fi
  echo "$name:"
  grep -E "^(Done |stat::number_of_executed_units|stat::peak_rss_mb)" "build/fuzz/$name.log"
}

for step in "${steps[@]}"; do
  start=$SECONDS
  echo "== sanitizers: $step"
  "step_$step"
  echo "== sanitizers: $step passed in $((SECONDS - start)) s"
done

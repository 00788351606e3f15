#!/usr/bin/env python3
"""Speed benchmark of the C++ runtime against llama.cpp and torch: the same
tool as `awqcore bench` (see python/awqcore/benchmark.py for the options).

    python tools/benchmark.py smollm2-g64.awqbin --threads 2 --prefill 512 --decode 128
"""
import sys

from awqcore.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

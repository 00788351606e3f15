#!/usr/bin/env python3
"""Quantize a model to .awqbin: the same as `awqcore quantize ...`.

    python tools/quantize.py smollm2-135m --out smollm2.awqbin [--group-size 64]
"""
import sys

from awqcore.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["quantize", *sys.argv[1:]]))

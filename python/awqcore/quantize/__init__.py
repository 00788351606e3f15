"""Quantization: float SourceModel -> 4-bit `.awqbin` (see docs/format.md)."""
import os
import sys

# torch's OpenMP runtime (libgomp) makes a thread that reaches a barrier spin for ~300k
# iterations before sleeping. On a machine busy with other jobs, a worker that is
# descheduled leaves the others spinning on every op: with 2 threads on 2 cores at load
# ~10, fake_quantize of a [1536, 576] weight took 28-55 CPU-ms against 1.5 with one
# thread, and one SmolLM2 AWQ layer 18 CPU-s against 4. PASSIVE makes waiting threads
# sleep, which costs a wake-up (microseconds) per parallel op on an idle machine. The
# runtime reads the variable when torch loads it, so this helps only where torch is
# not imported yet (the CLI, the tools); a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .awq import AwqOptions, AwqQuantizer
from .pipeline import QUANTIZERS, LayerQuantizer, quantize_model
from .rtn import dequantize_int4, quantize_int4

__all__ = ["QUANTIZERS", "AwqOptions", "AwqQuantizer", "LayerQuantizer", "dequantize_int4",
           "quantize_int4", "quantize_model"]

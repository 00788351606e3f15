"""Quantization: float SourceModel -> 4-bit `.awqbin` (see docs/format.md)."""
from .awq import AwqOptions, AwqQuantizer
from .pipeline import QUANTIZERS, LayerQuantizer, quantize_model
from .rtn import dequantize_int4, quantize_int4

__all__ = ["QUANTIZERS", "AwqOptions", "AwqQuantizer", "LayerQuantizer", "dequantize_int4",
           "quantize_int4", "quantize_model"]

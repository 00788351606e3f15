"""SourceModel -> .awqbin: quantize every decoder linear, keep the rest in float.

The embedding and lm_head tables are stored as f16, or (embeddings="int8") as
int8 with one f16 scale per 32 columns (int8_table.py): for small models the
lm_head is half of what a decode step reads, and int8 halves it. With
lm_head="int4" the lm_head is a 4-bit linear instead (RTN at the file's group
size, ~4.25-4.5 bits per weight); a tied model's file is then untied: the
embedding table in the `embeddings` form plus the int4 lm_head.

The model is processed one decoder layer at a time, and each finished tensor is
handed to AwqbinWriter (which spools it to disk), so peak memory is about one
layer plus the embedding rather than the whole model.

Quantization methods plug in as `LayerQuantizer`s: a factory registered in
QUANTIZERS gets the source model once, then quantizes each layer in order. This
is the shape AWQ needs (awq.AwqQuantizer): it runs the calibration activations
through the full-precision model layer by layer, searches per-channel scales
for a layer's linears, and folds the inverse scales into the preceding float
tensors (the norms). That is why a quantizer receives all of the layer's float
tensors and may replace the non-linear ones before the pipeline writes them.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Protocol

import numpy as np
from tqdm import tqdm

from ..awqbin import AwqbinWriter, model_metadata
from ..chat_format import chat_format_metadata
from ..importers import expected_tensor_shapes
from ..source import (EXPERT_PROJECTIONS, LINEAR_NAMES, ROUTER_NAME, ModelConfig, SourceModel,
                      expert_linear, layer_linears, layer_prefix, stacked_expert_name)
from .awq import AwqQuantizer
from .awq_moe import MoeAwqQuantizer
from .int8_table import BLOCK as INT8_BLOCK
from .int8_table import TABLE_FORMS, quantize_int8_table
from .rtn import SUPPORTED_GROUP_SIZES, RtnQuantizer, check_group_size, quantize_int4

Int4Tensors = tuple[np.ndarray, np.ndarray, np.ndarray]  # qweight, scales, zeros

LM_HEAD_FORMS = ("table", "int4")  # table: the form `embeddings` names


class LayerQuantizer(Protocol):
    def quantize_layer(self, layer: int, weights: dict[str, np.ndarray],
                       linears: list[str]) -> dict[str, Int4Tensors]:
        """Quantizes the linears of decoder layer `layer`.

        weights: every float32 tensor of the layer by full name (linear weights,
            norms, biases); the quantizer may replace or update the non-linear entries
            and the pipeline writes them as they are afterwards.
        linears: the full name prefixes of the linears to quantize, e.g.
            "model.layers.0.mlp.up_proj" (its weight is weights[prefix + ".weight"]).
        Returns prefix -> (qweight u8 [out, in/2], scales f16 [out, in/g], zeros u8 [out, in/g]).
        """
        ...


def _rtn(source: SourceModel, group_size: int, progress: bool = True,
         **options) -> LayerQuantizer:
    if options:
        raise ValueError(f"option(s) {', '.join(sorted(options))} apply to the calibrated "
                         f"methods ({', '.join(CALIBRATED_METHODS)}) only")
    return RtnQuantizer(source, group_size)


def _awq(source: SourceModel, group_size: int, progress: bool = True,
         **options) -> LayerQuantizer:
    """AWQ; with experts, awq_moe's quantizer (the same for dense layers, plus MoE ones)."""
    quantizer = MoeAwqQuantizer if source.config.num_experts else AwqQuantizer
    return quantizer(source, group_size, progress=progress, **options)


def _gptq(source: SourceModel, group_size: int, progress: bool = True,
          **options) -> LayerQuantizer:
    """GPTQ on the unscaled weights (AWQ's calibration pass, no scale search)."""
    return _awq(source, group_size, progress,
                **{"clip": "off", **options, "scale_search": False, "gptq": True})


def _awq_gptq(source: SourceModel, group_size: int, progress: bool = True,
              **options) -> LayerQuantizer:
    """AWQ's scales and clip bounds, then GPTQ instead of rounding, on the grid those
    bounds set. The bounds are searched for the attention's linears only unless told
    otherwise: the MLP's bounds fit the calibration text and lose out of domain on
    Gemma 3 and Qwen2.5-Coder (docs/quality.md, "Quality per model")."""
    return _awq(source, group_size, progress, **{"clip": "attn", **options, "gptq": True})


# method name -> factory(source, group_size, progress, **method options). Layers
# are quantized in order, so a quantizer may keep state between layers (AWQ's
# calibration activations). A quantizer may also have report() -> dict, which
# quantize_model returns as summary["report"].
QUANTIZERS: dict[str, Callable[..., LayerQuantizer]] = {
    "rtn": _rtn, "awq": _awq, "gptq": _gptq, "awq-gptq": _awq_gptq}
CALIBRATED_METHODS = ("awq", "gptq", "awq-gptq")
# The best measured method: ahead of RTN in and out of domain on SmolLM2, Gemma 3 and
# Qwen2.5-Coder, of awq in domain on all three and out of domain on the last two (on
# SmolLM2's out-of-domain texts awq is ahead on average), and of the peers on all three
# (out of domain on SmolLM2 a tie with AutoAWQ; README, "Quality per model").
DEFAULT_METHOD = "awq-gptq"


def default_method(config: ModelConfig) -> str:
    """DEFAULT_METHOD, or `awq` for a model with experts, which GPTQ does not cover."""
    return "awq" if config.num_experts else DEFAULT_METHOD


def get_quantizer(method: str, source: SourceModel, group_size: int, progress: bool = True,
                  **options) -> LayerQuantizer:
    if method not in QUANTIZERS:
        raise ValueError(f"unknown quantization method {method!r} "
                         f"(available: {', '.join(QUANTIZERS)})")
    return QUANTIZERS[method](source, group_size, progress=progress, **options)


def layer_float_names(source: SourceModel, layer: int) -> list[str]:
    """The layer's tensors: linears and their biases in LINEAR_NAMES order, each norm
    before the linears it feeds (q/k norms after the projections they follow). An MoE
    layer has the router and each expert's gate, up and down where the MLP's are."""
    c, p = source.config, layer_prefix(layer)
    norms = set(c.layer_norm_names())
    names = [p + "input_layernorm.weight"]
    suffixes: list[str] = list(LINEAR_NAMES)
    if c.is_moe_layer(layer):
        suffixes = [s for s, _ in layer_linears(c, layer)]
        suffixes.insert(suffixes.index(expert_linear(0, "gate_proj")), ROUTER_NAME)
    for suffix in suffixes:
        if suffix == "self_attn.o_proj":
            names += [f"{p}{n}.weight" for n in ("self_attn.q_norm", "self_attn.k_norm")
                      if n in norms]
        if suffix in ("mlp.gate_proj", ROUTER_NAME):
            names += [f"{p}{n}.weight" for n in ("post_attention_layernorm",
                                                  "pre_feedforward_layernorm") if n in norms]
        names.append(f"{p}{suffix}.weight")
        if c.attention_bias and suffix in ("self_attn.q_proj", "self_attn.k_proj",
                                           "self_attn.v_proj"):
            names.append(f"{p}{suffix}.bias")
    if "post_feedforward_layernorm" in norms:
        names.append(p + "post_feedforward_layernorm.weight")
    return names


def _get(source: SourceModel, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """source.get(name) as float32, checked for shape."""
    t = np.asarray(source.get(name), dtype=np.float32)
    if t.shape != shape:
        raise ValueError(f"{source.source}: tensor {name!r} has shape {list(t.shape)}, "
                         f"expected {list(shape)}")
    return t


def _checked_int4(prefix: str, quantized: dict[str, Int4Tensors], shape: tuple[int, ...],
                  group_size: int) -> Int4Tensors:
    """The quantizer's output for one linear, checked against what the format needs
    (a quantizer bug must not produce a file the runtime rejects later)."""
    if prefix not in quantized:
        raise RuntimeError(f"the quantizer returned nothing for {prefix}")
    out_f, in_f = shape
    expected = ((np.uint8, (out_f, in_f // 2)), (np.float16, (out_f, in_f // group_size)),
                (np.uint8, (out_f, in_f // group_size)))
    for part, array, (dtype, dims) in zip(("qweight", "scales", "zeros"), quantized[prefix],
                                          expected):
        if array.dtype != dtype or array.shape != dims:
            raise RuntimeError(f"the quantizer returned {prefix}.{part} as {array.dtype} "
                               f"{list(array.shape)}, expected {np.dtype(dtype)} {list(dims)}")
    return quantized[prefix]


def _to_f16(t: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(t).all():
        raise ValueError(f"{name}: non-finite values in the source weights")
    h = t.astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError(f"{name}: values beyond the f16 range (|x| > 65504) cannot be stored")
    return h


def _add_table(add: Callable, prefix: str, table: np.ndarray, form: str) -> None:
    """The table `prefix` [vocab, d] ("model.embed_tokens" or "lm_head") in the chosen
    form: prefix.weight f16, or prefix.weight_q8 + prefix.weight_q8_scales."""
    name = prefix + ".weight"
    if form == "f16":
        add(name, _to_f16(table, name), table.size)
        return
    q, scales = quantize_int8_table(table, name)
    add(prefix + ".weight_q8", q, table.size)
    add(prefix + ".weight_q8_scales", scales, 0)


def _to_f32(t: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(t).all():
        raise ValueError(f"{name}: non-finite values in the source weights")
    return t


def build_metadata(source: SourceModel, method: str, group_size: int,
                   notes: Optional[list] = None, untie: bool = False) -> dict:
    """The file's metadata. The chat template is also stored reduced to fixed
    strings per turn (chat.* keys, for C++) when it reduces; when it does not,
    a note saying why goes to `notes`. `untie`: the file stores its own lm_head
    (int4) even when the source ties it to the embedding."""
    c, tok = source.config, source.tokenizer
    model = model_metadata(c)
    if untie:
        model["model.tie_word_embeddings"] = 0
    chat_keys, chat_note = chat_format_metadata(tok)
    if chat_note and notes is not None:
        notes.append(chat_note)
    return {
        "general.architecture": model.pop("general.architecture"),
        "general.name": model.pop("general.name"),
        "general.source": source.source,
        **model,
        "quant.method": method,
        "quant.bits": 4,
        "quant.group_size": group_size,
        "quant.zero_point": 1,
        "tokenizer.json": tok.json,
        "tokenizer.chat_template": tok.chat_template or "",
        "tokenizer.bos_token_id": int(tok.bos_token_id),
        "tokenizer.eos_token_ids": [int(i) for i in tok.eos_token_ids],
        **chat_keys,
    }


def quantize_model(source: SourceModel, out_path: str | os.PathLike, method: str = "rtn",
                   group_size: int = 64, progress: bool = True, embeddings: str = "f16",
                   lm_head: str = "table", **options) -> dict:
    """Quantizes `source` into `out_path` (written atomically). `embeddings` is how
    the embedding and (untied) lm_head tables are stored: "f16", or "int8" with one
    f16 scale per 32 columns (docs/format.md); `awqcore quantize` defaults to int8.
    `lm_head`: "table" (in the `embeddings` form, or shared with the embedding
    when tied) or "int4" (a 4-bit linear, RTN at `group_size`; the file is
    untied). `options` go to the method (AWQ: awq.AwqOptions' fields). Returns a
    summary: path, method, group_size, embeddings, lm_head, tensors,
    quantized_linears, file_bytes, fp16_bytes (the same model with every weight
    in f16), seconds, cpu_seconds (every thread of the process: steadier than
    seconds on a busy machine), and the quantizer's report (or {})."""
    start, cpu_start = time.perf_counter(), time.process_time()
    c = source.config
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {', '.join(map(str, SUPPORTED_GROUP_SIZES))} "
                         f"(got {group_size!r})")
    if embeddings not in TABLE_FORMS:
        raise ValueError(f"embeddings must be one of {', '.join(TABLE_FORMS)} (got {embeddings!r})")
    if lm_head not in LM_HEAD_FORMS:
        raise ValueError(f"lm_head must be one of {', '.join(LM_HEAD_FORMS)} (got {lm_head!r})")
    # Every width this rejects also fails the group-size check below; checked
    # first so that the message names the option that needs it.
    if embeddings == "int8" and c.hidden_size % INT8_BLOCK:
        raise ValueError(f"embeddings='int8' needs hidden_size to be a multiple of {INT8_BLOCK} "
                         f"(got {c.hidden_size})")
    # Check every linear's width up front: failing at layer 20 wastes minutes.
    widths = {c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim}
    if c.num_experts:
        widths.add(c.moe_intermediate_size)
    for width in widths:
        check_group_size(width, group_size, f"{c.name or c.architecture} linears")
    quantizer = get_quantizer(method, source, group_size, progress, **options)
    shapes = expected_tensor_shapes(c)

    d = c.hidden_size
    params = 0
    tensors = 0
    with AwqbinWriter(out_path) as writer:
        def add(name: str, array: np.ndarray, n_params: int) -> None:
            nonlocal params, tensors
            writer.add_tensor(name, array)
            params += n_params
            tensors += 1

        _add_table(add, "model.embed_tokens",
                   _get(source, "model.embed_tokens.weight", (c.vocab_size, d)), embeddings)

        for layer in tqdm(range(c.num_layers), desc="quantize", unit="layer", disable=not progress):
            p = layer_prefix(layer)
            names = layer_float_names(source, layer)
            weights = {n: _get(source, n, shapes[n]) for n in names}
            linears = [p + s for s, _ in layer_linears(c, layer)]
            quantized = quantizer.quantize_layer(layer, weights, linears)
            for n in names:
                prefix = n.rsplit(".", 1)[0]
                if n == p + expert_linear(0, "gate_proj") + ".weight":
                    # All experts, stacked expert-major, where expert 0's gate comes.
                    for proj in EXPERT_PROJECTIONS:
                        parts = [_checked_int4(p + expert_linear(e, proj), quantized,
                                               shapes[p + expert_linear(e, proj) + ".weight"],
                                               group_size) for e in range(c.num_experts)]
                        stacked = p + stacked_expert_name(proj)
                        add(stacked + ".qweight", np.stack([q for q, _, _ in parts]),
                            c.num_experts * c.hidden_size * c.moe_intermediate_size)
                        add(stacked + ".scales", np.stack([s for _, s, _ in parts]), 0)
                        add(stacked + ".zeros", np.stack([z for _, _, z in parts]), 0)
                elif ".mlp.experts." in n:
                    continue  # written with expert 0's gate
                elif n.endswith(".weight") and prefix in linears:
                    qweight, scales, zeros = _checked_int4(prefix, quantized, shapes[n], group_size)
                    add(prefix + ".qweight", qweight, weights[n].size)
                    add(prefix + ".scales", scales, 0)
                    add(prefix + ".zeros", zeros, 0)
                else:  # norms and biases stay f32
                    add(n, _to_f32(weights[n], n), weights[n].size)

        add("model.norm.weight", _to_f32(_get(source, "model.norm.weight", (d,)),
                                         "model.norm.weight"), d)
        if lm_head == "int4":
            # RTN, as the linears' default: the lm_head's input is the final
            # norm's output, whose activation statistics AWQ does not search.
            name = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
            weight = _get(source, name, (c.vocab_size, d))
            qweight, scales, zeros = quantize_int4(weight, group_size, name="lm_head.weight")
            add("lm_head.qweight", qweight, weight.size)
            add("lm_head.scales", scales, 0)
            add("lm_head.zeros", zeros, 0)
            if c.tie_word_embeddings:  # the file holds a second copy (as int4)
                params -= weight.size
        elif not c.tie_word_embeddings:
            _add_table(add, "lm_head", _get(source, "lm_head.weight", (c.vocab_size, d)),
                       embeddings)
        notes: list[str] = []
        writer.finish(build_metadata(source, method, group_size, notes,
                                     untie=lm_head == "int4"))

    return {
        "path": os.fspath(out_path),
        "method": method,
        "group_size": group_size,
        "embeddings": embeddings,
        "lm_head": lm_head,
        "tensors": tensors,
        "quantized_linears": sum(len(layer_linears(c, layer)) for layer in range(c.num_layers)),
        "file_bytes": os.path.getsize(out_path),
        "fp16_bytes": 2 * params,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "report": _with_notes(quantizer.report() if hasattr(quantizer, "report") else {}, notes),
    }


def _with_notes(report: dict, notes: list[str]) -> dict:
    if notes:
        report = {**report, "notes": [*report.get("notes", []), *notes]}
    return report

"""AutoAWQ "GEMM" checkpoints: export a .awqbin to one, import one without re-quantizing.

This is the layout AutoAWQ writes and vLLM, TGI and transformers load. For a
linear P with weight [out, in] and group size g:
  P.qweight  int32 [in, out/8]    bits 4i..4i+3 of qweight[c, j] hold q[j*8 + ORDER[i], c]
  P.qzeros   int32 [in/g, out/8]  the same packing of the zero points z[r, c/g]
  P.scales   f16   [in/g, out]    s[r, c/g]
with ORDER = [0, 2, 4, 6, 1, 3, 5, 7], and W[r, c] = (q - z) * s: the same
asymmetric integer-zero quantizer as .awqbin (docs/format.md), transposed and
packed differently, so conversion in either direction is lossless for the
int4 codes, scales and zeros. Everything else is stored in f16, int8 tables
(docs/format.md) dequantized first: that export rounds, see export_hf.

config.json is the family's own transformers config (FAMILIES: model_type,
class, the fields its decoder-layer description needs), so transformers, vLLM
and our own HF importer read the same model; Gemma's norms go back to the w of
x̂·(1 + w) that its checkpoints hold (the .awqbin stores the multiplier 1 + w).

Experts: the .awqbin's stacked experts become one AutoAWQ linear per expert, in
AutoAWQ's module names (Mixtral `block_sparse_moe.experts.N.w1/w3/w2` and router
`block_sparse_moe.gate`, Qwen3-MoE `mlp.experts.N.{gate,up,down}_proj` and
`mlp.gate`); the f32 router is stored in f16 like every float tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic_write import write_atomic
from ..awqbin import AwqbinWriter, config_from_metadata, read_awqbin
from ..quantize.int8_table import dequantize_int8_table
from ..quantize.rtn import SUPPORTED_GROUP_SIZES, dequantize_int4, pack_int4, unpack_int4
from ..source import (EXPERT_PROJECTIONS, ModelConfig, expert_linear, iter_linears,
                      layer_prefix, stacked_expert_name)

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed int32 holds column ORDER[i]


class Family(NamedTuple):
    model_type: str  # config.json's model_type
    hf_class: str  # config.json's architectures[0]
    norm_offset: float  # checkpoint norm weight = stored multiplier - norm_offset


# architecture -> how its Hugging Face checkpoints name and store it.
FAMILIES = {
    "llama": Family("llama", "LlamaForCausalLM", 0.0),
    "mistral": Family("mistral", "MistralForCausalLM", 0.0),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", 0.0),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", 0.0),
    "gemma3": Family("gemma3_text", "Gemma3ForCausalLM", 1.0),
    "mixtral": Family("mixtral", "MixtralForCausalLM", 0.0),
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeForCausalLM", 0.0),
}
# Mixtral's checkpoint names for the expert projections and the router.
_MIXTRAL_EXPERT = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def checkpoint_name(c: ModelConfig, name: str) -> str:
    """The Hugging Face / AutoAWQ name of a source-named tensor or linear prefix:
    the same, except Mixtral's experts and router (under block_sparse_moe)."""
    if c.architecture != "mixtral" or ".mlp." not in name:
        return name
    head, tail = name.split(".mlp.", 1)
    parts = tail.split(".")
    if parts[0] == "experts" and len(parts) >= 3:
        parts[2] = _MIXTRAL_EXPERT[parts[2]]
    return f"{head}.block_sparse_moe.{'.'.join(parts)}"


def _family_fields(c: ModelConfig) -> dict:
    """config.json fields beyond the shared ones: what each family's transformers
    config reads for the parts of the description it has."""
    if c.architecture == "gemma3":
        # attention_scale = query_pre_attn_scalar^-0.5; the scalar is an integer in
        # every Gemma config (256, or d / H), so round away the power's rounding.
        scalar = c.attention_scale ** -2 if c.attention_scale else c.head_dim
        if abs(scalar - round(scalar)) < 1e-6 * scalar:
            scalar = round(scalar)
        fields = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": scalar,
                  "sliding_window": c.sliding_window, "layer_types": c.layer_types,
                  "rope_local_base_freq": c.rope_local_theta,
                  "final_logit_softcapping": c.final_logit_softcap or None,
                  "attn_logit_softcapping": None}
        # Readers older than layer_types (transformers < 4.53, older vLLM) take a period.
        types = c.layer_types or []
        for period in range(1, len(types) + 1):
            if types == ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
                         for i in range(len(types))]:
                fields["sliding_window_pattern"] = period
                break
        return fields
    fields = {"hidden_act": "silu"}
    if c.architecture in ("mistral", "mixtral"):
        fields["sliding_window"] = c.sliding_window or None
    if c.architecture in ("qwen2", "qwen3", "qwen3_moe"):
        fields["use_sliding_window"] = False
    if c.architecture in ("llama", "qwen3", "qwen3_moe"):
        fields.update(attention_bias=c.attention_bias, mlp_bias=False)
    if c.architecture == "mixtral":
        fields.update(num_local_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok)
    if c.architecture == "qwen3_moe":
        layers = c.moe_layers or [1] * c.num_layers
        fields.update(num_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok,
                      moe_intermediate_size=c.moe_intermediate_size,
                      norm_topk_prob=c.norm_topk_prob, decoder_sparse_step=1,
                      mlp_only_layers=[i for i, moe in enumerate(layers) if not moe])
    return fields


def hf_config(c: ModelConfig, bos: int, eos: list[int], group_size: int) -> dict:
    """The config.json of an AutoAWQ GEMM checkpoint of the model `c` describes.
    ValueError when the family's transformers config cannot express `c` (checked by
    reading the result back with our own HF importer)."""
    from .hf_model import _config_from_json

    if c.architecture not in FAMILIES:
        raise ValueError(f"no Hugging Face family for architecture {c.architecture!r}")
    family = FAMILIES[c.architecture]
    config = {
        "architectures": [family.hf_class], "model_type": family.model_type,
        "_name_or_path": c.name, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling,
        "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
        **_family_fields(c),
        "torch_dtype": "float16",
        "bos_token_id": bos if bos >= 0 else None,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                "zero_point": True, "version": "gemm"},
    }
    back = _config_from_json(config, Path("export"))
    if dataclasses.replace(back, name=c.name) != c:
        differ = [f"{f.name} {getattr(c, f.name)!r} -> {getattr(back, f.name)!r}"
                  for f in dataclasses.fields(c)
                  if f.name != "name" and getattr(c, f.name) != getattr(back, f.name)]
        raise ValueError(f"a {family.hf_class} config.json cannot express this model: "
                         + "; ".join(differ))
    return config


def pack_gemm(codes: np.ndarray) -> np.ndarray:
    """codes u8 [rows, cols] (0..15) -> int32 [rows, cols/8] in AutoAWQ's nibble order."""
    rows, cols = codes.shape
    if cols % 8:
        raise ValueError(f"AutoAWQ packs 8 columns per int32; {cols} is not a multiple of 8")
    c = codes.astype(np.uint32).reshape(rows, cols // 8, 8)
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for i, column in enumerate(ORDER):
        packed |= c[:, :, column] << np.uint32(4 * i)
    return packed.view(np.int32)


def unpack_gemm(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_gemm: int32 [rows, n] -> u8 [rows, 8n]."""
    p = np.ascontiguousarray(packed).view(np.uint32)
    out = np.empty((p.shape[0], p.shape[1], 8), dtype=np.uint8)
    for i, column in enumerate(ORDER):
        out[:, :, column] = (p >> np.uint32(4 * i)) & 0xF
    return out.reshape(p.shape[0], -1)


def to_gemm(qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """.awqbin (qweight u8 [out, in/2], scales f16 [out, G], zeros u8 [out, G]) ->
    AutoAWQ (qweight int32 [in, out/8], qzeros int32 [G, out/8], scales f16 [G, out])."""
    return pack_gemm(unpack_int4(qweight).T), pack_gemm(zeros.T), np.ascontiguousarray(scales.T)


def from_gemm(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of to_gemm."""
    q = np.ascontiguousarray(unpack_gemm(qweight).T)  # [out, in]
    return (pack_int4(q), np.ascontiguousarray(scales.T).astype(np.float16),
            np.ascontiguousarray(unpack_gemm(qzeros).T))


def export_hf(awqbin_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Writes the AutoAWQ GEMM checkpoint of a .awqbin into out_dir (config.json,
    model.safetensors, tokenizer files); returns out_dir."""
    from safetensors.numpy import save

    f = read_awqbin(awqbin_path)
    m = f.metadata
    c = config_from_metadata(m, os.fspath(awqbin_path))
    eos = list(m["tokenizer.eos_token_ids"])
    config = hf_config(c, m["tokenizer.bos_token_id"], eos, m["quant.group_size"])
    norm_offset = FAMILIES[c.architecture].norm_offset
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in f.tensors:
        prefix, part = name.rsplit(".", 1)
        if name == "lm_head.qweight":
            # AutoAWQ checkpoints keep the lm_head in float: store the int4
            # lm_head's dequantized weights (exact in f32) in f16.
            tensors["lm_head.weight"] = dequantize_int4(
                *(f.tensor(f"lm_head.{p}") for p in ("qweight", "scales", "zeros")),
                int(m["quant.group_size"])).astype(np.float16)
        elif part == "qweight" and ".mlp.experts." in prefix:  # stacked: one linear per expert
            stacked = [f.tensor(f"{prefix}.{p}") for p in ("qweight", "scales", "zeros")]
            layer_head, proj = prefix.split(".mlp.experts.")
            for e in range(stacked[0].shape[0]):
                target = checkpoint_name(c, f"{layer_head}.{expert_linear(e, proj)}")
                qweight, qzeros, scales = to_gemm(*(t[e] for t in stacked))
                tensors.update({f"{target}.qweight": qweight, f"{target}.qzeros": qzeros,
                                f"{target}.scales": scales})
        elif part == "qweight":
            qweight, qzeros, scales = to_gemm(*(f.tensor(f"{prefix}.{p}")
                                                for p in ("qweight", "scales", "zeros")))
            tensors.update({f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros,
                            f"{prefix}.scales": scales})
        elif part == "weight_q8":
            # AutoAWQ checkpoints have no int8 tables: store W = q * s in f16.
            # This rounds: q * s has up to 7 + 11 = 18 significant bits and f16
            # keeps 11, so each weight moves by up to 2^-11 of itself (the
            # .awqbin's own readers use the exact f32 product).
            tensors[f"{prefix}.weight"] = dequantize_int8_table(
                f.tensor(name), f.tensor(f"{prefix}.weight_q8_scales")).astype(np.float16)
        elif name.endswith("norm.weight"):
            # Gemma: the checkpoint's w = (1 + w) - 1, exact in f32 for |w| >= 2^-24
            # relative to 1 (Sterbenz), then rounded to f16 like every float tensor.
            tensors[name] = (np.asarray(f.tensor(name)) - np.float32(norm_offset)
                             ).astype(np.float16)
        elif part not in ("scales", "zeros", "weight_q8_scales"):
            tensors[checkpoint_name(c, name)] = np.asarray(f.tensor(name)).astype(np.float16)
    write_atomic(out / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    write_atomic(out / "config.json", json.dumps(config, indent=2).encode())
    write_atomic(out / "tokenizer.json", m["tokenizer.json"].encode())
    write_atomic(out / "tokenizer_config.json", json.dumps(
        {"chat_template": m.get("tokenizer.chat_template", "")}, indent=2).encode())
    write_atomic(out / "generation_config.json", json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": eos}, indent=2).encode())
    return out


def _quant_group_size(cfg: dict, folder: Path) -> int:
    q = cfg.get("quantization_config")
    expected = {"quant_method": "awq", "bits": 4, "zero_point": True, "version": "gemm"}
    if not isinstance(q, dict):
        raise ValueError(f"{folder / 'config.json'}: no quantization_config; not an AutoAWQ "
                         "checkpoint (quantize an unquantized folder with `awqcore quantize`)")
    for key, value in expected.items():
        got = q.get(key)
        if (got.lower() if isinstance(got, str) else got) != value:
            raise ValueError(f"{folder / 'config.json'}: quantization_config.{key} is {got!r}; "
                             f"only {key}={value!r} (AutoAWQ GEMM) can be converted")
    if q.get("group_size") not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"{folder / 'config.json'}: group_size {q.get('group_size')!r} is not "
                         f"one of {SUPPORTED_GROUP_SIZES}")
    return int(q["group_size"])


def convert_hf(folder: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """An AutoAWQ GEMM checkpoint folder -> .awqbin, int4 codes, scales and zeros copied
    exactly. Returns {"path", "linears", "group_size"}."""
    import torch
    from safetensors import safe_open

    from . import expected_tensor_shapes
    from .hf_model import _config_from_json, _read_json, _tokenizer_info
    from ..quantize.pipeline import layer_float_names, build_metadata

    folder = Path(folder)
    cfg = _read_json(folder / "config.json")
    group_size = _quant_group_size(cfg, folder)
    config = _config_from_json(cfg, folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors files")
    where = {}
    for path in files:
        with safe_open(path, framework="pt") as sf:
            where.update({key: path for key in sf.keys()})

    norm_offset = FAMILIES[config.architecture].norm_offset

    def get(name: str) -> np.ndarray:
        if name not in where:
            raise ValueError(f"{folder}: tensor {name!r} is missing")
        with safe_open(where[name], framework="pt") as sf:
            t = sf.get_tensor(name)
        if name.endswith("norm.weight"):  # the multiplier .awqbin stores (Gemma: 1 + w, in f32)
            return (t.float() + norm_offset).numpy()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    class _Source:  # what build_metadata and layer_float_names read
        pass
    source = _Source()
    source.config, source.tokenizer = config, _tokenizer_info(folder, cfg)
    source.source = f"{folder.name} (AutoAWQ GEMM checkpoint)"
    shapes = expected_tensor_shapes(config)
    linears = dict(iter_linears(config))

    def int4(prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The linear `prefix` (source name) unpacked to the .awqbin's three tensors."""
        out_f, in_f = linears[prefix]
        stored = checkpoint_name(config, prefix)
        parts = from_gemm(get(stored + ".qweight"), get(stored + ".qzeros"),
                          get(stored + ".scales"))
        want = ((out_f, in_f // 2), (out_f, in_f // group_size), (out_f, in_f // group_size))
        for part, array, shape in zip(("qweight", "scales", "zeros"), parts, want):
            if array.shape != shape:
                raise ValueError(f"{folder}: {stored} unpacks to {part} "
                                 f"{list(array.shape)}, expected {list(shape)}")
        return parts

    with AwqbinWriter(out_path) as writer:
        writer.add_tensor("model.embed_tokens.weight",
                          get("model.embed_tokens.weight").astype(np.float16))
        for layer in range(config.num_layers):
            p = layer_prefix(layer)
            for name in layer_float_names(source, layer):
                prefix = name.rsplit(".", 1)[0]
                if prefix == p + expert_linear(0, "gate_proj"):
                    # Every expert, stacked expert-major, where expert 0's gate comes.
                    for proj in EXPERT_PROJECTIONS:
                        parts = [int4(p + expert_linear(e, proj))
                                 for e in range(config.num_experts)]
                        for i, part in enumerate(("qweight", "scales", "zeros")):
                            writer.add_tensor(f"{p}{stacked_expert_name(proj)}.{part}",
                                              np.stack([x[i] for x in parts]))
                elif ".mlp.experts." in prefix:
                    continue  # stacked with expert 0's gate
                elif name.endswith(".weight") and prefix in linears:
                    for part, array in zip(("qweight", "scales", "zeros"), int4(prefix)):
                        writer.add_tensor(f"{prefix}.{part}", array)
                else:
                    t = get(checkpoint_name(config, name)).astype(np.float32)
                    if t.shape != shapes[name]:
                        raise ValueError(f"{folder}: tensor {name!r} has shape {list(t.shape)}, "
                                         f"expected {list(shapes[name])}")
                    writer.add_tensor(name, t)
        writer.add_tensor("model.norm.weight", get("model.norm.weight").astype(np.float32))
        if not config.tie_word_embeddings:
            writer.add_tensor("lm_head.weight", get("lm_head.weight").astype(np.float16))
        writer.finish(build_metadata(source, "awq", group_size))
    return {"path": os.fspath(out_path), "linears": len(linears), "group_size": group_size}

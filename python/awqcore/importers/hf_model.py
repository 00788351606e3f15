"""Hugging Face folder importer: config.json + safetensors (single or sharded) + tokenizer.json.

Families: Llama (2 and 3.x), Mistral, Qwen2, Qwen3, Gemma 3 text, Mixtral and
Qwen3-MoE; config.json
as transformers 4 writes it (`rope_theta`, `rope_scaling`) or as transformers 5
does (`rope_parameters`). Gemma's norm weights w are returned as 1 + w, the
multiplier the file format stores.

Tensors are already in Hugging Face names and layout; each `get()` opens the
shard holding the tensor with `safe_open`, which memory-maps it, so only that
tensor is read. They are loaded through torch because numpy has no bfloat16.

Experts appear under the source names (`mlp.experts.N.gate_proj.weight`, router
`mlp.gate.weight`): Mixtral's `block_sparse_moe.experts.N.w1/w3/w2` are renamed,
and checkpoints holding the experts fused (`mlp.experts.gate_up_proj` [E, 2f, d],
gate rows first, `mlp.experts.down_proj` [E, d, f], as transformers 5 holds them
in memory) are read one expert's slice at a time.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..source import ModelConfig, TokenizerInfo
from . import check_tensor_shapes, expected_tensor_shapes
from .rope_scaling import normalize_rope_scaling

# model_type -> the causal-LM class its checkpoints name in "architectures".
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "gemma3_text": "Gemma3ForCausalLM", "mixtral": "MixtralForCausalLM",
                  "qwen3_moe": "Qwen3MoeForCausalLM"}
# Relatives that look close but compute something else, with what to use instead.
_REFUSED = {
    "gemma3": "a Gemma 3 vision-language checkpoint (Gemma3ForConditionalGeneration); only the "
              "text-only Gemma3ForCausalLM (model_type gemma3_text, e.g. gemma-3-270m or 1b) "
              "is supported",
    "gemma2": "Gemma 2 (attention logit soft-capping, a different layer pattern) is not "
              "supported; Gemma 3 text models are",
    "gemma": "Gemma 1 is not supported; Gemma 3 text models are",
}
# transformers' config defaults where config.json may omit a key; per model_type,
# since they differ (Gemma 3's head_dim is 256, Qwen3's 128; Gemma ties its embedding).
_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "mistral": dict(max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    sliding_window=4096),
    "qwen2": dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen3": dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  head_dim=128),
    "mixtral": dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    num_local_experts=8, num_experts_per_tok=2),
    "qwen3_moe": dict(max_position_embeddings=32768, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, head_dim=128, num_experts=128,
                      num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=False,
                      decoder_sparse_step=1),
    "gemma3_text": dict(max_position_embeddings=131072, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, head_dim=256, sliding_window=4096,
                        query_pre_attn_scalar=256, rope_theta=1_000_000.0,
                        rope_local_base_freq=10_000.0, sliding_window_pattern=6),
}
# Expert tensors as checkpoints name them -> the source names (awqcore.source).
_EXPERT_RE = re.compile(r"(model\.layers\.\d+\.)(?:block_sparse_moe|mlp)\.experts\.(\d+)\."
                        r"(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight")
_FUSED_RE = re.compile(r"(model\.layers\.\d+\.)(?:block_sparse_moe|mlp)\.experts\."
                       r"(gate_up_proj|down_proj)(?:\.weight)?")
_MIXTRAL_ROUTER_RE = re.compile(r"(model\.layers\.\d+\.)block_sparse_moe\.gate\.weight")
_MIXTRAL_PROJECTIONS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
# The gate activation each family's config names, and its name in the file.
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _rope(cfg: dict, layer_type: str | None, default_theta: float,
          max_positions: int, origin: str) -> tuple[float, dict | None]:
    """(base, normalised scaling) from either transformers 4's `rope_theta` + `rope_scaling`
    or transformers 5's `rope_parameters` (one dict, or one per layer type as Gemma 3 saves)."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta", default_theta))
        scaling = params
    else:
        theta = cfg.get("rope_theta", default_theta)
        scaling = cfg.get("rope_scaling")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 1:
        raise ValueError(f"{origin}: rope_theta {theta!r} must be a number > 1")
    return float(theta), normalize_rope_scaling(scaling, max_positions, origin)


def _config_from_json(cfg: dict, folder: Path) -> ModelConfig:
    origin = str(folder / "config.json")
    model_type = cfg.get("model_type")
    if model_type in _REFUSED:
        raise ValueError(f"{origin}: model_type {model_type!r} is {_REFUSED[model_type]}")
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"{origin}: unknown model_type {model_type!r} "
                         f"(supported: {', '.join(_ARCHITECTURES)})")
    expected_class = _ARCHITECTURES[model_type]
    classes = cfg.get("architectures") or [expected_class]
    if expected_class not in classes:
        raise ValueError(f"{origin}: architectures {classes} do not include "
                         f"{expected_class} (only causal language models are supported)")
    defaults = _DEFAULTS[model_type]

    def need(key: str):
        if cfg.get(key) is None:
            raise ValueError(f"{origin}: {key!r} is missing")
        return cfg[key]

    def get(key: str):
        value = cfg.get(key)
        return defaults.get(key) if value is None else value

    # These change the computation in ways the runtime does not implement;
    # refusing them beats producing a model that silently computes something else.
    if cfg.get("mlp_bias"):
        raise ValueError(f"{origin}: mlp_bias is not supported")
    if model_type != "qwen2" and cfg.get("attention_bias"):
        raise ValueError(f"{origin}: {model_type} attention_bias (which includes o_proj) "
                         "is not supported")
    activation_key = "hidden_activation" if model_type == "gemma3_text" else "hidden_act"
    act = cfg.get(activation_key) or ("gelu_pytorch_tanh" if model_type == "gemma3_text"
                                      else "silu")
    if act not in _ACTIVATIONS or (model_type == "gemma3_text") != (act == "gelu_pytorch_tanh"):
        raise ValueError(f"{origin}: {activation_key}={act!r} is not supported for {model_type}")
    for key in ("attn_logit_softcapping", "use_bidirectional_attention"):
        if cfg.get(key):
            raise ValueError(f"{origin}: {key}={cfg[key]!r} is not supported")

    d, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    layers = int(need("num_hidden_layers"))
    max_positions = int(get("max_position_embeddings"))
    fields: dict = {}
    if model_type == "gemma3_text":
        theta, scaling = _rope(cfg, "full_attention", defaults["rope_theta"], max_positions, origin)
        local_theta, local_scaling = _rope(
            {**cfg, "rope_theta": get("rope_local_base_freq"), "rope_scaling": None},
            "sliding_attention", defaults["rope_local_base_freq"], max_positions, origin)
        if local_scaling is not None:
            raise ValueError(f"{origin}: rope scaling on sliding layers is not supported")
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern")
                      or defaults["sliding_window_pattern"])
        layer_types = cfg.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(layers)]
        softcap = cfg.get("final_logit_softcapping")
        fields = dict(norm_placement="sandwich", activation="gelu_tanh", qk_norm=True,
                      attention_scale=float(get("query_pre_attn_scalar")) ** -0.5,
                      embedding_scale=math.sqrt(d), final_logit_softcap=float(softcap or 0.0),
                      sliding_window=int(get("sliding_window")), layer_types=list(layer_types),
                      rope_local_theta=local_theta)
    else:
        theta, scaling = _rope(cfg, None, 10000.0, max_positions, origin)
        if model_type in ("qwen3", "qwen3_moe"):
            fields["qk_norm"] = True
        if model_type in ("mixtral", "qwen3_moe"):
            fields.update(_expert_fields(cfg, get, layers, origin))
        if model_type in ("mistral", "mixtral"):
            # transformers' Mistral slides every layer and ignores layer_types; an explicit
            # null (Mistral 7B v0.2 and later) means no window, a missing key 4096.
            window = cfg["sliding_window"] if "sliding_window" in cfg else get("sliding_window")
            fields["sliding_window"] = int(window or 0)
        if model_type in ("qwen2", "qwen3", "qwen3_moe") and cfg.get("use_sliding_window"):
            window_layers = int(cfg.get("max_window_layers", 28))
            types = cfg.get("layer_types") or ["sliding_attention" if i >= window_layers
                                              else "full_attention" for i in range(layers)]
            if "sliding_attention" in types and cfg.get("sliding_window") is not None:
                raise ValueError(f"{origin}: use_sliding_window (sliding attention from layer "
                                 f"{types.index('sliding_attention')}) is not supported for "
                                 f"{model_type}")
    try:
        return _model_config(cfg, folder, model_type, need, get, d, heads, layers, max_positions,
                             theta, scaling, fields)
    except ValueError as e:
        raise ValueError(f"{origin}: {e}") from None


def _expert_fields(cfg: dict, get, layers: int, origin: str) -> dict:
    """The mixture-of-experts fields. Mixtral: num_local_experts experts of
    intermediate_size in every layer, always renormalized. Qwen3-MoE: num_experts (which
    transformers 5 saves as num_local_experts) of moe_intermediate_size; layer L is MoE
    unless in mlp_only_layers, and only when (L + 1) % decoder_sparse_step == 0."""
    if cfg.get("model_type") == "mixtral":
        return dict(num_experts=int(get("num_local_experts")),
                    num_experts_per_tok=int(get("num_experts_per_tok")),
                    moe_intermediate_size=int(cfg.get("intermediate_size") or 0),
                    norm_topk_prob=True)
    for key in ("shared_expert_intermediate_size", "n_shared_experts"):
        if cfg.get(key):
            raise ValueError(f"{origin}: {key}={cfg[key]!r}: shared experts are not supported")
    experts = cfg.get("num_experts", cfg.get("num_local_experts"))
    experts = int(get("num_experts") if experts is None else experts)
    step = int(get("decoder_sparse_step"))
    if step < 1:
        raise ValueError(f"{origin}: decoder_sparse_step={step} must be >= 1")
    dense = set(cfg.get("mlp_only_layers") or [])
    return dict(num_experts=experts, num_experts_per_tok=int(get("num_experts_per_tok")),
                moe_intermediate_size=int(get("moe_intermediate_size")),
                norm_topk_prob=bool(get("norm_topk_prob")),
                moe_layers=[int(i not in dense and (i + 1) % step == 0) for i in range(layers)])


def _model_config(cfg: dict, folder: Path, model_type: str, need, get, d: int, heads: int,
                  layers: int, max_positions: int, theta: float, scaling, fields: dict
                  ) -> ModelConfig:
    return ModelConfig(
        architecture="gemma3" if model_type == "gemma3_text" else model_type,
        name=cfg.get("_name_or_path") or folder.name,
        vocab_size=int(need("vocab_size")),
        hidden_size=d,
        intermediate_size=int(need("intermediate_size")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or d // heads),
        max_position_embeddings=max_positions,
        rope_theta=theta,
        rms_norm_eps=float(get("rms_norm_eps")),
        tie_word_embeddings=bool(get("tie_word_embeddings")),
        # Qwen2 always has q/k/v biases; the others' (rejected above) would include o_proj.
        attention_bias=model_type == "qwen2",
        rope_scaling=scaling,
        **fields,
    )


def _token_id(token, tokenizer: dict) -> int | None:
    """Id of a special token as tokenizer_config.json gives it (string or AddedToken dict)."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    for added in tokenizer.get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    vocab = tokenizer.get("model", {}).get("vocab")
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    return None


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _tokenizer_info(folder: Path, cfg: dict) -> TokenizerInfo:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{folder}: tokenizer.json is missing (a fast tokenizer is required)")
    text = path.read_text(encoding="utf-8")
    tokenizer = json.loads(text)
    tok_cfg = _read_json(folder / "tokenizer_config.json") \
        if (folder / "tokenizer_config.json").is_file() else {}
    gen_cfg = _read_json(folder / "generation_config.json") \
        if (folder / "generation_config.json").is_file() else {}

    # Newer checkpoints keep the template in its own file; older ones in
    # tokenizer_config.json, either as a string or as a list of named templates.
    template = tok_cfg.get("chat_template") or ""
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(template, list):
        named = {t.get("name"): t.get("template", "") for t in template}
        template = named.get("default", next(iter(named.values()), ""))

    # generation_config.json is what generate() uses, so it wins; then
    # config.json; then the token strings of tokenizer_config.json.
    bos = next((c["bos_token_id"] for c in (gen_cfg, cfg) if c.get("bos_token_id") is not None),
               _token_id(tok_cfg.get("bos_token"), tokenizer))
    eos = next((_as_id_list(c["eos_token_id"]) for c in (gen_cfg, cfg)
                if c.get("eos_token_id") is not None), None)
    if eos is None:
        eos = _as_id_list(_token_id(tok_cfg.get("eos_token"), tokenizer))
    return TokenizerInfo(json=text, chat_template=template,
                         bos_token_id=-1 if bos is None else int(bos), eos_token_ids=eos)


class HFSource:
    """A SourceModel backed by a Hugging Face checkpoint folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise ValueError(f"{self.folder}: not a Hugging Face model folder (no config.json)")
        cfg = _read_json(self.folder / "config.json")
        self.config = _config_from_json(cfg, self.folder)
        self.tokenizer = _tokenizer_info(self.folder, cfg)
        self._shards = self._tensor_files()
        self.source = f"{self.folder.name} (Hugging Face safetensors)"

        from safetensors import safe_open
        shapes = {}
        for file in sorted(set(self._shards.values())):
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if self._shards.get(name) == file:
                        shapes[name] = tuple(f.get_slice(name).get_shape())
        missing = set(self._shards) - set(shapes)
        if missing:
            raise ValueError(f"{self.folder}: the index lists tensors absent from their shard: "
                             f"{sorted(missing)[:8]}")
        # source name -> (checkpoint name, expert index or None, row range or None)
        self._parts, shapes = self._source_names(shapes)
        check_tensor_shapes(shapes, self.config, str(self.folder))

    def _source_names(self, shapes: dict[str, tuple[int, ...]]
                      ) -> tuple[dict[str, tuple], dict[str, tuple[int, ...]]]:
        """Where each source tensor lives, and the source tensors' shapes: checkpoint
        names as they are, except the experts (renamed, and fused ones split per expert)."""
        parts: dict[str, tuple] = {}
        out: dict[str, tuple[int, ...]] = {}
        moe = self.config.num_experts > 0
        for name, shape in shapes.items():
            if moe and (m := _EXPERT_RE.fullmatch(name)):
                prefix, expert, proj = m.groups()
                source = f"{prefix}mlp.experts.{expert}.{_MIXTRAL_PROJECTIONS.get(proj, proj)}.weight"
                parts[source], out[source] = (name, None, None), shape
            elif moe and (m := _MIXTRAL_ROUTER_RE.fullmatch(name)):
                source = f"{m.group(1)}mlp.gate.weight"
                parts[source], out[source] = (name, None, None), shape
            elif moe and (m := _FUSED_RE.fullmatch(name)):
                prefix, kind = m.groups()
                if len(shape) != 3 or (kind == "gate_up_proj" and shape[1] % 2):
                    raise ValueError(f"{self.folder}: fused experts {name!r} have shape "
                                     f"{list(shape)}, expected [experts, 2 x width, hidden] "
                                     "(gate_up_proj) or [experts, hidden, width] (down_proj)")
                rows = shape[1] // 2
                pieces = ((("gate_proj", (0, rows)), ("up_proj", (rows, 2 * rows)))
                          if kind == "gate_up_proj" else (("down_proj", None),))
                for e in range(shape[0]):
                    for proj, span in pieces:
                        source = f"{prefix}mlp.experts.{e}.{proj}.weight"
                        parts[source] = (name, e, span)
                        out[source] = (span[1] - span[0] if span else shape[1], shape[2])
            else:
                parts[name], out[name] = (name, None, None), shape
        return parts, out

    def _tensor_files(self) -> dict[str, Path]:
        """Tensor name -> the safetensors file holding it, for the tensors the model uses."""
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            files = {name: self.folder / file for name, file in weight_map.items()}
            for file in set(files.values()):
                if not file.is_file():
                    raise ValueError(f"{index} names {file.name}, which does not exist")
        elif single.is_file():
            from safetensors import safe_open
            with safe_open(single, framework="pt") as f:
                files = {name: single for name in f.keys()}
        else:
            raise ValueError(f"{self.folder}: no model.safetensors or model.safetensors.index.json")
        # Checkpoints may carry tensors the model does not use: rotary inv_freq
        # buffers (recomputed from rope_theta), and a copy of the embedding as
        # lm_head when tied (the format omits lm_head then).
        wanted = expected_tensor_shapes(self.config)
        return {n: f for n, f in files.items()
                if n in wanted or not (n.endswith("rotary_emb.inv_freq") or n == "lm_head.weight")}

    def tensor_names(self) -> list[str]:
        return list(self._parts)

    def get(self, name: str) -> np.ndarray:
        from safetensors import safe_open
        if name not in self._parts:
            raise KeyError(f"tensor {name!r} is not in {self.folder}")
        stored, expert, rows = self._parts[name]
        with safe_open(self._shards[stored], framework="pt") as f:
            if expert is None:
                t = f.get_tensor(stored).float()
            else:  # one expert's slice of fused experts, read without the rest
                fused = f.get_slice(stored)
                t = (fused[expert:expert + 1] if rows is None else
                     fused[expert:expert + 1, rows[0]:rows[1]])[0].float()
        if self.config.architecture == "gemma3" and name.endswith("norm.weight"):
            # Gemma's RMSNorm computes x̂ · (1 + w) in f32; the file holds that multiplier.
            t = t + 1.0
        return t.numpy()

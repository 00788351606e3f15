"""Hugging Face folder importer: config.json + safetensors (single or sharded) + tokenizer.json.

Tensors are already in Hugging Face names and layout; each `get()` opens the
shard holding the tensor with `safe_open`, which memory-maps it, so only that
tensor is read. They are loaded through torch because numpy has no bfloat16.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..source import ModelConfig, TokenizerInfo
from . import check_tensor_shapes, expected_tensor_shapes

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _config_from_json(cfg: dict, folder: Path) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"{folder / 'config.json'}: unknown model_type {model_type!r} "
                         f"(supported: {', '.join(_ARCHITECTURES)})")
    expected_class = _ARCHITECTURES[model_type]
    classes = cfg.get("architectures") or [expected_class]
    if expected_class not in classes:
        raise ValueError(f"{folder / 'config.json'}: architectures {classes} do not include "
                         f"{expected_class} (only causal language models are supported)")
    # These change the computation in ways the runtime does not implement;
    # refusing them beats producing a model that silently computes something else.
    if cfg.get("rope_scaling"):
        raise ValueError(f"{folder}: rope_scaling {cfg['rope_scaling']} is not supported")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{folder}: mlp_bias is not supported")
    if model_type == "llama" and cfg.get("attention_bias"):
        raise ValueError(f"{folder}: llama attention_bias (which includes o_proj) is not supported")

    def need(key: str):
        if key not in cfg:
            raise ValueError(f"{folder / 'config.json'}: {key!r} is missing")
        return cfg[key]

    d, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    return ModelConfig(
        architecture=model_type,
        name=cfg.get("_name_or_path") or folder.name,
        vocab_size=int(need("vocab_size")),
        hidden_size=d,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or d // heads),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        # transformers' LlamaConfig and Qwen2Config both default to untied.
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama's (rejected above) would include o_proj.
        attention_bias=model_type == "qwen2",
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
        check_tensor_shapes(shapes, self.config, str(self.folder))

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
        return list(self._shards)

    def get(self, name: str) -> np.ndarray:
        from safetensors import safe_open
        if name not in self._shards:
            raise KeyError(f"tensor {name!r} is not in {self.folder}")
        with safe_open(self._shards[name], framework="pt") as f:
            t = f.get_tensor(name)
        return t.float().numpy()

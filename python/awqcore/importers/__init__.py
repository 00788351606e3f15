"""Importers: turn a built-in name, a `.gguf` file or a Hugging Face folder into a SourceModel.

The importer submodules are imported inside `load_source`, not here, so that
`import awqcore.importers` needs neither gguf, safetensors nor torch: each
optional dependency is only required by the importer that uses it.
"""
from __future__ import annotations

from pathlib import Path

from ..source import ROUTER_NAME, ModelConfig, SourceModel, layer_linears, layer_prefix


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of this config must provide, by Hugging Face name, with its shape.

    Importers check their files against this at construction so that a missing
    or misshapen tensor is reported by name before any quantization starts.
    """
    d, vocab = config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for layer in range(config.num_layers):
        p = layer_prefix(layer)
        for norm in config.layer_norm_names():
            # q_norm and k_norm act on one head at a time.
            per_head = norm.startswith("self_attn.")
            shapes[f"{p}{norm}.weight"] = (config.head_dim,) if per_head else (d,)
        linears = dict(layer_linears(config, layer))
        for suffix, shape in linears.items():
            shapes[f"{p}{suffix}.weight"] = shape
        if config.is_moe_layer(layer):  # the router, one row per expert
            shapes[f"{p}{ROUTER_NAME}.weight"] = (config.num_experts, d)
        if config.attention_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                shapes[f"{p}self_attn.{proj}.bias"] = (linears[f"self_attn.{proj}"][0],)
    shapes["model.norm.weight"] = (d,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


def check_tensor_shapes(found: dict[str, tuple[int, ...]], config: ModelConfig,
                        origin: str) -> None:
    """Raise ValueError naming each missing, unexpected or misshapen tensor of `found`."""
    expected = expected_tensor_shapes(config)
    problems = [f"missing tensor {n!r}" for n in expected if n not in found]
    problems += [f"unexpected tensor {n!r}" for n in found if n not in expected]
    problems += [f"tensor {n!r} has shape {list(found[n])}, expected {list(s)}"
                 for n, s in expected.items() if n in found and tuple(found[n]) != s]
    if problems:
        shown = "; ".join(problems[:8])
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(f"{origin}: {shown}{more}")


def load_source(name_or_path: str) -> SourceModel:
    """A built-in model name, a `.gguf` file, a Hugging Face folder (with config.json),
    or a random model "synthetic:..." (synthetic.source_from_spec)."""
    from . import registry

    if name_or_path.startswith("synthetic:"):
        from .synthetic import source_from_spec
        return source_from_spec(name_or_path)
    if name_or_path in registry.BUILTIN_MODELS:
        return registry.load_builtin(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from .gguf_model import GGUFSource
        return GGUFSource(path)
    if path.is_dir() and (path / "config.json").is_file():
        from .hf_model import HFSource
        return HFSource(path)
    raise ValueError(
        f"cannot load {name_or_path!r}: expected a built-in model name "
        f"({', '.join(registry.BUILTIN_MODELS)}), a path to a .gguf file, "
        f"a Hugging Face folder containing config.json, or synthetic:<spec>")

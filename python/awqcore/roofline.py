"""Bytes a decode step reads, for the bench's roofline: decode is memory-bound,
so its speed limit is the machine's read bandwidth divided by these bytes.

Per decoded token (batch 1), counted from the file's tensor directory:
- every int4 linear once (qweight + scales + zeros + bias), by op;
- one row of the embedding table (its bytes / vocab), the whole lm_head
  (the embedding table itself when tied, an int8/f16 table or an int4 linear);
- the norms;
- MoE layers (model.num_experts E, model.num_experts_per_tok k in the
  metadata; absent: dense): the router and k/E of the stacked experts, the
  expected share a token's k experts read;
- the KV cache at the current position: every cached token's k and v rows of
  every layer, 2 * KV * hd elements per layer (f16 with the default int8
  decode activations, f32 with activations="f32"); a sliding layer reads at
  most `sliding_window` of them.
A batch of B sequences reads the weights once per step and each sequence's
cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Decode-step ops that read weights, as the op profile names them (op_profile.h).
LINEAR_OPS = {"self_attn.q_proj": "q/k/v", "self_attn.k_proj": "q/k/v",
              "self_attn.v_proj": "q/k/v", "self_attn.o_proj": "o", "mlp.gate_proj": "gate/up+act",
              "mlp.up_proj": "gate/up+act", "mlp.down_proj": "down",
              "mlp.experts.gate_proj": "router+experts", "mlp.experts.up_proj": "router+experts",
              "mlp.experts.down_proj": "router+experts", "mlp.gate": "router+experts"}


@dataclass
class DecodeBytes:
    weights: int                   # weight bytes one decode step reads
    model: int                     # all tensor bytes of the file
    by_op: dict[str, int]          # weights split by op (embedding, norms, q/k/v, ..., lm_head)
    kv_layers: int                 # layers whose cache a token reads in full
    sliding_layers: int            # layers reading at most `window` cached tokens
    window: int                    # sliding_window (0: none)
    kv_row_bytes: int = 0          # one cached token of one layer: 2 * KV * hd * element size
    notes: list[str] = field(default_factory=list)

    def kv(self, position: float) -> float:
        """Cache bytes one token reads when `position` tokens precede it (itself
        included in what attention reads)."""
        keys = position + 1
        sliding = min(keys, self.window) if self.window else keys
        return self.kv_row_bytes * (self.kv_layers * keys + self.sliding_layers * sliding)

    def per_step(self, position: float, batch: int = 1) -> float:
        return self.weights + batch * self.kv(position)


def _op_of(name: str) -> str:
    if name.startswith("model.embed_tokens."):
        return "embedding"
    if name.startswith("lm_head."):
        return "lm_head"
    if name.endswith("norm.weight"):
        return "norms"
    for linear, op in LINEAR_OPS.items():
        if f".{linear}." in name:
            return op
    return "other"


def decode_bytes(path: str, activations: str = "int8") -> DecodeBytes:
    from .awqbin import read_awqbin

    f = read_awqbin(path)
    m = f.metadata
    vocab = int(m["model.vocab_size"])
    layers = int(m["model.num_layers"])
    experts = int(m.get("model.num_experts", 0) or 0)
    active = int(m.get("model.num_experts_per_tok", 0) or 0)
    tied = int(m.get("model.tie_word_embeddings", 0)) == 1
    has_lm_head = any(n.startswith("lm_head.") for n in f.tensors)
    by_op: dict[str, float] = {}
    for name, entry in f.tensors.items():
        op = _op_of(name)
        nbytes: float = entry.nbytes
        if op == "embedding":
            if tied and not has_lm_head:  # the table is the lm_head too: read whole
                by_op["lm_head"] = by_op.get("lm_head", 0) + nbytes
            nbytes /= vocab  # the gather reads one row
        elif ".mlp.experts." in name and experts > 0:
            nbytes *= active / experts
        by_op[op] = by_op.get(op, 0) + nbytes
    window = int(m.get("model.sliding_window", 0) or 0)
    types = m.get("model.layer_types")
    sliding = (sum(1 for t in types if t == 1) if types is not None else layers) if window else 0
    element = 2 if activations == "int8" else 4
    row = 2 * int(m["model.num_kv_heads"]) * int(m["model.head_dim"]) * element
    counted = {op: int(round(b)) for op, b in by_op.items()}
    return DecodeBytes(weights=sum(counted.values()), model=sum(e.nbytes for e in f.tensors.values()),
                       by_op=counted, kv_layers=layers - sliding, sliding_layers=sliding,
                       window=window, kv_row_bytes=row)


def gguf_decode_bytes(path: str) -> Optional[DecodeBytes]:
    """The same count for a llama.cpp GGUF (its own quantization types), f16
    cache: every tensor once but token_embd one row (or whole when there is no
    output.weight: tied). None when the gguf package is missing."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(path)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")

    def field_int(key: str, default: int = 0) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        return int(f.parts[-1][0]) if f is not None else default

    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    embd = tensors.get("token_embd.weight", 0)
    vocab = next((int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight"), 1)
    weights = sum(tensors.values()) - embd + embd // max(vocab, 1)
    if "output.weight" not in tensors:
        weights += embd
    layers = field_int("block_count")
    heads = field_int("attention.head_count")
    kv_heads = field_int("attention.head_count_kv", heads)
    head_dim = field_int("attention.key_length") or field_int("embedding_length") // max(heads, 1)
    window = field_int("attention.sliding_window")
    return DecodeBytes(weights=weights, model=sum(tensors.values()), by_op={}, kv_layers=layers,
                       sliding_layers=0, window=window, kv_row_bytes=2 * kv_heads * head_dim * 2)

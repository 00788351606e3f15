"""The bench's count of the bytes a decode step reads (awqcore.roofline),
against the same count done by hand from the model's shapes (not from the
file's tensor directory that roofline.py sums)."""
from __future__ import annotations

import numpy as np
import pytest

from awqcore.awqbin import AwqbinWriter
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.quantize import quantize_model
from awqcore.roofline import decode_bytes

G = 32


def int4_bytes(out: int, inp: int) -> int:
    return out * inp // 2 + out * (inp // G) * 3  # codes, f16 scales, u8 zeros


@pytest.mark.parametrize("arch, embeddings, lm_head", [("llama", "f16", "table"),
                                                         ("qwen2", "int8", "table"),
                                                         ("qwen2", "int8", "int4")])
def test_decode_bytes_match_the_shapes(tmp_path, arch, embeddings, lm_head):
    c = tiny_config(arch)
    path = tmp_path / "m.awqbin"
    quantize_model(SyntheticSource(c), path, method="rtn", group_size=G, progress=False,
                   embeddings=embeddings, lm_head=lm_head)
    d, ffn, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, \
        c.num_kv_heads * c.head_dim
    table = c.vocab_size * d * 2 if embeddings == "f16" else c.vocab_size * (d + d // 32 * 2)
    layer = (int4_bytes(q, d) + 2 * int4_bytes(kv, d) + int4_bytes(d, q) + 2 * int4_bytes(ffn, d)
             + int4_bytes(d, ffn) + 4 * d * 2 + (4 * (q + 2 * kv) if c.attention_bias else 0))
    head = int4_bytes(c.vocab_size, d) if lm_head == "int4" else table
    expected = c.num_layers * layer + 4 * d + table // c.vocab_size + head
    count = decode_bytes(str(path))
    assert count.weights == expected
    # The runtime's own count (Model::active_bytes_per_token) agrees.
    import awqcore
    assert awqcore.Model(str(path), max_seq_len=8).config["active_bytes_per_token"] == expected
    assert count.by_op["lm_head"] == head
    # f16 cache: k and v rows of KV * hd halves per layer and cached token.
    assert count.kv(9) == 10 * c.num_layers * 2 * kv * 2
    assert decode_bytes(str(path), "f32").kv(9) == 2 * count.kv(9)
    assert count.per_step(9, batch=3) == expected + 3 * count.kv(9)


def test_moe_layers_count_k_of_e_experts(tmp_path):
    """A file with stacked experts (the MoE layout of docs/format.md): the
    experts count k/E, the router in full; without the MoE keys, all of them."""
    E, k, f, d = 8, 2, 64, 32
    path = tmp_path / "moe.awqbin"
    expert_bytes = E * int4_bytes(f, d)
    with AwqbinWriter(path) as w:
        w.add_tensor("model.embed_tokens.weight", np.zeros((100, d), np.float16))
        w.add_tensor("model.layers.0.mlp.gate.weight", np.zeros((E, d), np.float32))
        w.add_tensor("model.layers.0.mlp.experts.up_proj.qweight", np.zeros((E, f, d // 2), np.uint8))
        w.add_tensor("model.layers.0.mlp.experts.up_proj.scales", np.zeros((E, f, d // G), np.float16))
        w.add_tensor("model.layers.0.mlp.experts.up_proj.zeros", np.zeros((E, f, d // G), np.uint8))
        w.finish({"model.vocab_size": 100, "model.num_layers": 1, "model.num_kv_heads": 1,
                  "model.head_dim": 8, "model.tie_word_embeddings": 1,
                  "model.num_experts": E, "model.num_experts_per_tok": k})
    count = decode_bytes(str(path))
    assert count.by_op["router+experts"] == expert_bytes * k // E + E * d * 4
    assert count.weights == expert_bytes * k // E + E * d * 4 + 100 * d * 2 + d * 2

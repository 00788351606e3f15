"""The C++ runtime's mixture-of-experts side through the bindings, on a tiny
random .awqbin written here with AwqbinWriter from docs/format.md's MoE
tensors (independent of the importers): the config's MoE fields, the active
bytes a decode token reads (computed here from the file's tensor sizes),
and batched generation equal to one by one. The comparison with the torch
reference on tiny Mixtral / Qwen3-MoE checkpoints lives with the importers'
tests, the CUDA device's against the CPU in tests/test_cuda.py."""
from __future__ import annotations

import numpy as np
import pytest

import awqcore
from awqcore.awqbin import AwqbinWriter, read_awqbin

D, LAYERS, HEADS, KV, HD, VOCAB, G = 64, 2, 4, 2, 16, 300, 32
EXPERTS, TOP_K, EXPERT_FFN, DENSE_FFN = 6, 2, 64, 128


def _linear(w: AwqbinWriter, rng, prefix: str, out: int, inp: int, experts: int = 0) -> None:
    lead = (experts,) if experts else ()
    w.add_tensor(prefix + ".qweight", rng.integers(0, 256, lead + (out, inp // 2), dtype=np.uint8))
    w.add_tensor(prefix + ".scales", rng.uniform(0.01, 0.04, lead + (out, inp // G)).astype(np.float16))
    w.add_tensor(prefix + ".zeros", rng.integers(0, 16, lead + (out, inp // G), dtype=np.uint8))


def write_tiny_moe(path, arch: str) -> None:
    """mixtral: every layer MoE; qwen3_moe: layer 0 dense (mlp_only_layers), q/k norms."""
    rng = np.random.default_rng(3)
    qwen = arch == "qwen3_moe"
    moe_layers = [0, 1] if qwen else [1, 1]
    meta = {"general.architecture": arch, "general.name": f"tiny-{arch}", "model.vocab_size": VOCAB,
            "model.hidden_size": D, "model.intermediate_size": DENSE_FFN, "model.num_layers": LAYERS,
            "model.num_heads": HEADS, "model.num_kv_heads": KV, "model.head_dim": HD,
            "model.max_position_embeddings": 256, "model.rope_theta": 10000.0,
            "model.rms_norm_eps": 1e-5, "model.tie_word_embeddings": 0, "model.attention_bias": 0,
            "model.num_experts": EXPERTS, "model.num_experts_per_tok": TOP_K,
            "model.moe_intermediate_size": EXPERT_FFN, "model.norm_topk_prob": 1,
            "model.moe_layers": moe_layers, "quant.method": "rtn", "quant.bits": 4,
            "quant.group_size": G, "quant.zero_point": 1, "tokenizer.bos_token_id": 1,
            "tokenizer.eos_token_ids": [2]}
    if qwen:
        meta["model.qk_norm"] = 1
    with AwqbinWriter(path) as w:
        w.add_tensor("model.embed_tokens.weight", rng.uniform(-1, 1, (VOCAB, D)).astype(np.float16))
        for layer in range(LAYERS):
            p = f"model.layers.{layer}."
            w.add_tensor(p + "input_layernorm.weight", rng.uniform(0.8, 1.2, D).astype(np.float32))
            _linear(w, rng, p + "self_attn.q_proj", HEADS * HD, D)
            _linear(w, rng, p + "self_attn.k_proj", KV * HD, D)
            _linear(w, rng, p + "self_attn.v_proj", KV * HD, D)
            if qwen:
                w.add_tensor(p + "self_attn.q_norm.weight", np.ones(HD, np.float32))
                w.add_tensor(p + "self_attn.k_norm.weight", np.ones(HD, np.float32))
            _linear(w, rng, p + "self_attn.o_proj", D, HEADS * HD)
            w.add_tensor(p + "post_attention_layernorm.weight", rng.uniform(0.8, 1.2, D).astype(np.float32))
            if moe_layers[layer]:
                w.add_tensor(p + "mlp.gate.weight", rng.uniform(-0.5, 0.5, (EXPERTS, D)).astype(np.float32))
                _linear(w, rng, p + "mlp.experts.gate_proj", EXPERT_FFN, D, EXPERTS)
                _linear(w, rng, p + "mlp.experts.up_proj", EXPERT_FFN, D, EXPERTS)
                _linear(w, rng, p + "mlp.experts.down_proj", D, EXPERT_FFN, EXPERTS)
            else:
                _linear(w, rng, p + "mlp.gate_proj", DENSE_FFN, D)
                _linear(w, rng, p + "mlp.up_proj", DENSE_FFN, D)
                _linear(w, rng, p + "mlp.down_proj", D, DENSE_FFN)
        w.add_tensor("model.norm.weight", np.ones(D, np.float32))
        w.add_tensor("lm_head.weight", rng.uniform(-0.3, 0.3, (VOCAB, D)).astype(np.float16))
        w.finish(meta)


@pytest.fixture(scope="module", params=["mixtral", "qwen3_moe"])
def tiny_moe(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("moe") / f"tiny-{request.param}.awqbin"
    write_tiny_moe(path, request.param)
    return request.param, path


def test_config_reports_experts_and_active_bytes(tiny_moe):
    arch, path = tiny_moe
    c = awqcore.Model(path, threads=1).config
    assert (c["architecture"], c["num_experts"], c["num_experts_per_tok"]) == (arch, EXPERTS, TOP_K)
    assert c["moe_intermediate_size"] == EXPERT_FFN and c["norm_topk_prob"] is True
    assert c["moe_layers"] == ([0, 1] if arch == "qwen3_moe" else [1, 1])
    # A decode token reads each tensor once, but k of E experts and one row of
    # the embedding table (untied: the lm_head is its own table).
    tensors = read_awqbin(path).tensors
    want = sum(e.nbytes * (TOP_K / EXPERTS if ".experts." in name else
                           1 / VOCAB if name.startswith("model.embed_tokens") else 1)
               for name, e in tensors.items())
    assert c["active_bytes_per_token"] == round(want)
    assert c["active_bytes_per_token"] < c["weight_bytes"]


def test_batch_generates_as_one_by_one(tiny_moe):
    _, path = tiny_moe
    model = awqcore.Model(path, threads=2, max_seq_len=32, max_batch=3)
    prompts = [[5, 17, 42], [7], [9, 11, 13, 15, 17, 19, 21, 23, 25, 27]]
    batch = model.generate(prompts, max_new_tokens=8, stop=[])
    alone = [model.generate(p, max_new_tokens=8, stop=[]) for p in prompts]
    assert batch == alone
    # Random routers spread the tokens: not one repeated token.
    assert any(len(set(out)) > 2 for out in alone)

"""The torch reference model against a literal per-token, per-head implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.reference import ReferenceModel

TOLERANCE = 1e-5


def literal_forward(config, get, ids: list[int], interleaved_rotary: bool = False) -> np.ndarray:
    """Logits [T, vocab] in float64, one token and one head at a time, keys and values
    appended as each token is processed. `interleaved_rotary` rotates pairs (2i, 2i+1)
    instead of (i, i + hd/2): the wrong convention, to show the comparison can fail."""
    c = config
    H, KV, hd, half = c.num_heads, c.num_kv_heads, c.head_dim, c.head_dim // 2

    def w(name: str) -> np.ndarray:
        return np.asarray(get(name), dtype=np.float64)

    def rms_norm(v: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return v / math.sqrt(float(np.mean(v * v)) + c.rms_norm_eps) * weight

    def rotate(v: np.ndarray, position: int) -> np.ndarray:  # v [hd]
        out = v.copy()
        for i in range(half):
            angle = position * c.rope_theta ** (-2 * i / hd)
            a, b = (2 * i, 2 * i + 1) if interleaved_rotary else (i, i + half)
            out[a] = v[a] * math.cos(angle) - v[b] * math.sin(angle)
            out[b] = v[b] * math.cos(angle) + v[a] * math.sin(angle)
        return out

    embed = w("model.embed_tokens.weight")
    xs = [embed[t].copy() for t in ids]  # each [d]
    for layer in range(c.num_layers):
        p = f"model.layers.{layer}."
        wq, wk, wv = (w(p + f"self_attn.{n}_proj.weight") for n in "qkv")
        bq, bk, bv = ((w(p + f"self_attn.{n}_proj.bias") for n in "qkv") if c.attention_bias
                      else (0.0, 0.0, 0.0))
        keys, values = [], []  # per position: [KV][hd]
        for t in range(len(ids)):
            h = rms_norm(xs[t], w(p + "input_layernorm.weight"))
            q, k, v = wq @ h + bq, wk @ h + bk, wv @ h + bv
            keys.append([rotate(k[g * hd:(g + 1) * hd], t) for g in range(KV)])
            values.append([v[g * hd:(g + 1) * hd] for g in range(KV)])
            heads = []
            for head in range(H):
                g = head // (H // KV)  # the key/value head this query head shares
                qh = rotate(q[head * hd:(head + 1) * hd], t)
                scores = [float(qh @ keys[s][g]) / math.sqrt(hd) for s in range(t + 1)]
                top = max(scores)
                weights = [math.exp(x - top) for x in scores]
                total = sum(weights)
                heads.append(sum(wt / total * values[s][g] for s, wt in enumerate(weights)))
            x = xs[t] + w(p + "self_attn.o_proj.weight") @ np.concatenate(heads)
            h = rms_norm(x, w(p + "post_attention_layernorm.weight"))
            gate = w(p + "mlp.gate_proj.weight") @ h
            silu = gate / (1.0 + np.exp(-gate))
            xs[t] = x + w(p + "mlp.down_proj.weight") @ (silu * (w(p + "mlp.up_proj.weight") @ h))
    head = embed if c.tie_word_embeddings else w("lm_head.weight")
    return np.stack([head @ rms_norm(x, w("model.norm.weight")) for x in xs])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_forward_matches_literal_loop(arch):
    source = SyntheticSource(tiny_config(arch), seed=11)
    get = source.get  # variance-1/in weights: attention far from uniform (synthetic.py)
    ids = np.random.default_rng(1).integers(0, source.config.vocab_size, size=12).tolist()
    ours = ReferenceModel(source.config, get).forward(ids)
    assert ours.dtype == torch.float32 and ours.shape == (12, source.config.vocab_size)
    literal = literal_forward(source.config, get, ids)
    error = float(np.abs(ours.numpy() - literal).max())
    assert error < TOLERANCE, error
    # The same comparison against the wrong rotary convention fails by a wide margin.
    wrong = literal_forward(source.config, get, ids, interleaved_rotary=True)
    assert float(np.abs(ours.numpy() - wrong).max()) > 100 * TOLERANCE


def test_forward_is_causal():
    source = SyntheticSource(tiny_config("qwen2"), seed=4)
    model = ReferenceModel(source.config, source.get)
    rng = np.random.default_rng(2)
    prefix = rng.integers(0, 300, size=6).tolist()
    a = model.forward(prefix + rng.integers(0, 300, size=5).tolist())
    b = model.forward(prefix + rng.integers(0, 300, size=5).tolist())
    torch.testing.assert_close(a[:6], b[:6], rtol=0, atol=1e-6)
    assert float((a[6:] - b[6:]).abs().max()) > 1e-3  # later positions do see their tokens


def test_greedy_generate_takes_the_argmax_of_each_prefix():
    source = SyntheticSource(tiny_config("llama"), seed=9)
    model = ReferenceModel(source.config, source.get)
    prompt = [10, 20, 30]
    new = model.greedy_generate(prompt, 5)
    assert len(new) == 5
    for i, token in enumerate(new):
        assert token == int(model.forward(prompt + new[:i])[-1].argmax())


def test_forward_rejects_bad_ids():
    source = SyntheticSource(tiny_config("llama"))
    model = ReferenceModel(source.config, source.get)
    with pytest.raises(ValueError, match="token ids must be in"):
        model.forward([1, source.config.vocab_size])
    with pytest.raises(ValueError, match="at least one token"):
        model.forward([])

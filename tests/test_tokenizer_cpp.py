"""The C++ tokenizer (awqcore._core.Tokenizer, cpp/src/tokenizer/) must give the
ids and text that the `tokenizers` library gives for the same tokenizer.json.

One vocabulary per pipeline we ship, each run through `tokenizers` (the
independent reference: Rust, Oniguruma regexes) and through the C++ code:
- SmolLM2's real one (GPT-2 split after single digits), as the GGUF importer
  rebuilds it;
- the same vocabulary under Qwen2's pipeline (NFC, Qwen2 regex; the regex text
  taken from transformers, not retyped) and under Llama 3's (its regex from
  transformers' TikTokenConverter, ignore_merges, a BOS template);
- a GPT-2 ByteLevel with add_prefix_space;
- a trained SentencePiece-style vocabulary with byte fallback as the importer
  writes Llama-2/Mistral (space prefix) and Gemma 3 (none), plus the Hugging
  Face spelling of Llama-2 (Metaspace pre-tokenizer and decoder, unk, fuse_unk);
- Gemma 3's real 262k vocabulary and Qwen2.5-Coder's (slow, when installed).
"""
from __future__ import annotations

import copy
import inspect
import json
import random
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer

from awqcore import _core
from awqcore.errors import FormatError
from awqcore.importers import registry
from awqcore.importers.gguf_tokenizer import tokenizer_from_gguf
from test_tokenizer_spm import synthetic_vocab, write_spm_gguf

REPO = Path(__file__).resolve().parent.parent

TEXTS = [
    "", " ", "  ", "\n", "a", "Hello world", " Hello", "The capital of France is Paris.",
    # whitespace runs: spaces, tabs, newlines, CRLF, mixed, trailing, NBSP and others
    "a  b   c    d", "x\t\ty\t \tz", "one\n\ntwo\n\n\nthree", "crlf\r\nline\r\n\r\nend\r\n",
    "   leading and trailing   ", " \n \n  \t\n x", "\u00a0nbsp\u2003em\u3000ideo\u2028ls\u2029ps",
    "\x1c\x1d\x1e\x1f separators \x0b\x0c vt ff \x85 nel",
    # contractions and case
    "don't I'll we've they're she'd it's DON'T I'LL WE'VE 'S 'T", "'sx ' s ''s \u017fs '\u017f",
    # digit runs (ASCII and other scripts' numbers)
    "1 12 123 1234 12345 1234567890 3.14159 -42 1e-9 $1,000,000.00 50%",
    "\u0661\u0662\u0663\u0664 \u0967\u0968\u0969 \u2460\u2461 \u00bd\u00b2 \u2167 \uff11\uff12\uff13",
    # punctuation runs with trailing newlines
    "Wait... what?!?!\n(really) [yes] {no} <html> --- *** ;;;\n\n\"quoted\" 'single'",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)\n\n\n",
    "for (int i = 0; i < n; ++i) {\n  x[i] += y[i] * 2;  // c++\n}\r\n",
    # scripts: CJK, Korean, Arabic, Hebrew, Devanagari, Thai, Greek, Cyrillic
    "中文测试：你好，世界！日本語のテキスト、カタカナ。한국어 텍스트",
    "العربية: مرحبا بالعالم، كيف حالك؟ ١٢٣ שלום עולם नमस्ते दुनिया สวัสดีชาวโลก",
    "Ελληνικά Русский текст Café naïve résumé façade Ångström Zürich São Paulo",
    # combining marks, decomposed forms (NFC composes them), Hangul jamo
    "e\u0301 a\u0308 o\u0302\u0323 \u0041\u030a \u1100\u1161\u11a8 \u0915\u093f \u05d1\u05bc",
    "q\u0307\u0323 \u1e0b\u0323 \u212b \u2126 \u00c5 \u0344 \u0f73",
    # emoji: modifiers, flags, ZWJ sequences, keycaps, variation selectors
    "😀👍🏽🇫🇷 ❤️ 🤖 👨‍👩‍👧‍👦 🏳️‍🌈 1️⃣ 👩🏾‍💻",
    # odd characters: controls, private use, noncharacters, BOM, replacement
    "ctl \x00\x01\x07\x7f end \ue000\uf8ff \ufeffbom \ufffd repl \U0001f9ff \U000e0041",
    "aaaaaaaa bbbbbbb ---------- ========= .......... !!!!!!!!!! ??",
    "\u2581lower eighth\u2581\u2581 block \u2581",
]

INVALID_UTF8 = [
    b"\xff", b"abc\x80def", b"\xc3", b"\xc3(", b"\xe4\xb8", b"\xe4\xb8x\xad", b"\xed\xa0\x80 surrogate",
    b"\xf0\x9f\x98", b"\xf4\x90\x80\x80 above max", b"\xc0\xaf overlong", b"ok \xe2\x82\xac \xfe\xfe end",
]


def python_code() -> list[str]:
    return [p.read_text() for p in sorted((REPO / "python/awqcore").glob("*.py"))[:6]]


def wiki_sample(count: int) -> list[str]:
    try:
        from awqcore.data import wiki_texts
        return wiki_texts("evaluation")[:count]
    except (ImportError, FileNotFoundError):
        return []


def random_texts(count: int, seed: int) -> list[str]:
    """Random strings over characters from every class the split patterns
    distinguish, so that rare boundaries (a letter after a tab, digits after a
    space, newlines after punctuation) occur often."""
    alphabet = list("aZ é中😀1٣ \t\n\r'sSlLdD.,!?-_()\u0301\u00a0\u2581") + ["'ll", "  ", "\r\n"]
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))) for _ in range(count)]


# --- the vocabularies ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_json() -> str:
    from awqcore.importers.registry import smollm2_gguf_path
    return tokenizer_from_gguf(gguf.GGUFReader(str(smollm2_gguf_path()))).json


def with_digit_merges(doc: dict) -> dict:
    """SmolLM2's vocabulary has no multi-digit tokens, so how a pattern groups
    digits (Qwen2 one by one, Llama 3 up to three) would not show in its ids:
    add some, merged last."""
    vocab, merges = doc["model"]["vocab"], doc["model"]["merges"]
    for left, right in (("1", "2"), ("12", "3"), ("123", "4"), ("4", "5"), ("45", "6"),
                        ("2", "3"), ("3", "4"), ("Ġ", "1")):
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
        merges.append([left, right])
    return doc


def qwen2_doc(base: dict) -> dict:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    doc = with_digit_merges(copy.deepcopy(base))
    doc["normalizer"] = {"type": "NFC"}
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    return doc


def llama3_doc(base: dict) -> dict:
    from transformers.convert_slow_tokenizer import TikTokenConverter
    pattern = inspect.signature(TikTokenConverter.__init__).parameters["pattern"].default
    doc = with_digit_merges(copy.deepcopy(base))
    doc["model"]["ignore_merges"] = True
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    doc["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                             "tokens": ["<|im_start|>"]}}}]}
    return doc


def gpt2_prefix_doc(base: dict) -> dict:
    doc = copy.deepcopy(base)
    doc["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                            "use_regex": True}
    return doc


@pytest.fixture(scope="module")
def spm_jsons(tmp_path_factory) -> dict[str, str]:
    tokens, scores, types = synthetic_vocab()
    out = {}
    for prefix in (True, False):
        path = write_spm_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", tokens, scores, types,
                              bos_token_id=1, eos_token_id=2, add_space_prefix=prefix)
        out["spm-llama2" if prefix else "spm-gemma"] = tokenizer_from_gguf(gguf.GGUFReader(path)).json
    # Hugging Face's spelling of a Llama-2 tokenizer: Metaspace instead of the
    # normalizers, an unknown token (fused) where byte fallback cannot help.
    doc = json.loads(out["spm-llama2"])
    doc["normalizer"] = None
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                            "split": False}
    doc["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                      "split": False}
    doc["model"].update(unk_token="<unk>", fuse_unk=True)
    out["spm-metaspace"] = json.dumps(doc)
    doc["pre_tokenizer"]["split"] = True
    doc["pre_tokenizer"]["prepend_scheme"] = "always"
    doc["model"]["byte_fallback"] = False  # unknown characters become (fused) <unk>
    out["spm-metaspace-split-unk"] = json.dumps(doc)
    return out


# The fuzzer's seeds (cpp/fuzz/tokenizer_corpus): a seed the C++ tokenizer
# rejected or read differently would start the fuzzer from the wrong place.
FUZZ_SEEDS = Path(__file__).resolve().parents[1] / "cpp" / "fuzz" / "tokenizer_corpus"

VOCABS = ["smollm2", "qwen2", "llama3", "gpt2-prefix", "spm-llama2", "spm-gemma", "spm-metaspace",
          "spm-metaspace-split-unk", "fuzz-seed-bytelevel_bpe", "fuzz-seed-spm_bytefallback"]


@pytest.fixture(scope="module")
def vocab_jsons(smollm2_json, spm_jsons) -> dict[str, str]:
    base = json.loads(smollm2_json)
    return {"smollm2": smollm2_json, "qwen2": json.dumps(qwen2_doc(base)),
            "llama3": json.dumps(llama3_doc(base)), "gpt2-prefix": json.dumps(gpt2_prefix_doc(base)),
            **spm_jsons,
            **{f"fuzz-seed-{path.stem}": path.read_text() for path in FUZZ_SEEDS.glob("*.json")}}


@pytest.fixture(scope="module", params=VOCABS)
def pair(request, vocab_jsons):
    """(name, C++ tokenizer, `tokenizers` tokenizer) of one vocabulary."""
    text = vocab_jsons[request.param]
    return request.param, _core.Tokenizer.from_json(text), Tokenizer.from_str(text)


# --- parity checks ---------------------------------------------------------------------------


def special_texts(reference: Tokenizer) -> list[str]:
    added = [t.content for t in reference.get_added_tokens_decoder().values()]
    return ["".join(added), " ".join(added), "x" + "y".join(added) + "z",
            *(f"a {t}b{t}\n{t} c" for t in added[:40])]


def check_encode(name, cpp, reference, texts):
    """Ids with and without special handling; the first mismatch fails with its case."""
    mismatches = []
    for text in texts:
        for add_special in (False, True):
            expected = reference.encode(text, add_special_tokens=add_special).ids
            got = cpp.encode(text, add_special=add_special)
            if got != expected:
                mismatches.append((text, add_special, got[:30], expected[:30]))
    assert not mismatches, f"{name}: {len(mismatches)} of {2 * len(texts)} differ, first: {mismatches[0]!r}"


def check_decode(name, cpp, reference, texts):
    for text in texts:
        ids = reference.encode(text).ids
        for skip in (False, True):
            expected = reference.decode(ids, skip_special_tokens=skip)
            assert cpp.decode(ids, skip_special=skip) == expected, (name, text, skip)


def test_encode_matches_tokenizers(pair):
    name, cpp, reference = pair
    texts = TEXTS + special_texts(reference) + random_texts(300, seed=len(name))
    check_encode(name, cpp, reference, texts)


def test_encode_wiki_and_code(pair):
    name, cpp, reference = pair
    texts = wiki_sample(200) + python_code()
    assert texts
    check_encode(name, cpp, reference, texts)


def test_decode_matches_tokenizers(pair):
    name, cpp, reference = pair
    check_decode(name, cpp, reference, TEXTS + special_texts(reference) + random_texts(100, seed=5))


def test_decode_of_arbitrary_ids_matches_tokenizers(pair):
    """Random id sequences (byte tokens, pieces of characters, special tokens,
    ids past the vocabulary) decode to the same text, including the U+FFFD
    that invalid UTF-8 becomes: one per maximal invalid subpart after
    ByteLevel, one per byte of an invalid byte-fallback run after ByteFallback."""
    name, cpp, reference = pair
    rng = random.Random(11)
    n = reference.get_vocab_size(with_added_tokens=True)
    byte_ids = [i for i in (reference.token_to_id(f"<0x{b:02X}>") for b in range(256)) if i is not None]
    for _ in range(300):
        ids = [rng.choice(byte_ids) if byte_ids and rng.random() < 0.5 else rng.randrange(n + 3)
               for _ in range(rng.randrange(1, 12))]
        for skip in (False, True):
            assert cpp.decode(ids, skip_special=skip) == \
                reference.decode(ids, skip_special_tokens=skip), (name, ids, skip)


def test_round_trip_where_tokenizers_has_it(pair):
    """decode(encode(text)) equals what `tokenizers` gives back, and is the text
    itself for byte-level BPE without a normalizer or added prefix space."""
    name, cpp, reference = pair
    lossless = name in ("smollm2", "llama3")
    # SmolLM2's vocabulary has no token for some control bytes: those are dropped.
    droppable = {chr(b) for b in range(32) if cpp.encode(chr(b)) == []}
    for text in TEXTS + python_code() + random_texts(100, seed=9):
        lossless_here = lossless and not droppable & set(text)
        ours = cpp.decode(cpp.encode(text))
        theirs = reference.decode(reference.encode(text, add_special_tokens=False).ids,
                                  skip_special_tokens=False)
        assert ours == theirs, (name, text)
        assert ours == text or not lossless_here, (name, text)


def test_invalid_utf8_is_replaced_as_python_decodes_it(pair):
    """Encode: each invalid sequence becomes U+FFFD (its maximal subpart), as
    bytes.decode('utf-8', 'replace') makes the text `tokenizers` then gets."""
    name, cpp, reference = pair
    for raw in INVALID_UTF8:
        expected = reference.encode(raw.decode("utf-8", "replace"), add_special_tokens=False).ids
        assert cpp.encode_bytes(raw) == expected, (name, raw)


def test_parse_special_false_reads_special_tokens_as_text(pair):
    name, cpp, reference = pair
    reference = Tokenizer.from_str(reference.to_str())
    reference.encode_special_tokens = True
    for text in special_texts(reference)[:10]:
        assert cpp.encode(text, parse_special=False) == \
            reference.encode(text, add_special_tokens=False).ids, (name, text)


def test_stream_decoder_emits_complete_utf8_and_matches_decode(pair):
    name, cpp, reference = pair
    for text in TEXTS + special_texts(reference)[:3]:
        ids = reference.encode(text).ids
        for skip in (True, False):
            stream = cpp.stream_decoder(skip_special=skip)
            pieces = [stream.push(i) for i in ids]
            pieces.append(stream.flush())
            # Each piece crossed into Python as str, so it was valid UTF-8.
            assert "".join(pieces) == reference.decode(ids, skip_special_tokens=skip), (name, text)


def test_stream_decoder_holds_back_a_split_character(spm_jsons):
    """中 is three byte-fallback tokens in the trained vocabulary: nothing comes
    out until its last byte. A dangling byte after it comes out as U+FFFD on
    its own, with the text after it."""
    cpp = _core.Tokenizer.from_json(spm_jsons["spm-gemma"])
    ids = cpp.encode("a中")
    byte_ids = [cpp.token_id(f"<0x{b:02X}>") for b in "中".encode()]
    assert ids[-3:] == byte_ids
    stream = cpp.stream_decoder()
    assert [stream.push(i) for i in ids][-3:] == ["", "", "中"]
    assert stream.push(byte_ids[0]) == ""
    assert stream.flush() == "\ufffd"  # an incomplete character at the end
    assert [stream.push(i) for i in ids + byte_ids[:1] + cpp.encode("b")][-2:] == ["", "\ufffdb"]


def test_vocabulary_lookups(pair):
    name, cpp, reference = pair
    assert cpp.vocab_size() == reference.get_vocab_size(with_added_tokens=True)
    vocab = reference.get_vocab(with_added_tokens=True)
    for token, token_id in list(vocab.items())[:2000]:
        assert cpp.token_id(token) == token_id, (name, token)
        assert cpp.token_text(token_id) == token
    specials = {i for i, t in reference.get_added_tokens_decoder().items() if t.special}
    assert {i for i in range(cpp.vocab_size()) if cpp.is_special(i)} == specials
    assert cpp.token_id("no such token \u2603\u2603") is None and cpp.token_text(-1) == ""


# --- unsupported documents fail by name -------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["model"].update(type="WordPiece"), 'model type "WordPiece"'),
    (lambda d: d.update(normalizer={"type": "NFKC"}), 'normalizer "NFKC"'),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), 'pre-tokenizer "Whitespace"'),
    (lambda d: d.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"\w+"},
                                       "behavior": "Isolated", "invert": False}), "Split regex"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), 'decoder "WordPiece"'),
    (lambda d: d.update(post_processor={"type": "BertProcessing"}), 'post-processor "BertProcessing"'),
    (lambda d: d["model"]["merges"].append(["no-such", "token"]), "model.merges["),
    (lambda d: d["model"]["vocab"].update(bad="x"), "model.vocab.bad: expected a number"),
    (lambda d: d["added_tokens"][0].update(single_word=True), "single_word"),
    # An empty replacement would never advance the Metaspace split or the decoder's replace.
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "", "prepend_scheme": "first",
                                       "split": True}), "Metaspace replacement must be one character"),
    (lambda d: d.update(decoder={"type": "Metaspace", "replacement": "ab", "prepend_scheme": "first",
                                 "split": True}), "Metaspace replacement must be one character"),
])
def test_unsupported_documents_fail_by_name(smollm2_json, edit, message):
    doc = json.loads(smollm2_json)
    edit(doc)
    with pytest.raises(FormatError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _core.Tokenizer.from_json(json.dumps(doc))


@pytest.mark.parametrize("text, message", [
    ("", "byte 0"), ("{", "byte 1"), ('{"model": [1,]}', "byte 13: expected a value"), ('{"a": "\x01"}', "control"),
    ('{"a": "\\q"}', "escape"), ("[" * 1000, "deeper"), ('{"a": 1} x', "after the document"),
    ('{"a": tru}', "literal"), ('{"a": 01}', "','"), ('{"model": null}', 'missing "model"'),
])
def test_malformed_json_fails_with_position(text, message):
    with pytest.raises(FormatError, match=message):
        _core.Tokenizer.from_json(text)


# --- the real large vocabularies (slow) -------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_pair():
    # The GGUF assembled in awqcore's cache, else from its registry packages.
    path = registry.cache_dir() / registry.GEMMA3_FILE
    if not path.is_file():
        try:
            path = registry.gemma3_gguf_path()
        except FileNotFoundError as e:
            pytest.skip(str(e))
    text = tokenizer_from_gguf(gguf.GGUFReader(str(path))).json
    return "gemma3", _core.Tokenizer.from_json(text), Tokenizer.from_str(text)


@pytest.mark.slow
def test_gemma3_matches_tokenizers(gemma3_pair):
    name, cpp, reference = gemma3_pair
    texts = TEXTS + wiki_sample(300) + python_code() + random_texts(300, seed=3) + \
        special_texts(reference)
    check_encode(name, cpp, reference, texts)
    check_decode(name, cpp, reference, TEXTS + random_texts(100, seed=4))
    for raw in INVALID_UTF8:
        assert cpp.encode_bytes(raw) == reference.encode(raw.decode("utf-8", "replace"),
                                                         add_special_tokens=False).ids


@pytest.mark.slow
def test_qwen25_coder_matches_tokenizers():
    try:
        from awqcore.importers.registry import qwen_coder_gguf_path
        path = qwen_coder_gguf_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"Qwen2.5-Coder is not installed: {e}")
    text = tokenizer_from_gguf(gguf.GGUFReader(str(path))).json
    cpp, reference = _core.Tokenizer.from_json(text), Tokenizer.from_str(text)
    check_encode("qwen2.5-coder", cpp, reference,
                 TEXTS + wiki_sample(300) + python_code() + random_texts(300, seed=6) +
                 special_texts(reference))
    check_decode("qwen2.5-coder", cpp, reference, TEXTS + random_texts(100, seed=7))


def test_from_model_reads_the_files_tokenizer(tiny_awqbin):
    """Tokenizer::FromModel takes the document from the .awqbin's metadata: the
    same ids as the Python Model's `tokenizers` tokenizer of that file."""
    import awqcore
    _, path = tiny_awqbin
    model = awqcore.Model(str(path), threads=1)
    cpp = model._core.tokenizer()
    for text in TEXTS[:12] + ["<|im_start|>user\nHi<|im_end|>"]:
        assert cpp.encode(text, add_special=True) == model.tokenizer.encode(text).ids, text

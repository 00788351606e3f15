"""SentencePiece-style GGUF vocabularies (`tokenizer.ggml.model = llama`: Llama-2,
Mistral, Gemma 3) rebuilt as `tokenizers` JSON must tokenize exactly as
llama.cpp does. The yardstick is tests/spm_reference.py, written from
llama.cpp's definition and sharing no code with the importer; llama.cpp itself
is compared too where `llama_cpp` is installed.

Two vocabularies: a small one trained and written here (in CI), and Gemma 3
270M's real 262,144-token one when its registry packages are installed."""
from __future__ import annotations

import collections
import json
import random

import gguf
import pytest
from tokenizers import Tokenizer

from awqcore.importers.gguf_tokenizer import tokenizer_from_gguf
from spm_reference import ReferenceSPM
from tiny_models import write_tokenizer_gguf

T = gguf.TokenType
SAMPLES = [
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris.",
    "Numbers: 1234567, 3.14, -42, 1e-9, 2024-11-22, $1,000,000.00 and 50%.",
    "def fib(n):\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)\n\n\n",
    "multiple   spaces    here \t tab\t\tand trailing   ",
    "  leading spaces, then one", " ", "  ", "", "\n", "a\n\nb\n\n\n\nc",
    "Wait... what?!?! (really) [yes] {no} <html> --- *** ;;; \"quoted\" 'single' ",
    "don't I'll we've they're she'd it's DON'T I'LL WE'VE",
    "Café naïve résumé façade Ångström, Zürich, São Paulo, Ελληνικά, Русский текст",
    "中文测试：你好，世界！日本語のテキスト、한국어 텍스트",
    "Emoji: 😀👍🏽🇫🇷 ❤️ 🤖 and a family 👨‍👩‍👧",
    "العربية: مرحبا بالعالم، كيف حالك؟ ١٢٣",
    "control bytes \x00\x01\x7f and \u00a0nbsp \u2581 lower-eighth \ufeff bom",
    "\r\n CRLF \r\n\r\n done\n",
    "<s>special</s> <unk> in<s>side </s>",
    "x<br>y<br><br> z <b>bold</b> <bos><eos><pad>",
    "aaaaaaaa bbbbbbb ---------- ========= ..........",
]

# --- a synthetic vocabulary, trained and written here --------------------------------------

# Training text unlike the samples, and few merges, so that the samples are cut
# into many pieces whose merge order matters.
CORPUS = ("the then than that this these there their other brother rather weather "
          "and sand band hand land stand and an a cat at hat fat 12 123 1234 2024 ... --- "
          "quick quickly brown fox foxes jumps jumped over lazy dog dogs capital France "
          "Paris fib(n): return if n < 2 print(fib(10)) Café naïve résumé Zürich Ελληνικά "
          "don't I'll we've they're aaaa bbbb ==== ")


def _train(corpus: str, n_merges: int) -> tuple[list[str], list[float]]:
    """A SentencePiece-like BPE vocabulary: every character of the corpus except
    a few left to byte fallback, then `n_merges` merges of the most frequent
    adjacent pair within U+2581-led words, each scored below the one before."""
    rare = set("ö中文é")
    text = corpus.replace(" ", "\u2581").replace("\n", "")
    words = [list(w) for w in text.replace("\u2581", "\n\u2581").split("\n") if w]
    chars = sorted({c for w in words for c in w} - rare)
    pieces, scores = [], []
    for _ in range(n_merges):
        pairs = collections.Counter((a, b) for w in words for a, b in zip(w, w[1:])
                                    if a not in rare and b not in rare)
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        pieces.append(a + b)
        scores.append(-float(len(pieces)))
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    # Characters score below every merge, as in SentencePiece's own vocabularies.
    return pieces + chars, scores + [-1000.0 - i for i in range(len(chars))]


def synthetic_vocab() -> tuple[list[str], list[float], list[int]]:
    pieces, piece_scores = _train(CORPUS, 150)
    head = [("<unk>", T.UNKNOWN), ("<s>", T.CONTROL), ("</s>", T.CONTROL), ("<pad>", T.CONTROL)]
    user = ["<br>", "<b>", "</b>", "\n", "\n\n", "  ", "   ", "\t"]
    kept = [(p, s) for p, s in zip(pieces, piece_scores) if p not in user]
    # Ids in shuffled order, so that neither id nor training order can stand in for
    # the score; and one score in five swapped with a random other, so that a
    # longer token may score below its competitors (llama.cpp takes any scores).
    rng = random.Random(0)
    rng.shuffle(kept)
    pieces, piece_scores = [p for p, _ in kept], [s for _, s in kept]
    for i in rng.sample(range(len(pieces)), len(pieces) // 5):
        j = rng.randrange(len(pieces))
        piece_scores[i], piece_scores[j] = piece_scores[j], piece_scores[i]
    tokens = [t for t, _ in head] + [f"<0x{b:02X}>" for b in range(256)] + user + pieces
    types = [int(k) for _, k in head] + [int(T.BYTE)] * 256 + [int(T.USER_DEFINED)] * len(user) \
        + [int(T.NORMAL)] * len(pieces)
    scores = [0.0] * (len(head) + 256) + [0.0] * len(user) + piece_scores
    # A normal token that needs the ▁ of an escaped space to form: "▁<b" merges
    # in the raw text " <b", where "<b>" is not cut out as a whole.
    for extra, score in (("<", -5000.0), ("\u2581<", -5001.0), ("\u2581<b", -5002.0)):
        if extra not in tokens:
            tokens.append(extra), types.append(int(T.NORMAL)), scores.append(score)
    return tokens, scores, types


def write_spm_gguf(path, tokens, scores, types, **extra) -> str:
    """A tensor-less GGUF holding only SentencePiece-style tokenizer metadata."""
    return write_tokenizer_gguf(path, "llama", "default", tokens, types, scores=scores, **extra)


@pytest.fixture(scope="module", params=[True, False], ids=["space-prefix", "no-prefix"])
def synthetic(request, tmp_path_factory):
    """(info, tokenizer, reference) for the trained vocabulary, with llama.cpp's
    Llama-2 flags (space prefix, BOS) and with Gemma's (no prefix, BOS)."""
    tokens, scores, types = synthetic_vocab()
    path = write_spm_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", tokens, scores, types,
                          bos_token_id=1, eos_token_id=2, add_space_prefix=request.param)
    info = tokenizer_from_gguf(gguf.GGUFReader(path))
    reference = ReferenceSPM(tokens, scores, types, add_space_prefix=request.param)
    return info, Tokenizer.from_str(info.json), reference


@pytest.mark.parametrize("text", SAMPLES)
def test_synthetic_ids_match_reference(synthetic, text):
    _, tokenizer, reference = synthetic
    assert tokenizer.encode(text).ids == reference.encode(text)


def test_synthetic_random_texts_match_reference(synthetic):
    """Random strings over the training text's characters (plus a few that need
    byte fallback, and special tokens) put many overlapping pairs in competition,
    where the merge order decides."""
    _, tokenizer, reference = synthetic
    rng = random.Random(1)
    alphabet = list(CORPUS) + list("ö中é😀\t\n") + ["<s>", "<br>", "  "]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        assert tokenizer.encode(text).ids == reference.encode(text), repr(text)


def test_synthetic_vocabulary_exercises_every_path(synthetic):
    """The samples reach byte fallback, cut-out specials and the score order."""
    _, tokenizer, reference = synthetic
    ids = [i for text in SAMPLES for i in reference.encode(text)]
    byte_ids = range(4, 260)
    assert sum(i in byte_ids for i in ids) > 50
    assert {0, 1, 2, 3} <= set(ids)  # <unk>, <s>, </s> and <pad> matched in the text
    assert tokenizer.token_to_id("<br>") in ids and tokenizer.token_to_id("\n\n") in ids
    # Longest merges first would give other ids than the score order does.
    assert any(len(tokenizer.id_to_token(i)) >= 4 for i in ids)


def test_synthetic_score_order_and_ties(tmp_path):
    """Merge order by score and leftmost on ties, on cases worked by hand."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [
        "a", "b", "c", "ab", "bc", "aa", "aaa", "\u2581"]
    scores = [0.0] * 259 + [-100.0, -101.0, -102.0, -3.0, -2.0, -4.0, -5.0, -103.0]
    types = [int(T.UNKNOWN), int(T.CONTROL), int(T.CONTROL)] + [int(T.BYTE)] * 256 \
        + [int(T.NORMAL)] * 8
    path = write_spm_gguf(tmp_path / "ties.gguf", tokens, scores, types, add_space_prefix=False,
                          add_bos_token=False)
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(gguf.GGUFReader(path)).json)
    reference = ReferenceSPM(tokens, scores, types, add_space_prefix=False, add_bos=False)
    ids = {t: i for i, t in enumerate(tokens)}
    # "abc": bc (-2) beats ab (-3), though ab is leftmost. "aaaaa": the four tied
    # a+a pairs merge leftmost first to aa|a|a|a, then a+a (-4) beats aa+a (-5)
    # to aa|aa|a, and aa+a is what is left to merge.
    for text, expected in [("abc", ["a", "bc"]), ("aaaaa", ["aa", "aaa"]),
                           ("abab", ["ab", "ab"])]:
        assert reference.encode(text) == [ids[t] for t in expected], text
        assert tokenizer.encode(text).ids == reference.encode(text), text


@pytest.mark.parametrize("flags, prefix, bos", [
    ({}, True, True),  # llama.cpp's SPM defaults where the GGUF has no flags
    ({"add_space_prefix": False, "add_bos_token": False}, False, False),
])
def test_flags_and_their_defaults(tmp_path, flags, prefix, bos):
    tokens, scores, types = synthetic_vocab()
    path = write_spm_gguf(tmp_path / "f.gguf", tokens, scores, types, **flags)
    info = tokenizer_from_gguf(gguf.GGUFReader(path))
    tokenizer = Tokenizer.from_str(info.json)
    reference = ReferenceSPM(tokens, scores, types, add_space_prefix=prefix, add_bos=bos)
    assert info.bos_token_id == 1 and info.eos_token_ids == [2]  # llama.cpp's default ids
    for text in ("Hello world", "<s>x", "x</s>y"):
        assert tokenizer.encode(text).ids == reference.encode(text)
    assert (tokenizer.encode("x").ids[0] == 1) == bos


@pytest.mark.parametrize("text", ["The quick brown fox", " one leading", "emoji 🤖 and é",
                                  "a\n\nb  c<br>d"])
def test_synthetic_decode_inverts_encode(synthetic, text):
    info, tokenizer, _ = synthetic
    expected = text
    if text.startswith("a\n") and json.loads(info.json)["normalizer"]["type"] == "Sequence":
        # llama.cpp prefixes a space to the text after every cut-out token ("\n\n",
        # "  ", "<br>" here), which decoding keeps, as llama.cpp's detokenizer does.
        expected = "a\n\n b   c<br> d"
    assert tokenizer.decode(tokenizer.encode(text).ids) == expected


def test_bad_spm_vocabularies_are_refused(tmp_path):
    tokens, scores, types = synthetic_vocab()
    no_bytes = [t if not t.startswith("<0x4") else t + "!" for t in tokens]
    path = write_spm_gguf(tmp_path / "b.gguf", no_bytes, scores, types)
    with pytest.raises(ValueError, match="lacks 16 byte-fallback tokens"):
        tokenizer_from_gguf(gguf.GGUFReader(path))
    # "é" is left to byte fallback; a token that merges it cannot be rebuilt exactly.
    path = write_spm_gguf(tmp_path / "c.gguf", tokens + ["aé"], scores + [-1.5],
                          types + [int(T.NORMAL)])
    with pytest.raises(ValueError, match="'aé' merges the character 'é'"):
        tokenizer_from_gguf(gguf.GGUFReader(path))
    path = write_spm_gguf(tmp_path / "d.gguf", tokens, scores[:-1], types)
    with pytest.raises(ValueError, match="tokens but .* scores"):
        tokenizer_from_gguf(gguf.GGUFReader(path))


def test_synthetic_matches_llama_cpp(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    tokens, scores, types = synthetic_vocab()
    for prefix in (True, False):
        path = write_spm_gguf(tmp_path / f"l{prefix}.gguf", tokens, scores, types,
                              bos_token_id=1, eos_token_id=2, add_space_prefix=prefix)
        tokenizer = Tokenizer.from_str(tokenizer_from_gguf(gguf.GGUFReader(path)).json)
        model = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        for text in SAMPLES:
            expected = model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            assert tokenizer.encode(text).ids == expected, (prefix, text)


# --- Gemma 3 270M's real vocabulary, when its packages are installed --------------------------

@pytest.fixture(scope="module")
def gemma():
    from awqcore.importers import registry
    try:
        path = registry.gemma3_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reader = gguf.GGUFReader(str(path))
    tokens, scores, types = (list(reader.get_field(f"tokenizer.ggml.{key}").contents())
                             for key in ("tokens", "scores", "token_type"))
    info = tokenizer_from_gguf(reader)
    reference = ReferenceSPM(tokens, scores, types, add_space_prefix=False, add_bos=True,
                             bos_id=2, eos_id=1)
    return path, info, Tokenizer.from_str(info.json), reference


GEMMA_EXTRA = ["<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
               "<table><tr><td>1</td></tr></table>", "\t\t\tindent\n\n\n\n\n\n\n",
               " " * 40 + "x", "<unused0><mask>[multimodal]<start_of_image>"]


@pytest.mark.parametrize("text", SAMPLES + GEMMA_EXTRA)
def test_gemma3_ids_match_reference(gemma, text):
    _, _, tokenizer, reference = gemma
    assert tokenizer.encode(text).ids == reference.encode(text)


def test_gemma3_random_texts_match_reference(gemma):
    _, _, tokenizer, reference = gemma
    rng = random.Random(2)
    alphabet = list("".join(SAMPLES)) + ["<start_of_turn>", "<td>", "\n\n", "    "]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60)))
        assert tokenizer.encode(text).ids == reference.encode(text), repr(text)


def test_gemma3_known_ids(gemma):
    _, info, tokenizer, _ = gemma
    assert info.bos_token_id == 2 and info.eos_token_ids == [1]
    assert tokenizer.get_vocab_size() == 262_144
    ids = tokenizer.encode("<start_of_turn>user\n").ids
    assert ids[:2] == [2, 105] and tokenizer.id_to_token(ids[-1]) == "\n"
    assert tokenizer.decode(tokenizer.encode("Hello,  world 🤖").ids,
                            skip_special_tokens=True) == "Hello,  world 🤖"
    doc = json.loads(info.json)
    assert doc["model"]["byte_fallback"] is True and doc["normalizer"]["type"] == "Replace"


def test_gemma3_matches_llama_cpp(gemma):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, _, tokenizer, _ = gemma
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in SAMPLES + GEMMA_EXTRA:
        expected = model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert tokenizer.encode(text).ids == expected, text

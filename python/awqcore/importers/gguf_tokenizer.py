"""Rebuild the original Hugging Face tokenizer from a GGUF file's metadata.

A GGUF file keeps the vocabulary (`tokenizer.ggml.tokens`, `token_type`,
`merges`) but not the tokenizer's pipeline: it only names the pre-tokenizer
family in `tokenizer.ggml.pre`. The pipeline each supported family had in its
original `tokenizer.json` is written out below, so the rebuilt `tokenizers`
document splits text exactly as the original did and BPE then yields the same
ids.

Where the definitions come from:
- the regex llama.cpp runs for each `pre` name: ggml-org/llama.cpp,
  src/llama-vocab.cpp (`llm_tokenizer_bpe`: SMOLLM shares STARCODER's
  "\\p{N}" split followed by the GPT-2 regex; QWEN2 quotes its tokenizer.json
  regex);
- the Hugging Face pipelines themselves: SmolLM2's tokenizer.json is
  Sequence[Digits(individual_digits), ByteLevel(use_regex)]; Qwen2's is
  NFC + Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)], the same
  as transformers' `Qwen2Converter` (src/transformers/convert_slow_tokenizer.py);
- how the GGUF converter types added tokens (CONTROL when special or when they
  look like `<|...|>`, else USER_DEFINED): llama.cpp convert_hf_to_gguf.py,
  `get_vocab_base` and `does_token_look_special`;
- SentencePiece-style vocabularies (`tokenizer.ggml.model = llama`: Llama-2,
  Mistral, Gemma) as llama.cpp tokenizes them: src/llama-vocab.cpp,
  `llm_tokenizer_spm_session` and `llama_vocab::impl::tokenize` (see
  `_spm_tokenizer` below).
"""
from __future__ import annotations

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors

from ..source import TokenizerInfo

SUPPORTED_MODELS = ("gpt2", "llama")

# SentencePiece's stand-in for a space, and the byte-fallback token names.
SPM_SPACE = "\u2581"
SPM_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# Qwen2's tokenizer.json Split pattern, verbatim: contractions are matched
# case-insensitively, a letter run may take one leading non-letter (usually the
# space), digits are isolated one by one, and a punctuation run keeps its
# trailing newlines.
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_byte_level() -> pre_tokenizers.PreTokenizer:
    # use_regex=True applies GPT-2's own split ('s|'t|...| ?\p{L}+| ?\p{N}+|...)
    # inside ByteLevel, which is how GPT-2-style tokenizer.json files say it.
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _smollm() -> tuple[normalizers.Normalizer | None, pre_tokenizers.PreTokenizer]:
    # SmolLM2 (a StarCoder-style tokenizer) splits every digit off on its own
    # before the GPT-2 regex, so "2024" is always four single-digit tokens.
    return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                          _gpt2_byte_level()])


def _qwen2() -> tuple[normalizers.Normalizer | None, pre_tokenizers.PreTokenizer]:
    # The regex does all the splitting, so ByteLevel must not split again.
    return normalizers.NFC(), pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def _gpt2() -> tuple[normalizers.Normalizer | None, pre_tokenizers.PreTokenizer]:
    return None, _gpt2_byte_level()


# tokenizer.ggml.pre -> (normalizer, pre-tokenizer) of the original tokenizer.json.
# "default" is what a GGUF carries when its converter did not identify the
# pre-tokenizer (llama.cpp also assumes it when the key is missing). The
# original is then unknown, and GPT-2's own byte-level split, the rule every
# byte-level BPE derives from, is the best available guess; llama.cpp's
# "default" regex is its own heuristic, not any Hugging Face tokenizer's.
_PIPELINES = {"smollm": _smollm, "qwen2": _qwen2, "gpt2": _gpt2, "default": _gpt2}

# Added tokens that the original tokenizer.json marks "special": false although
# the GGUF converter typed them CONTROL, only because they look like <|...|>.
# Qwen2.5's fill-in-the-middle and repository markers are such: they are
# ordinary text to decode(skip_special_tokens=True), so they must not be
# dropped by it.
_NOT_SPECIAL_IN_ORIGINAL = {
    "qwen2": frozenset({"<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                        "<|repo_name|>", "<|file_sep|>"}),
}

# Tokens that close an assistant turn in the common chat formats (ChatML,
# Llama 3, Phi-3, Gemma).
_END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _required(reader: gguf.GGUFReader, key: str):
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF has no {key}: cannot rebuild its tokenizer")
    return value


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        if token in vocab:
            # A BPE vocabulary maps each string to one id; two ids for one
            # string would make one of them unreachable or ambiguous.
            raise ValueError(f"GGUF token list repeats {token!r} (ids {vocab[token]} and "
                             f"{token_id})")
        vocab[token] = token_id
    return vocab


def _merges(raw: list[str]) -> list[tuple[str, str]]:
    merges = []
    for rank, merge in enumerate(raw):
        parts = merge.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"GGUF merge {rank} is {merge!r}, expected two tokens "
                             "separated by one space")
        merges.append((parts[0], parts[1]))
    return merges


def _added_tokens(tokens: list[str], types: list[int], pre: str,
                  special_kinds=(gguf.TokenType.CONTROL,)) -> list[AddedToken]:
    """CONTROL and USER_DEFINED entries (and whatever else `special_kinds` names),
    which the original held as added tokens: matched whole in the raw text before
    any normalization or splitting."""
    not_special = _NOT_SPECIAL_IN_ORIGINAL.get(pre, frozenset())
    added = []
    for token, kind in zip(tokens, types):
        if kind in special_kinds:
            special = token not in not_special
        elif kind == gguf.TokenType.USER_DEFINED:
            special = False
        else:
            continue
        added.append(AddedToken(token, special=special, normalized=False, lstrip=False,
                                rstrip=False, single_word=False))
    return added


def _post_processor(tokens: list[str], add_bos: bool, bos_id: int, add_eos: bool,
                    eos_id: int) -> processors.PostProcessor | None:
    if not (add_bos or add_eos):
        return None
    if add_bos and bos_id < 0:
        raise ValueError("GGUF sets tokenizer.ggml.add_bos_token but has no bos_token_id")
    if add_eos and eos_id < 0:
        raise ValueError("GGUF sets tokenizer.ggml.add_eos_token but has no eos_token_id")
    bos = tokens[bos_id] if add_bos else None
    eos = tokens[eos_id] if add_eos else None

    def sequence(piece: str, type_id: int) -> str:
        return " ".join(f"{t}:{type_id}" for t in (bos, piece, eos) if t)

    ids = dict.fromkeys(i for i, add in ((bos_id, add_bos), (eos_id, add_eos)) if add)
    return processors.TemplateProcessing(
        single=sequence("$A", 0), pair=f"{sequence('$A', 0)} {sequence('$B', 1)}",
        special_tokens=[(tokens[i], i) for i in ids])


def _token_id(reader: gguf.GGUFReader, key: str, n_tokens: int) -> int:
    value = _field(reader, key)
    if value is None:
        return -1
    if not 0 <= int(value) < n_tokens:
        raise ValueError(f"GGUF {key}={value} is outside the vocabulary [0, {n_tokens})")
    return int(value)


def _eos_token_ids(reader: gguf.GGUFReader, tokens: list[str], types: list[int],
                   chat_template: str, eos_id: int) -> list[int]:
    """Every id that should stop generation.

    The GGUF's eos is the end of a whole document (for a base model, e.g.
    <|endoftext|>). A chat model, prompted through its template, ends its answer
    with the template's end-of-turn token instead (<|im_end|> for ChatML) and
    may never emit the document eos, so a generator that stops only on eos
    runs on into an invented next turn. Hence the end-of-turn tokens the
    template uses, and the GGUF's explicit end-of-turn/message ids, stop too.
    """
    n = len(tokens)
    ids = [token_id for token_id in (eos_id, _token_id(reader, "tokenizer.ggml.eot_token_id", n),
                                     _token_id(reader, "tokenizer.ggml.eom_token_id", n))
           if token_id >= 0]
    added = {token: token_id for token_id, (token, kind) in enumerate(zip(tokens, types))
             if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)}
    ids += [added[marker] for marker in _END_OF_TURN_MARKERS
            if marker in chat_template and marker in added]
    return list(dict.fromkeys(ids))  # de-duplicated, first-seen order


def _spm_merges(tokens: list[str], scores: list[float],
                vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every pair (a, b) of tokens whose concatenation is a token, ranked as
    llama.cpp's SPM loop ranks them: by the score of a + b, highest first.

    llama.cpp merges the adjacent pair whose concatenation is the highest-scoring
    token, the leftmost on ties; a BPE model merges the adjacent pair of lowest
    rank, the leftmost on ties. With ranks in score order the two pick the same
    pair whenever distinct tokens have distinct scores (true of the NORMAL
    tokens of Llama-2, Mistral and Gemma 3; their CONTROL, USER_DEFINED and
    BYTE tokens share scores but are cut out before merging or have no
    mergeable halves). Equal scores are ranked by token id, then split point.
    """
    ranked = []
    for token_id, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[token_id], token_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _check_spm_vocab(tokens: list[str], vocab: dict[str, int]) -> None:
    """ValueError for a vocabulary whose llama.cpp tokenization a BPE model with
    byte fallback cannot reproduce.

    llama.cpp starts from one symbol per character and turns a character that is
    no token into its <0xXX> byte tokens only after merging, so such a character
    can still merge with a neighbour; a BPE model replaces it by bytes first. The
    two agree unless some token is such a character plus a neighbour that can be
    a symbol (a token, or one character). Spaces never reach the merge loop
    (they are escaped to U+2581 first), so tokens holding them are exempt.
    """
    missing = [t for t in SPM_BYTE_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"SentencePiece-style GGUF vocabulary lacks {len(missing)} byte-fallback "
                         f"tokens ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")

    def symbol(text: str) -> bool:
        return len(text) == 1 or text in vocab

    for token in tokens:
        for char, rest in ((token[:1], token[1:]), (token[-1:], token[:-1])):
            if len(token) > 1 and char not in vocab and char != " " and symbol(rest):
                raise ValueError(f"SentencePiece-style GGUF token {token!r} merges the character "
                                 f"{char!r}, which is no token of its own: llama.cpp's "
                                 f"tokenization of it cannot be rebuilt exactly")


def _flag(reader: gguf.GGUFReader, key: str, default: bool) -> bool:
    value = _field(reader, key)
    return default if value is None else bool(value)


def _spm_tokenizer(reader: gguf.GGUFReader, tokens: list[str],
                   types: list[int]) -> tuple[Tokenizer, bool]:
    """llama.cpp's SPM tokenizer as a `tokenizers` document; also whether it adds BOS.

    llama.cpp (src/llama-vocab.cpp) cuts CONTROL, USER_DEFINED and UNKNOWN tokens
    out of the raw text first (added tokens here, matched before normalization);
    then, in each remaining fragment, prefixes a space when add_space_prefix is
    set (every fragment is either the first or follows a cut-out token, so the
    Prepend normalizer, which runs per fragment, is the same rule), replaces
    spaces by U+2581, merges characters pairwise by score (see `_spm_merges`)
    and writes a character that is no token as its <0xXX> byte tokens.

    llama.cpp cuts special tokens out longest first, one token at a time;
    `tokenizers` takes the leftmost-longest match. They differ only where a
    special token's end overlaps a longer one's start (none in Gemma 3's 6,414).
    """
    scores = [float(s) for s in _required(reader, "tokenizer.ggml.scores")]
    if len(scores) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(scores)} scores")
    vocab = _vocab(tokens)
    _check_spm_vocab(tokens, vocab)
    bpe = models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, vocab), dropout=None,
                     unk_token=None, fuse_unk=False, byte_fallback=True, ignore_merges=False)
    tokenizer = Tokenizer(bpe)
    # llama.cpp's defaults for an SPM vocabulary whose GGUF leaves the flags out.
    space_prefix = _flag(reader, "tokenizer.ggml.add_space_prefix", True)
    escape = normalizers.Replace(" ", SPM_SPACE)
    tokenizer.normalizer = (normalizers.Sequence([normalizers.Prepend(SPM_SPACE), escape])
                            if space_prefix else escape)
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:  # the prefixed space is no part of the text
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_tokens(_added_tokens(
        tokens, types, "", special_kinds=(gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)))
    return tokenizer, _flag(reader, "tokenizer.ggml.add_bos_token", True)


def _bpe_tokenizer(reader: gguf.GGUFReader, tokens: list[str], types: list[int],
                   model: str) -> tuple[Tokenizer, bool]:
    """A byte-level BPE vocabulary under its original pipeline; also whether it adds BOS."""
    pre = _field(reader, "tokenizer.ggml.pre") or "default"
    if pre not in _PIPELINES:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} for tokenizer model {model!r} "
                         f"(supported: {', '.join(_PIPELINES)})")
    merges = _merges(list(_required(reader, "tokenizer.ggml.merges")))
    try:
        # unk_token stays None as in the originals: a byte missing from the
        # vocabulary is dropped, never turned into <unk>.
        bpe = models.BPE(vocab=_vocab(tokens), merges=merges, dropout=None, unk_token=None,
                         fuse_unk=False, byte_fallback=False, ignore_merges=False)
    except Exception as e:  # tokenizers raises its own type for a merge outside the vocab
        raise ValueError(f"GGUF merges do not fit its token list: {e}") from None
    tokenizer = Tokenizer(bpe)
    normalizer, pre_tokenizer = _PIPELINES[pre]()
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(_added_tokens(tokens, types, pre))
    return tokenizer, _flag(reader, "tokenizer.ggml.add_bos_token", False)


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> TokenizerInfo:
    """The tokenizer of a GGUF model as a `tokenizers` JSON document, plus its
    chat template and special ids. ValueError for a tokenizer it cannot rebuild
    faithfully (another model type or pre-tokenizer family)."""
    model = _required(reader, "tokenizer.ggml.model")
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"unsupported GGUF tokenizer model {model!r} (supported: "
                         f"gpt2, i.e. byte-level BPE, and llama, i.e. SentencePiece-style)")
    tokens = list(_required(reader, "tokenizer.ggml.tokens"))
    types = [int(t) for t in _required(reader, "tokenizer.ggml.token_type")]
    if len(types) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(types)} token types")
    if model == "llama":
        tokenizer, add_bos = _spm_tokenizer(reader, tokens, types)
    else:
        tokenizer, add_bos = _bpe_tokenizer(reader, tokens, types, model)

    n = len(tokens)
    # llama.cpp's SPM defaults (bos 1, eos 2) stand where such a GGUF leaves the ids out.
    bos_id = _token_id(reader, "tokenizer.ggml.bos_token_id", n)
    eos_id = _token_id(reader, "tokenizer.ggml.eos_token_id", n)
    if model == "llama":
        bos_id = 1 if bos_id < 0 and n > 1 else bos_id
        eos_id = 2 if eos_id < 0 and n > 2 else eos_id
    post = _post_processor(tokens, add_bos, bos_id,
                           _flag(reader, "tokenizer.ggml.add_eos_token", False), eos_id)
    if post is not None:
        tokenizer.post_processor = post

    chat_template = _field(reader, "tokenizer.chat_template") or ""
    return TokenizerInfo(json=tokenizer.to_str(), chat_template=chat_template,
                         bos_token_id=bos_id,
                         eos_token_ids=_eos_token_ids(reader, tokens, types, chat_template, eos_id))

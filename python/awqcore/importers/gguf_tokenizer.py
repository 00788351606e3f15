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
  `get_vocab_base` and `does_token_look_special`.
"""
from __future__ import annotations

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors

from ..source import TokenizerInfo

SUPPORTED_MODELS = ("gpt2",)

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


def _added_tokens(tokens: list[str], types: list[int], pre: str) -> list[AddedToken]:
    """CONTROL and USER_DEFINED entries, which the original held as added tokens:
    matched whole in the raw text before any normalization or splitting."""
    not_special = _NOT_SPECIAL_IN_ORIGINAL.get(pre, frozenset())
    added = []
    for token, kind in zip(tokens, types):
        if kind == gguf.TokenType.CONTROL:
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
                   chat_template: str) -> list[int]:
    """Every id that should stop generation.

    The GGUF's eos is the end of a whole document (for a base model, e.g.
    <|endoftext|>). A chat model, prompted through its template, ends its answer
    with the template's end-of-turn token instead (<|im_end|> for ChatML) and
    may never emit the document eos, so a generator that stops only on eos
    runs on into an invented next turn. Hence the end-of-turn tokens the
    template uses, and the GGUF's explicit end-of-turn/message ids, stop too.
    """
    n = len(tokens)
    ids = [token_id for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                "tokenizer.ggml.eom_token_id")
           if (token_id := _token_id(reader, key, n)) >= 0]
    added = {token: token_id for token_id, (token, kind) in enumerate(zip(tokens, types))
             if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)}
    ids += [added[marker] for marker in _END_OF_TURN_MARKERS
            if marker in chat_template and marker in added]
    return list(dict.fromkeys(ids))  # de-duplicated, first-seen order


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> TokenizerInfo:
    """The tokenizer of a GGUF model as a `tokenizers` JSON document, plus its
    chat template and special ids. ValueError for a tokenizer it cannot rebuild
    faithfully (another model type or pre-tokenizer family)."""
    model = _required(reader, "tokenizer.ggml.model")
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"unsupported GGUF tokenizer model {model!r} (supported: "
                         f"{', '.join(SUPPORTED_MODELS)}, i.e. byte-level BPE)")
    pre = _field(reader, "tokenizer.ggml.pre") or "default"
    if pre not in _PIPELINES:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} for tokenizer model {model!r} "
                         f"(supported: {', '.join(_PIPELINES)})")

    tokens = list(_required(reader, "tokenizer.ggml.tokens"))
    types = [int(t) for t in _required(reader, "tokenizer.ggml.token_type")]
    if len(types) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(types)} token types")
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

    n = len(tokens)
    bos_id = _token_id(reader, "tokenizer.ggml.bos_token_id", n)
    eos_id = _token_id(reader, "tokenizer.ggml.eos_token_id", n)
    post = _post_processor(tokens, bool(_field(reader, "tokenizer.ggml.add_bos_token")), bos_id,
                           bool(_field(reader, "tokenizer.ggml.add_eos_token")), eos_id)
    if post is not None:
        tokenizer.post_processor = post

    chat_template = _field(reader, "tokenizer.chat_template") or ""
    return TokenizerInfo(json=tokenizer.to_str(), chat_template=chat_template,
                         bos_token_id=bos_id,
                         eos_token_ids=_eos_token_ids(reader, tokens, types, chat_template))

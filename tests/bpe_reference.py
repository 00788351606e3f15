"""A small pure-Python GPT-2 byte-level BPE encoder, the yardstick for the
tokenizer rebuilt from a GGUF file.

It shares nothing with the `tokenizers` library: the splitting regexes run on
the `regex` module (not Oniguruma), merges are applied by rank in the classic
GPT-2 loop (not a priority queue), and added tokens are cut out with a plain
alternation. Nor does it share the importer's text: Qwen2's split regex comes
from transformers' Qwen2 tokenizer module (PRETOKENIZE_REGEX, written by others),
not retyped here, so a copying mistake in the importer's QWEN2_SPLIT_REGEX shows
as a mismatch; GPT-2's split is the `tokenizers` library's built-in one on the
importer's side (ByteLevel(use_regex=True)) and typed here from GPT-2's encoder.
Agreement between the two therefore checks the rebuilt pipeline, not one
implementation or one copy of a pattern against itself.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

import regex
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

# GPT-2's split, which ByteLevel(use_regex=True) applies.
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# Qwen2's tokenizer.json Split regex, as transformers ships it.
QWEN2_PATTERN = regex.compile(PRETOKENIZE_REGEX)
DIGIT = regex.compile(r"(\p{N})")


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for
    themselves, the other 68 take code points from 256 up, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


class ReferenceBPE:
    """encode(text) -> ids, as the original Hugging Face tokenizer of the given
    pre-tokenizer family would produce them (no BOS/EOS added)."""

    def __init__(self, tokens: list[str], merges: list[str], added_tokens: list[str],
                 pre: str):
        if pre not in ("smollm", "qwen2", "gpt2"):
            raise ValueError(f"the reference knows no pre-tokenizer {pre!r}")
        self.pre = pre
        self.ids = {token: token_id for token_id, token in enumerate(tokens)}
        self.ranks = {tuple(merge.split(" ")): rank for rank, merge in enumerate(merges)}
        self.symbols = byte_symbols()
        # Longest first, so that an added token containing another wins.
        longest_first = sorted(added_tokens, key=len, reverse=True)
        self.added = regex.compile("|".join(regex.escape(t) for t in longest_first)) \
            if added_tokens else None
        self._bpe = lru_cache(maxsize=None)(self._bpe_uncached)

    def pre_tokenize(self, text: str) -> list[str]:
        if self.pre == "qwen2":
            pieces = QWEN2_PATTERN.findall(unicodedata.normalize("NFC", text))
        elif self.pre == "smollm":
            # Every digit is a piece of its own; GPT-2's split runs in between.
            pieces = [p for part in DIGIT.split(text) if part
                      for p in GPT2_PATTERN.findall(part)]
        else:
            pieces = GPT2_PATTERN.findall(text)
        # Both regexes end in \s+, so together the pieces must cover the text.
        covered = "".join(pieces)
        expected = unicodedata.normalize("NFC", text) if self.pre == "qwen2" else text
        assert covered == expected, f"pre-tokenizer lost text: {expected!r} -> {pieces!r}"
        return pieces

    def _bpe_uncached(self, piece: str) -> tuple[int, ...]:
        # A byte whose symbol is not in the vocabulary is dropped, as a BPE
        # model without unk_token does.
        word = [s for s in (self.symbols[b] for b in piece.encode("utf-8")) if s in self.ids]
        while len(word) > 1:
            pairs = list(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.ids[symbol] for symbol in word)

    def _encode_plain(self, text: str) -> list[int]:
        return [i for piece in self.pre_tokenize(text) for i in self._bpe(piece)]

    def encode(self, text: str) -> list[int]:
        ids, start = [], 0
        for match in (self.added.finditer(text) if self.added else ()):
            ids += self._encode_plain(text[start:match.start()])
            ids.append(self.ids[match.group()])
            start = match.end()
        return ids + self._encode_plain(text[start:])

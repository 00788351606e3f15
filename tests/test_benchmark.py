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


def test_bench_profile_covers_the_decode_step(tiny_awqbin, tmp_path, capsys):
    """--profile: every op of op_profile.h appears once with a non-negative time,
    the ops' shares sum to 100%, the ops that read weights report GB/s, and the
    timed steps are the decode steps (the timers are off afterwards)."""
    from awqcore import _core

    _, path = tiny_awqbin
    out = tmp_path / "bench.json"
    assert bench_main([str(path), "--threads", "2", "--prefill", "5", "--decode", "6",
                       "--reps", "1", "--no-peers", "--quiet", "--profile",
                       "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    ops = {op["op"]: op for op in row["profile"]}
    assert list(ops) == ["embedding", "norms", "q/k/v", "rope+cache write", "attention", "o",
                         "gate/up+act", "down", "router+experts", "lm_head", "sampling", "other"]
    assert all(op["ms"] >= 0 for op in ops.values())
    assert abs(sum(op["pct"] for op in ops.values()) - 100) < 1e-6
    assert ops["q/k/v"]["GB_s"] > 0 and ops["lm_head"]["GB_s"] > 0
    assert ops["attention"]["GB_s"] is None and ops["sampling"]["GB_s"] is None
    assert "profile of a decode step: awqcore, batch 1, prompt 5" in capsys.readouterr().out
    assert not _core.op_profiling_enabled()


def test_op_timers_count_decode_calls_only(tiny_awqbin):
    """The runtime's op timers: a prompt (several tokens in one call) is not
    timed, each decode step is, once per token."""
    import awqcore
    from awqcore import _core

    _, path = tiny_awqbin
    model = awqcore.Model(str(path), threads=2, max_seq_len=32)
    _core.set_op_profiling(True)
    try:
        _core.reset_op_profile()
        model.generate([5, 6, 7, 8], max_new_tokens=4, stop=[])  # 1 prefill + 3 decode steps
        profile = _core.op_profile()
    finally:
        _core.set_op_profiling(False)
    assert profile["decode_calls"] == 3 and profile["decode_tokens"] == 3
    assert profile["seconds"]["q/k/v"] > 0 and profile["seconds"]["lm_head"] > 0
    _core.reset_op_profile()
    model.generate([5, 6, 7, 8], max_new_tokens=4, stop=[])
    assert _core.op_profile()["decode_calls"] == 0  # off: nothing recorded

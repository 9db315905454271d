"""The benchmark's bookkeeping: totals, tables, resume and report, on made-up measurements (no corpora needed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from lmpress.models import load_model

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as running a script there does: its modules import the suite beside them
_spec = importlib.util.spec_from_file_location("bench", BENCHMARKS / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
from suite import measuring, reporting  # noqa: E402

META = {
    "date": "2026-11-29T08:00:00+00:00",
    "finished": "2026-11-29T09:00:00+00:00",
    "command": "python benchmarks/run.py",
    "machine": "x86_64, 2 cores, 2 torch threads",
    "torch": "2.13.0+cpu",
    "lmpress_version": "0.1.0",
    "lmpress_source": "0123456789abcdef",
    "models": {"smollm2-135m": "00112233aabbccdd"},
    "engine": "int8-v1",
    "gemm": "int_mm",
    "cpu": "Intel(R) Xeon(R) Processor, torch CPU capability AVX512",
    "load_s": 2.5,
    "prefix": 0,
    "lmpress_settings": {},
    "skipped": ["cmix (`cmix` not on PATH)"],
    "peers": {"xz -9e": {"compress": "xz -9e -T1 -c {in}", "decompress": "xz -d -c {in}"}},
    "roofline_gflops": 100.0,
    "flops_per_token": 2e8,
    "engine_ops_per_token": 3.5e8,
}


def row(compressor: str, file: str, size: int, out: int, model_bytes: int = 0, seconds: float = 1.0) -> dict:
    r = {"compressor": compressor, "file": file, "bytes": size, "bytes_out": out, "exact": True, "rss_kib": 1024}
    r.update(compress_s=seconds, decompress_s=seconds, lm_bytes_in=model_bytes)
    if compressor == "lmpress":
        r.update(tokens=model_bytes // 4, ideal_bits=8 * out - 40 if model_bytes else 0.0)
        r["lm_bytes_out"] = out - 10 if model_bytes else 0
    return reporting.derive(r)


def measured() -> list[dict]:
    return [
        row("lmpress", "canterbury/a.txt", 4000, 400, model_bytes=4000, seconds=100),
        row("xz -9e", "canterbury/a.txt", 4000, 1200),
        row("lmpress", "canterbury/b.bin", 2000, 1000, model_bytes=0, seconds=2),
        row("xz -9e", "canterbury/b.bin", 2000, 900),
        row("lmpress", "fresh/c.md", 1000, 100, model_bytes=1000, seconds=30),
        row("xz -9e", "fresh/c.md", 1000, 300),
    ]


def test_totals_per_group_and_compressor():
    totals = {(t["compressor"], t["file"]): t for t in reporting.summary(measured(), META)}
    assert set(totals) == {
        (c, g) for c in ("lmpress", "xz -9e") for g in ("total", "total (text files)", "total (fresh/, 2026)")
    }
    assert totals["xz -9e", "total"]["bytes_out"] == 2400
    assert totals["lmpress", "total (text files)"]["bytes"] == 5000  # the binary file is not text
    assert totals["lmpress", "total (fresh/, 2026)"]["files"] == 1
    lm = totals["lmpress", "total"]
    assert lm["tokens"] == 1250
    assert lm["overhead_pct"] == pytest.approx(100 * (480 * 8 / 3920 - 1))
    assert lm["flops_per_byte"] == pytest.approx(2e8 * 1250 / 7000)
    assert lm["roofline_pct"] == pytest.approx(100 * 2e8 * 1250 / 132 / 100e9)
    assert lm["products_share_pct"] == pytest.approx(100 * 3.5e8 * 1250 / 100e9 / 132)


def test_engine_ops_count_16_bit_activations_twice(tiny_model_dir):
    """The engine's products per token: the model's own operations (2 × its weight products' parameters) when
    every activation is 8-bit, more (at most twice) with the 16-bit ones."""
    net = load_model(str(tiny_model_dir)).net
    model = measuring.flops_per_token(net)
    weights = [t for name, t in net.tensors().items() if name.endswith(".wq") and not name.startswith("embed")]
    assert model == 2 * sum(t.numel() for t in weights)
    assert model < measuring.engine_ops_per_token(net) <= 2 * model


def test_bits_table_bolds_the_smallest_of_each_line():
    rows = measured()
    table = reporting.bits_table(rows, reporting.summary(rows, META), {"canterbury/b.bin": 900})
    lines = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines()[2:]}
    assert "| **0.800** | 2.400 |" in lines["canterbury/a.txt"]
    assert "| 4.000 | **3.600** | 1.111× |" in lines["canterbury/b.bin"]
    assert list(lines)[:3] == ["total", "total (text files)", "total (fresh/, 2026)"]


def test_resume_refuses_a_run_measured_otherwise(tmp_path):
    path = tmp_path / "results.json"
    bench.save(path, {"meta": META, "complete": False, "files": measured()})
    again = dict(META, date="later", command="python benchmarks/run.py --resume")
    assert bench.resumed_rows(path, again) == measured()
    assert again["date"] == META["date"] and again["command"] == META["command"] and len(again["resumed"]) == 1
    with pytest.raises(SystemExit, match="other lmpress_source"):
        bench.resumed_rows(path, dict(META, lmpress_source="fedcba9876543210"))


def test_report_needs_a_finished_run_and_replaces_only_the_results_section(tmp_path):
    args = argparse.Namespace(out=tmp_path, readme=tmp_path / "README.md", no_chart=True)
    args.readme.write_text("# Title\n<!-- results -->\nold table\n<!-- /results -->\nafter\n")
    path = tmp_path / "results.json"
    bench.save(path, {"meta": META, "complete": False, "files": measured()})
    with pytest.raises(SystemExit, match="unfinished run"):
        bench.report_only(path, args)
    bench.save(path, {"meta": META, "complete": True, "files": measured()})
    assert bench.report_only(path, args) == 0
    readme = args.readme.read_text()
    assert readme.startswith("# Title\n<!-- results -->\n| compressor |")
    assert readme.endswith("<!-- /results -->\nafter\n")
    assert "old table" not in readme
    assert "| lmpress | total | 7,000 | 1,500 | 1.714 | 0.625× |" in readme
    every = (tmp_path / "results.md").read_text().split("Every total and file:")[1]
    assert every.count("\n| lmpress |") == 6 and json.loads(path.read_text())["complete"]


def test_corpus_files_are_named_by_their_place_in_the_corpora_however_given(tmp_path, monkeypatch):
    inside = bench.BENCH / "fresh" / "notes.md"
    assert bench.display_name(inside) == "fresh/notes.md"
    assert bench.display_name(Path(os.path.relpath(inside))) == "fresh/notes.md"
    assert bench.display_name(tmp_path / "mine.txt") == "mine.txt"
    assert bench.BENCH.resolve() == bench.BENCH
    (tmp_path / "corpora").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "corpora")
    monkeypatch.setattr(bench, "BENCH", (tmp_path / "corpora").resolve())
    assert bench.display_name(tmp_path / "link" / "fresh" / "a.md") == "fresh/a.md"


def test_ablation_measures_every_component(tiny):
    """benchmarks/ablation.py on the tiny model: every mixer's code length, from one scoring pass."""
    spec = importlib.util.spec_from_file_location("ablation", BENCHMARKS / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    from conftest import TRAINING_TEXT

    from lmpress.codec.context_mixing import COMPONENTS
    from lmpress.codec.settings import Settings

    result = ablation.ablate(tiny, TRAINING_TEXT.encode() * 3, Settings(chunk_size=600, window=128, keep=32))
    bits = result["bits"]
    assert set(bits) == {"model alone", "match-v1", "cm-v1", *(f"cm-v1 − {c}" for c in COMPONENTS)}
    assert bits["cm-v1"] < bits["model alone"] and bits["cm-v1 − match"] != bits["cm-v1"]
    table = ablation.table({"t": result})
    assert table.count("\n") == 6 and "| t |" in table  # two tables of one file each

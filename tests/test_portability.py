"""Archives are the same bits everywhere: any product backend, kernel ISA and thread count (subprocesses), and
every committed golden archive decodes and is made again byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TRAINING_TEXT, build_family_model

import lmpress
from lmpress.codec import format as fmt
from lmpress.dictionary import train_adapter
from lmpress.distillation import Shape, distil
from lmpress.models import load_model

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "sample.txt").read_bytes()
GOLDEN = DATA / "sample.txt.lmp"  # made once with the default model (level 3); every later version must decode it
GOLDEN_MIXED = DATA / "sample.txt.mixed.lmp"  # the same at level 6 with the match model mixed in (engine 2)
GOLDEN_CM = DATA / "sample.txt.cm.lmp"  # the same at level 6 with context mixing (engine 3)
# each golden archive: the settings that made it, as arguments of lmpress.compress and of the CLI
GOLDENS = {
    "level 3": (GOLDEN, {"level": 3}, ["-3"]),
    "match-v1": (GOLDEN_MIXED, {"level": 6, "mixer": "match-v1"}, ["-6", "--mixer", "match-v1"]),
    "cm-v1": (GOLDEN_CM, {"level": 6, "mixer": "cm-v1"}, ["-6", "--mixer", "cm-v1"]),
}
# Tiny models of the families beside llama, trained and committed (Qwen2: biases on the query, key and value
# products; Qwen3: RMSNorms of the query and key heads), and each one's golden archive of families.txt (level 6,
# chunks of 500 bytes).
FAMILY_MODELS = {"qwen2": DATA / "qwen2-tiny", "qwen3": DATA / "qwen3-tiny"}


HAS_AVX512 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
HASWELL = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2,+fma"}  # numba compiles without AVX-512
CONFIGS = [
    {"ATEN_CPU_CAPABILITY": "default", "LMPRESS_GEMM": "float32", "NUMBA_CPU_NAME": "generic", "-T": "1"},
    {"ATEN_CPU_CAPABILITY": "avx2", "LMPRESS_GEMM": "int_mm", **HASWELL, "-T": "2"},
    {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "-T": "1"},  # whichever backend verifies
    {"ATEN_CPU_CAPABILITY": "default", "LMPRESS_GEMM": "int_mm", "-T": "2"},
    *([{"ATEN_CPU_CAPABILITY": "avx512", "LMPRESS_GEMM": "float32", "-T": "1"}] if HAS_AVX512 else []),
]


def _lmpress(config: dict, *args: str, stdin: bytes) -> bytes:
    env = {**os.environ, "LMPRESS_DEVICE": "cpu", **{k: v for k, v in config.items() if not k.startswith("-")}}
    cmd = [sys.executable, "-m", "lmpress", *args, "-T", config.get("-T", "0"), "-c", "-q"]
    done = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=900)
    assert done.returncode == 0, (config, done.stderr.decode()[-2000:])
    return done.stdout


def _name(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny Mistral (llama's network under another name and configuration), trained as the tiny llama is, so that
    the model codes its chunks."""
    folder = tmp_path_factory.mktemp("mistral") / "mistral"
    return build_family_model(folder, "mistral", tiny_model_dir / "tokenizer.json", train_steps=300)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny) -> Path:
    """A student of the tiny llama by ``lmpress distil`` (half its loss on the teacher's top 32), trained until it
    codes the text itself."""
    samples = [TRAINING_TEXT.encode()[i : i + 300] for i in range(0, len(TRAINING_TEXT), 300)]
    shape = Shape(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, head_dim=8)
    return distil(tiny, samples, tmp_path_factory.mktemp("student") / "student", shape, 300, block=32).path


@pytest.mark.parametrize("family", ["llama", "mistral", "student", *FAMILY_MODELS])
def test_tiny_model_archives_are_identical_on_every_configuration(tiny_model_dir, family, request):
    text = TRAINING_TEXT.encode()[:2500] + "Größe 東京 🙂\n".encode()
    folder = FAMILY_MODELS.get(family, tiny_model_dir)
    if family in ("mistral", "student"):
        folder = request.getfixturevalue(f"{family}_dir")
    model = ["--model", str(folder), "--chunk-size", "600", "--window", "64", "--keep-tokens", "16"]
    archives = {_name(c): _lmpress(c, "compress", *model, stdin=text) for c in CONFIGS}
    assert len(set(archives.values())) == 1, {k: hashlib.sha256(v).hexdigest()[:12] for k, v in archives.items()}
    blob = next(iter(archives.values()))
    (member,) = fmt.members(blob)
    frames = [fmt.whole_frame(blob[a:b]) for a, b in member.segments]
    methods = {c.method for f in frames if isinstance(f, fmt.Segment) for c in f.chunks}
    assert fmt.METHOD_LM in methods  # the model codes, not LZMA2 alone
    for config in CONFIGS:
        assert _lmpress(config, "decompress", "--model", str(folder), stdin=blob) == text, _name(config)


@pytest.mark.parametrize("family", FAMILY_MODELS)
def test_family_golden_archives_decode_and_are_reproduced(family):
    """Every later version must decode each family's golden archive, and make it again."""
    lm, golden = load_model(str(FAMILY_MODELS[family])), (DATA / f"{family}-tiny.lmp").read_bytes()
    text = (DATA / "families.txt").read_bytes()
    assert lmpress.decompress(golden, lm) == text
    assert lmpress.compress(text, lm, level=6, chunk_size=500, mixer="match-v1") == golden
    (member,) = fmt.members(golden)
    segment = fmt.whole_frame(golden[slice(*member.segments[0])])
    assert isinstance(segment, fmt.Segment) and fmt.METHOD_LM in {c.method for c in segment.chunks}  # the model's


def test_dictionary_archives_are_identical_on_every_configuration(tiny, tiny_model_dir, tmp_path):
    """A dictionary with an adapter and a primed context: the merge, the prefix and the archive are the same
    under every kernel, ISA, backend and thread count (a merge that differed would fail the adapted model's id)."""
    pytest.importorskip("peft")
    samples = [TRAINING_TEXT.encode()[i : i + 150] for i in range(0, 2400, 75)]
    dictionary = train_adapter(tiny, samples, steps=4, primer=20)
    (tmp_path / "d.lmpd").write_bytes(dictionary.to_bytes())
    text = TRAINING_TEXT.encode()[:1200]
    model = ["--model", str(tiny_model_dir), "-D", str(tmp_path / "d.lmpd"), "--window", "64", "--keep-tokens", "8"]
    archives = {_name(c): _lmpress(c, "compress", *model, stdin=text) for c in CONFIGS}
    assert len(set(archives.values())) == 1, {k: hashlib.sha256(v).hexdigest()[:12] for k, v in archives.items()}
    blob = next(iter(archives.values()))
    for config in CONFIGS:
        assert _lmpress(config, "decompress", *model[:4], stdin=blob) == text, _name(config)


@pytest.mark.slow
@pytest.mark.parametrize("golden", GOLDENS)
def test_golden_archive_decodes_and_is_reproduced(golden):
    """tests/data/sample.txt*.lmp were made by the default model once; they must decode, and compressing the same
    text with the same settings must give the same bytes, on every machine and with every lmpress that reads
    format 3."""
    path, settings, _ = GOLDENS[golden]
    assert lmpress.decompress(path.read_bytes()) == SAMPLE
    assert lmpress.compress(SAMPLE, **settings) == path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS[:4], ids=_name)
def test_default_model_archives_are_identical_on_every_configuration(config):
    """The context-mixed archive: its numbers are the model's and then the online models'."""
    path, _, flags = GOLDENS["cm-v1"]
    assert _lmpress(config, "compress", *flags, stdin=SAMPLE) == path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS[:2], ids=_name)
@pytest.mark.parametrize("golden", GOLDENS)
def test_default_model_decodes_the_golden_archive_on_other_configurations(config, golden):
    assert _lmpress(config, "decompress", stdin=GOLDENS[golden][0].read_bytes()) == SAMPLE

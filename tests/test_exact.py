"""The integer engine computes the same bits everywhere: any product backend, kernel ISA, thread count,
device, batch shape, and full-sequence pass or step-by-step."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import mpmath
import numba
import numpy as np
import pytest
import torch
from conftest import TRAINING_TEXT

import lmpress
from lmpress import coding, gemm, kernels, simd
from lmpress import llama as L
from lmpress.dictionary import train_adapter
from lmpress.engine import Lockstep, Settings, score_rows
from lmpress.models import load_model
from lmpress.tables import rope_tables, sigmoid_table

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "sample.txt").read_bytes()
GOLDEN = DATA / "sample.txt.lmp"  # made once with the default model (level 3); every later version must decode it
GOLDEN_MIXED = DATA / "sample.txt.mixed.lmp"  # the same at level 6: the match model mixed in (engine 2)
GOLDENS = {3: GOLDEN, 6: GOLDEN_MIXED}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _frequencies_by_scoring(lm, rows, settings):
    out = {}

    def visit(row, first, logits, tokens):
        freqs = coding.frequencies(logits)
        for i in range(len(tokens)):
            out[row, first + i] = freqs[i]

    score_rows(lm, rows, settings, visit)
    return out


def test_full_sequence_passes_equal_lockstep_steps(tiny):
    """What the encoder computes in large passes is what the decoder computes one token at a time, through
    context restarts and with rows leaving the batch."""
    rows = [tiny.tokenize(TRAINING_TEXT[a : a + n].encode()) for a, n in ((0, 300), (500, 140), (900, 37))]
    settings = Settings(window=24, keep=8)
    scored = _frequencies_by_scoring(tiny, rows, settings)
    steps = Lockstep(tiny, [len(r) for r in rows], settings)
    for t in range(max(len(r) for r in rows)):
        for i, row in enumerate(steps.rows):
            assert torch.equal(steps.freqs[i], scored[int(row), t]), (row, t)
        steps.advance(np.array([rows[row][t] for row in steps.rows]))


@pytest.mark.parametrize("step", [1, 2, 5])
def test_prefill_then_steps_equals_one_pass(tiny, step):
    """Steps of one token run the compiled kernel on the CPU; steps of more go through the torch operations a GPU
    runs for every step, writing and reading the cache at positions that are not multiples of its tiles."""
    net = tiny.net
    ids = torch.tensor([[tiny.start_token, *tiny.tokenize(TRAINING_TEXT.encode()[:200])]])
    with torch.inference_mode():
        full = net.logits(net.forward(ids)[0])
        cache = net.new_cache(1, ids.shape[1])
        parts = [net.logits(net.forward(ids[:, :17], cache, 0)[0])]
        for p in range(17, ids.shape[1], step):
            parts.append(net.logits(net.forward(ids[:, p : p + step], cache, p)[0]))
    assert torch.equal(torch.cat(parts), full)


@pytest.mark.skipif(not simd.AMX, reason="this CPU has no AMX tiles (or may not use them)")
def test_attention_on_tiles_equals_batched_products(tiny):
    """Full-sequence attention on AMX tiles (``kernels.attention_tiles``) gives the batched products' numbers: with
    no cache, and into a cache after earlier positions, for lengths around a tile's 16 queries."""
    net = tiny.net
    ids = torch.tensor(tiny.tokenize(TRAINING_TEXT.encode()[:400])[:74]).view(2, 37)
    results = []
    try:
        for tiles in (False, True):
            net.tiles = tiles
            with torch.inference_mode():
                alone = net.forward(ids)
                cache = net.new_cache(2, 37)
                first = net.forward(ids[:, :5], cache, 0)
                rest = net.forward(ids[:, 5:], cache, 5)
            results.append((alone, first, rest, cache.k, cache.v))
    finally:
        net.tiles = simd.AMX
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert torch.equal(results[1][0], torch.cat(results[1][1:3], 1))


def test_narrow_and_wide_steps_agree(tiny):
    """A narrow batch's steps multiply with packed weights, a wide one's with the backend (``prepare_steps`` frees
    the packed copy for the wide batch's cache) or, where AMX keeps only packed weights, with AMX's tiles: the
    same integers either way."""
    net = tiny.net
    ids = torch.tensor(tiny.tokenize(TRAINING_TEXT.encode()[:200])[: 2 * L.PACKED_ROWS]).view(-1, 2)
    linears = net.linears()
    assert len(linears) == 1 + 4 * len(net.layers)
    with torch.inference_mode():
        net.prepare_steps(1)
        assert all(lin.packed is not None for lin in linears)
        narrow = net.new_cache(1, 2)
        first = [net.logits(net.forward(ids[:1, i : i + 1], narrow, i)[:, 0]) for i in range(2)]
        net.prepare_steps(len(ids))
        assert all((lin.packed is None) != (lin.wq is None) for lin in linears)
        assert all((lin.wq is None) == simd.AMX for lin in linears)
        wide = net.new_cache(len(ids), 2)
        second = [net.logits(net.forward(ids[:, i : i + 1], wide, i)[:, 0]) for i in range(2)]
    assert all(torch.equal(w[:1], n) for w, n in zip(second, first))


def test_a_layer_in_one_call_equals_four_kernels_a_layer(tiny):
    """A step whose weights are all packed runs each layer in one compiled call (``kernels.layers_step``); with
    plain weights, four kernels a layer around the backend's products: the same logits and the same cache."""
    packed = tiny.net
    plain = copy.deepcopy(packed)
    for lin in plain.linears():
        lin.wq, lin.packed = lin.plain().clone(), None
    packed.prepare_steps(1)
    assert all(lin.packed is not None for lin in packed.linears())
    ids = torch.tensor(tiny.tokenize(TRAINING_TEXT.encode()[:200])[:30]).view(3, -1)
    logits, caches = [], []
    with torch.inference_mode():
        for net in (packed, plain):
            cache = net.new_cache(len(ids), ids.shape[1])
            logits.append([net.logits(net.forward(ids[:, i : i + 1], cache, i)[:, 0]) for i in range(ids.shape[1])])
            caches.append(cache)
    assert all(torch.equal(a, b) for a, b in zip(*logits))
    assert all(torch.equal(getattr(caches[0], n), getattr(caches[1], n)) for n in ("k", "v", "k_scale", "v_scale"))


def test_cache_keeps_rows_in_place(tiny):
    cache = tiny.net.new_cache(4, 70)
    gen = torch.Generator().manual_seed(3)
    for name in ("k", "v", "k_scale", "v_scale"):
        t = getattr(cache, name)
        t.copy_(torch.randint(-128, 128, t.shape, generator=gen).to(t.dtype))
    want = {name: getattr(cache, name)[:, [1, 3]].clone() for name in ("k", "v", "k_scale", "v_scale")}
    storage = cache.k.data_ptr()
    cache.keep_rows([1, 3])
    assert cache.k.data_ptr() == storage  # no second cache
    assert all(torch.equal(getattr(cache, name), t) for name, t in want.items())


def test_backends_give_identical_archives(tiny):
    data = TRAINING_TEXT.encode()[:1500]
    chosen = tiny.net.gemm
    archives = {}
    try:
        for name in [*gemm.candidates(torch.device("cpu")), "reference"]:
            tiny.net.gemm = gemm.Gemm(name)
            archives[name] = lmpress.compress(data, model=tiny, chunk_size=400)
        for name, blob in archives.items():
            tiny.net.gemm = gemm.Gemm("reference" if name != "reference" else "float32")
            assert lmpress.decompress(blob, model=tiny) == data
    finally:
        tiny.net.gemm = chosen
    assert len(set(archives.values())) == 1


def test_a_backend_that_saturates_is_refused(monkeypatch):
    """oneDNN's pre-VNNI kernels saturate int16 sums; a backend that does so never passes verification."""
    monkeypatch.setitem(gemm.PRODUCTS, "saturating", lambda a, b: gemm._reference(a, b).clamp(-(2**15), 2**15 - 1))
    with pytest.raises(gemm.BackendError, match="wrong integers"):
        gemm.verify(gemm.Gemm("saturating"), [(576, 64)], torch.device("cpu"))
    with pytest.raises(gemm.BackendError, match="unknown"):
        gemm.Gemm("nonesuch")


def _attention_inputs(gen, groups, rows, width, scale):
    dots = torch.randint(-(2**20), 2**20, (groups, rows, width), dtype=torch.int32, generator=gen)
    dots[0, 0] = 2**20  # ties for the maximum
    key_factor = torch.rand(groups, width, generator=gen) * scale
    q_factor = torch.rand(groups, rows, generator=gen) * scale
    v_scale = torch.rand(groups, width, generator=gen)
    v_scale[:, 0] = 0  # a value row of zeros
    visible = torch.randint(1, width + 1, (rows,), dtype=torch.int32, generator=gen)
    visible[0], visible[-1] = 1, width
    return dots, key_factor, q_factor, visible, v_scale


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 10.0])  # flat, ordinary, and clamped scores
def test_compiled_attention_equals_its_definition(scale):
    gen = torch.Generator().manual_seed(int(scale * 1e6))
    args = _attention_inputs(gen, 5, 7, 300, scale)
    for got, want in zip(kernels.attention_weights(*args), L.attention_weights(*args)):
        assert torch.equal(got, want)


def test_tables_are_exact():
    mp = mpmath.mp.clone()
    mp.prec = 200
    cos, sin = rope_tables(2048, 64, 100000.0)
    for p, i in ((0, 0), (1, 3), (777, 17), (2047, 31)):
        angle = p * mp.power(100000, -mp.mpf(2 * i) / 64)
        assert cos[p, i].item() == np.float32(float(mp.cos(angle)))
        assert sin[p, i + 32].item() == np.float32(float(mp.sin(angle)))
    sig = sigmoid_table(L.SIGMOID_FRAC, L.SIGMOID_SPAN)
    n = L.SIGMOID_SPAN << L.SIGMOID_FRAC
    for i in (-n, -1, 0, 5, n):
        assert sig[i + n].item() == np.float32(float(1 / (1 + mp.exp(-mp.mpf(i) / (1 << L.SIGMOID_FRAC)))))


def test_exp2_weights():
    d = torch.arange(0, (L.SCORE_ONE + 3) << L.SCORE_FRAC, dtype=torch.int32)
    e = L.exp2_fixed(d, L.SCORE_FRAC, L.SCORE_ONE)
    assert e[0] == 2**L.SCORE_ONE and (e[1:] <= e[:-1]).all() and e[-1] == 0
    ideal = 2.0 ** (L.SCORE_ONE - d.double() / 64)
    assert ((e.double() - ideal).abs() <= ideal * 3.2e-6 + 0.5).all()


def test_frequencies_are_exact_and_complete():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-(2**16), 2**16, (50, 777), dtype=torch.int32, generator=gen)
    logits[0] = 5  # all tied: the remainder goes to token 0
    logits[1, 10] = logits[1, 20] = 2**20  # tied maxima: to the first
    logits[2] = torch.arange(777) * 2**12  # most weights round to nothing: frequency 1
    f = coding._frequencies(logits)
    assert (f.sum(-1) == coding.TOTAL).all() and f.min() >= 1
    assert f[0, 0] == f[0].max() and (f[0, 1:] == f[0, 1]).all()
    assert f[1, 10] > f[1, 20]
    assert torch.equal(coding.frequencies(logits), f)  # the compiled kernel
    tokens = torch.randint(0, 777, (50,), generator=gen)
    tokens[:3] = torch.tensor([0, 10, 776])
    for got, want in zip(coding.token_intervals(logits, tokens), coding.intervals(f, tokens)):
        assert torch.equal(got, want)


def test_interval_encoding_writes_what_full_distributions_write():
    import constriction

    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(200, 40, generator=gen) * 3000).to(torch.int32)
    freqs = coding._frequencies(logits)
    tokens = torch.multinomial(freqs.double(), 1, generator=gen)[:, 0]
    tokens[:3], tokens[3:6] = 0, 39  # first and last symbols
    full = constriction.stream.queue.RangeEncoder()
    full.encode(tokens.numpy().astype(np.int32), coding._FAMILY, coding._counts(freqs))
    encoder = coding.TokenEncoder()
    encoder.encode(*(x.numpy() for x in coding.intervals(freqs, tokens)))
    stream = encoder.finish()
    assert stream == full.get_compressed().astype("<u4").tobytes()
    assert coding.TokenDecoder(stream).decode(freqs).tolist() == tokens.tolist()


def test_the_coder_uses_exactly_the_frequencies():
    """A symbol of frequency 1 costs 24 bits, one of frequency 2**23 one bit: constriction's model is exactly
    the integers it was given (a frequency of 2 instead of 1 would save 320 bits here)."""
    for width, bits in ((1, 24), (1 << 23, 1)):
        encoder = coding.TokenEncoder()
        encoder.encode(np.full(320, 5), np.full(320, width))
        assert 0 <= len(encoder.finish()) * 8 - 320 * bits <= 64


# --- Across machines: subprocesses with other kernels, ISAs, backends, threads ---------------------------

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


def test_tiny_model_archives_are_identical_on_every_configuration(tiny_model_dir):
    text = TRAINING_TEXT.encode()[:2500] + "Größe 東京 🙂\n".encode()
    model = ["--model", str(tiny_model_dir), "--chunk-size", "600", "--window", "64", "--keep-tokens", "16"]
    archives = {_name(c): _lmpress(c, "compress", *model, stdin=text) for c in CONFIGS}
    assert len(set(archives.values())) == 1, {k: hashlib.sha256(v).hexdigest()[:12] for k, v in archives.items()}
    blob = next(iter(archives.values()))
    for config in CONFIGS:
        assert _lmpress(config, "decompress", "--model", str(tiny_model_dir), stdin=blob) == text, _name(config)


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
@pytest.mark.parametrize("level", GOLDENS)
def test_golden_archive_decodes_and_is_reproduced(level):
    """tests/data/sample.txt.lmp and .mixed.lmp were made by the default model once; they must decode, and
    compressing the same text at the same level must give the same bytes, on every machine and with every
    lmpress that reads format 3."""
    golden = GOLDENS[level].read_bytes()
    assert lmpress.decompress(golden) == SAMPLE
    assert lmpress.compress(SAMPLE, level=level) == golden


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS[:4], ids=_name)
def test_default_model_archives_are_identical_on_every_configuration(config):
    """The mixed archive: its numbers are the model's and then the match model's."""
    assert _lmpress(config, "compress", "-6", stdin=SAMPLE) == GOLDEN_MIXED.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS[:2], ids=_name)
@pytest.mark.parametrize("level", GOLDENS)
def test_default_model_decodes_the_golden_archive_on_other_configurations(config, level):
    assert _lmpress(config, "decompress", stdin=GOLDENS[level].read_bytes()) == SAMPLE


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_compiled_products_equal_their_definition(bits, eps):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(37, 96, generator=gen) * torch.logspace(-6, 3, 37)[:, None]
    x[0] = 0  # an all-zero row
    x[1, 5] = 1e4  # an outlier
    got, want = L.product_operand(x, bits, eps), L._product_operand(x, bits, eps)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    w = torch.randint(-127, 128, (50, 96), dtype=torch.int8, generator=gen)
    acc = gemm.Gemm("reference").mm(got[0], w.t())
    scale = torch.rand(50, generator=gen)
    assert torch.equal(L.product_result(acc, bits, scale, got[1]), L._product_result(acc, bits, scale, got[1]))
    r = torch.rand(37, 1, generator=gen) / 2  # the logits' row factors: most round, some clamp at ±LIMIT
    factor = torch.tensor([[1.5]])
    assert torch.equal(L.fixed_logits(acc, bits, scale, factor, r), L._fixed_logits(acc, bits, scale, factor, r))


@pytest.mark.parametrize("vnni", sorted({False, simd.VNNI}))
@pytest.mark.parametrize(
    "keys, rows, heads",
    [(True, 1, False), (False, 1, False), (True, simd.WEIGHT_ROWS, False), (True, 3, True), (False, simd.HEADS, True)],
)
def test_simd_products_are_exact(keys, rows, vnni, heads):
    """Both lowerings of simd's products (VNNI where this CPU has it, the portable one everywhere) against int64
    numpy, with every byte's extremes, for one vector and for several: a count fixed when compiled, or given at
    run time (``heads``, the step attention's, which also prefetches)."""
    products = simd._heads_products(keys, vnni) if heads else simd._block_products(keys, vnni, rows)
    count = (rows,) if heads else ()  # the run-time count comes first

    @numba.njit
    def run(*args):
        products(*count, *args)

    rng = np.random.default_rng(keys + 2 * vnni + 4 * rows)
    n, stride, off, o, o_stride, v_stride = 7, 320, 40, 3, 70, 4 * 7 + 3
    matrix = rng.integers(-128, 128, off + n * stride).astype(np.int8)
    matrix[off : off + 256] = -128 if keys else 127  # the largest unsigned (k + 128 = 0 or 255) and signed
    matrix[off + stride : off + stride + 256] = 127 if keys else -128
    vector = rng.integers(-127 if keys else 0, 128, 5 + rows * v_stride).astype(np.int8)
    vector[5:13] = (127, -127, 127, -127, 127, 127, 127, 127) if keys else 127
    out = rng.integers(-1000, 1000, o + rows * o_stride).astype(np.int32)
    want = out.astype(np.int64)
    for r in range(rows):
        v = vector[5 + r * v_stride :]
        for k in range(n):
            block = matrix[off + k * stride : off + k * stride + 256].astype(np.int64).reshape(64, 4)
            u, s = (block + 128, v[4 * k : 4 * k + 4]) if keys else (v[4 * k : 4 * k + 4], block)
            at = o + r * o_stride
            want[at : at + 64] += (np.asarray(u, np.int64) * np.asarray(s, np.int64)).sum(-1)
    run(out, o, o_stride, matrix, off, stride, vector, 5, v_stride, n)
    assert np.array_equal(out, want)


def test_wide_vectors_compiles_its_function_for_the_widest_vectors():
    """The attention weights' and the frequencies' passes ask LLVM for 512-bit vectors (it tunes for 256 on
    Intel's AVX-512 servers): the request reaches the compiled function, and where the CPU has AVX-512 its loop
    uses the 512-bit registers."""

    @numba.njit
    def scaled(x, y):
        simd.wide_vectors()
        for i in range(x.shape[0]):
            y[i] = x[i] * np.float32(3.0) + np.float32(1.0)

    x = np.arange(1000, dtype=np.float32)
    y = np.empty_like(x)
    scaled(x, y)
    assert np.array_equal(y, x * np.float32(3.0) + np.float32(1.0))
    [code] = scaled.inspect_llvm().values()
    assert '"prefer-vector-width"="512"' in code
    if "+avx512f" in simd._cpu_flags():
        [asm] = scaled.inspect_asm().values()
        assert "zmm" in asm


@pytest.mark.parametrize("amx", sorted({False, simd.AMX}))
@pytest.mark.parametrize("m, n, k", [(1, 64, 576), (7, 100, 30), (9, 200, 1536), (24, 130, 36), (33, 64, 128)])
def test_packed_product_is_exact(m, n, k, amx):
    """The decoding step's product with packed weights equals the integer reference, at every byte's extremes,
    with row counts around the kernel's groups of rows and shapes that need padding; on AMX tiles where this CPU
    has them, and with vector products everywhere."""
    gen = torch.Generator().manual_seed(m * n * k)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    x[0], w[0], w[1] = -128, -128, 127
    linear = L.Linear(w, torch.ones(n))
    linear.pack()
    got = kernels.packed_product(x, linear.packed, n, amx)
    assert torch.equal(got, gemm.Gemm("reference").mm(x, w.t()))


@pytest.mark.parametrize("bits, out_bits", [(16, 16), (8, 16), (16, 8)])
def test_compiled_layer_chains_equal_their_definitions(bits, out_bits):
    """The fused kernels between a layer's products (swiglu's beyond its table and at its ends, the residual
    connection) against their torch definitions."""
    gen = torch.Generator().manual_seed(bits + out_bits)
    rows, n = 9, 32
    acc = torch.randint(-(2**20), 2**20, ((2 if bits == 16 else 1) * rows, 2 * n), dtype=torch.int32, generator=gen)
    scale, factor = torch.rand(2 * n, generator=gen) * 1e-3, torch.rand(rows, generator=gen)
    acc[0, :4] = torch.tensor([2**30, -(2**30), 0, 1])
    scale[:4] = torch.tensor([1.0, 1.0, 16.0 / 2**30, -16.001 / 2**30])  # beyond the table, and at its ends
    table = sigmoid_table(L.SIGMOID_FRAC, L.SIGMOID_SPAN)
    got, want = (
        L.swiglu_operand(acc, bits, scale, factor, table, out_bits),
        L._swiglu_operand(acc, bits, scale, factor, table, out_bits),
    )
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    x = torch.randn(rows, 2 * n, generator=gen) * 4
    got = L.residual_operand(x, acc, bits, scale, factor, out_bits, 1e-5)
    want = L._residual_operand(x, acc, bits, scale, factor, out_bits, 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(got, want))

"""The model computes the same bits however it is run: full-sequence passes or steps, narrow or wide steps,
one call a layer or four, any product backend, on AMX's tiles or not, and from several threads at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TRAINING_TEXT

import lmpress
from lmpress.codec.scoring import score_rows
from lmpress.codec.segments import Lockstep
from lmpress.codec.settings import Settings
from lmpress.exact import gemm, simd
from lmpress.exact.model import ExactLlama, Layer, Linear
from lmpress.exact.ops import frequencies
from lmpress.exact.runner import PACKED_ROWS, Runner
from lmpress.models import load_model


@pytest.fixture(params=["llama", "qwen2", "qwen3"])
def model(request, tiny, family_model_dirs):
    """The tiny llama, a tiny Qwen2 (the same network with biases on its query, key and value products) and a tiny
    Qwen3 (with RMSNorms of its query and key heads)."""
    return tiny if request.param == "llama" else load_model(str(family_model_dirs[request.param]))


def _frequencies_by_scoring(lm, rows, settings):
    out = {}

    def visit(row, first, logits, tokens):
        freqs = frequencies(logits)
        for i in range(len(tokens)):
            out[row, first + i] = freqs[i]

    score_rows(lm, rows, settings, visit)
    return out


def _oracle(rows, steps, wrong):
    """Guesses of ``steps``' next tokens from the rows themselves, every ``wrong``-th of them wrong (0: none)."""

    def guess(row: int, most: int) -> list[int]:
        t = steps[0].step
        ids = rows[row][t : t + most]
        return [(x + 1) % 300 if wrong and (row + t + i) % wrong == 0 else x for i, x in enumerate(ids)]

    return guess


@pytest.mark.parametrize("wrong", [None, 0, 4])
def test_full_sequence_passes_equal_lockstep_steps(model, wrong):
    """What the encoder computes in large passes is what the decoder computes one token at a time, through
    context restarts and with rows leaving the batch; and so it is when the decoder's steps check guesses of the
    next tokens (all right, or some wrong), taking fewer model steps."""
    rows = [model.tokenize(TRAINING_TEXT[a : a + n].encode()) for a, n in ((0, 300), (500, 140), (900, 37))]
    settings = Settings(window=24, keep=8)
    scored = _frequencies_by_scoring(model, rows, settings)
    holder: list[Lockstep] = []
    steps = Lockstep(model, [len(r) for r in rows], settings, None if wrong is None else _oracle(rows, holder, wrong))
    holder.append(steps)
    for t in range(max(len(r) for r in rows)):
        for i, row in enumerate(steps.rows):
            assert torch.equal(steps.freqs[i], scored[int(row), t]), (row, t)
        steps.advance(np.array([rows[row][t] for row in steps.rows]))
    longest = max(len(r) for r in rows)  # model steps: one a token without guesses (restarts included)
    passes = steps.tally.passes
    assert passes == longest - 1 if wrong is None else passes < longest / (3 if wrong == 0 else 1.2)


@pytest.mark.parametrize("step", [1, 2, 5])
@pytest.mark.parametrize("rows", [1, 2 * PACKED_ROWS])
def test_prefill_then_steps_equals_one_pass(model, step, rows):
    """Steps of ``step`` positions a row (a decoding step, or one that checks guesses) give the integers of one
    full pass: the runner's compiled step on a CPU, with packed weights (few rows) or the backend's products
    (many), the model's own forward pass elsewhere, writing and reading the cache at positions that are not
    multiples of its tiles."""
    net = model.net
    run = Runner(net, rows)
    text = model.tokenize(TRAINING_TEXT.encode()[:400])
    ids = torch.tensor([[model.start_token, *text[i : i + 60]] for i in range(rows)])
    with torch.inference_mode():
        full = net.logits(net.forward(ids).flatten(0, 1)).view(rows, ids.shape[1], -1)
        cache = net.new_cache(rows, ids.shape[1])
        parts = [net.logits(net.forward(ids[:, :17], cache, 0).flatten(0, 1)).view(rows, 17, -1)]
        for p in range(17, ids.shape[1], step):
            hidden = run.step(ids[:, p : p + step], cache, p)
            parts.append(run.logits(hidden.flatten(0, 1)).view(rows, hidden.shape[1], -1))
    assert torch.equal(torch.cat(parts, 1), full)


@pytest.mark.skipif(not simd.AMX, reason="this CPU has no AMX tiles (or may not use them)")
def test_attention_on_tiles_equals_batched_products(model):
    """Full-sequence attention on AMX tiles (the runner's ``kernels.attention_tiles``) gives the model's own batched
    products' numbers: with no cache, and into a cache after earlier positions, for lengths around a tile's 16
    queries."""
    net = model.net
    ids = torch.tensor(model.tokenize(TRAINING_TEXT.encode()[:400])[:74]).view(2, 37)
    results = []
    for forward in (net.forward, Runner(net).forward):
        with torch.inference_mode():
            alone = forward(ids)
            cache = net.new_cache(2, 37)
            first = forward(ids[:, :5], cache, 0)
            rest = forward(ids[:, 5:], cache, 5)
        results.append((alone, first, rest, cache.k, cache.v))
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert torch.equal(results[1][0], torch.cat(results[1][1:3], 1))


def _steps(run, ids):
    """Logits of each step of ``ids`` [B, T], run one position a step."""
    cache = run.net.new_cache(len(ids), ids.shape[1])
    with torch.inference_mode():
        return [run.logits(run.step(ids[:, i : i + 1], cache, i)[:, 0]) for i in range(ids.shape[1])], cache


def test_narrow_and_wide_steps_agree(model):
    """A narrow batch's steps multiply with a packed copy of the weights that its runner owns, a wide one's with the
    backend or, where AMX keeps only packed weights, with AMX's tiles: the same integers either way. The model
    itself is not changed by either."""
    net = model.net
    ids = torch.tensor(model.tokenize(TRAINING_TEXT.encode()[:200])[: 2 * PACKED_ROWS]).view(-1, 2)
    assert len(net.linears()) == 1 + 4 * len(net.layers)
    layouts = [(lin.wq, lin.packed) for lin in net.linears()]
    narrow, wide = Runner(net, 1), Runner(net, len(ids))
    assert bool(narrow._packed) != net.tiles and not wide._packed
    first, _ = _steps(narrow, ids[:1])
    second, _ = _steps(wide, ids)
    assert all(torch.equal(w[:1], n) for w, n in zip(second, first))
    assert all(a is c and b is d for (a, b), (c, d) in zip(layouts, [(lin.wq, lin.packed) for lin in net.linears()]))
    narrow.release()
    assert not narrow._packed


def _plain(lin: Linear) -> Linear:
    return Linear(lin.plain().clone(), lin.scale, lin.bias)


def test_a_layer_in_one_call_equals_four_kernels_a_layer(model):
    """A step whose weights are all packed runs each layer in one compiled call (``kernels.layers_step``); with
    plain weights, four kernels a layer around the backend's products: the same logits and the same cache."""
    net = model.net
    layers = [
        Layer(**{name: _plain(lin) for name, lin in layer.linears().items()}, q_norm=layer.q_norm, k_norm=layer.k_norm)
        for layer in net.layers
    ]
    plain = ExactLlama(net.cfg, layers, _plain(net.embed), _plain(net.head))
    for lin in plain.linears():  # (where AMX is, the model keeps its weights packed only)
        lin.wq, lin.packed = lin.plain(), None
    plain.tiles = False
    ids = torch.tensor(model.tokenize(TRAINING_TEXT.encode()[:200])[:30]).view(3, -1)
    packed_run, plain_run = Runner(model.net, len(ids)), Runner(plain)
    assert packed_run._layer_arrays() is not None and plain_run._layer_arrays() is None
    (a, cache_a), (b, cache_b) = _steps(packed_run, ids), _steps(plain_run, ids)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(getattr(cache_a, n), getattr(cache_b, n)) for n in ("k", "v", "k_scale", "v_scale"))


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


def test_threads_share_one_loaded_model(tiny):
    """Threads compressing and decompressing at once with one loaded model (narrow and wide decoding steps, full
    passes, a dictionary's prefix) each get the right bytes: the model is never changed by running it."""
    import concurrent.futures

    text = TRAINING_TEXT.encode()
    narrow = (text[:900], {"chunk_size": 500, "batch": 1})  # one row a step: a packed copy of the weights
    wide = (text[300:2700], {"chunk_size": 150, "batch": 16})  # 16 rows a step: the backend's products
    archives = [lmpress.compress(data, tiny, **kw) for data, kw in (narrow, wide)]

    def work(i: int) -> bool:
        data, kw = (narrow, wide)[i % 2]
        if i % 4 < 2:
            return lmpress.decompress(archives[i % 2], tiny) == data
        return lmpress.compress(data, tiny, **kw) == archives[i % 2]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(12)))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_the_exact_engine_computes_what_transformers_computes(family_model_dirs, arch):
    """Each family the exact engine runs, against transformers' own float model: logits (centred, in nats) within
    quantisation's reach, which leaving out a family's own step (Qwen2's biases, Qwen3's head norms) is not."""
    from transformers import AutoModelForCausalLM

    from lmpress.exact.arithmetic import LN2, LOGIT_FRAC

    lm = load_model(str(family_model_dirs[arch]))
    ids = torch.tensor([[lm.start_token, *lm.tokenize(TRAINING_TEXT.encode()[:200])]])
    with torch.inference_mode():
        fixed = lm.net.logits(lm.net.forward(ids)[0]).double() * (LN2 / 2**LOGIT_FRAC)
        floating = AutoModelForCausalLM.from_pretrained(family_model_dirs[arch]).eval()(ids).logits[0].double()
    gap = ((fixed - fixed.mean(-1, keepdim=True)) - (floating - floating.mean(-1, keepdim=True))).abs().mean()
    assert gap < 0.005, float(gap)  # 0.001 here; without its own step 0.11 (Qwen2), 0.017 (Qwen3)

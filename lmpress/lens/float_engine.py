"""The float engine: any causal language model that ``transformers`` loads, scoring documents for the lens.

The exact engine runs the model families lmpress compresses with, in integer arithmetic, so that its figures are
archive sizes. This one runs whatever ``AutoModelForCausalLM`` loads (Llama, Qwen, Gemma, Mistral, Phi, GPT-2,
Pythia, Mamba, RWKV, ...) in float32 or bfloat16, on a CPU or a GPU. Its figures compare models with each other, as
UncheatableEval's and lm-evaluation-harness's bits per byte do; they are not archive sizes, and every output that
shows them names the engine. Documents are cut into chunks and their context windows laid out as the compressor
lays them out (``codec.chunking``, ``codec.scoring.windows``), so that both engines' figures of one model compare;
the float engine scores the model alone (no online models mixed in, no dictionary).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from ..codec.scoring import windows
from ..codec.settings import Settings
from ..errors import ModelUnavailableError
from ..models import DEFAULT_MODEL, HUB_ID, device_for, fetch_default
from .scores import TokenScores, text_rows, token_texts, z_and_rank

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # the float engines, by the name outputs show
LOGIT_ELEMENTS = 1 << 27  # logits a pass may hold (512 MiB of float32): bounds the windows scored side by side
STATISTICS_ROWS = 256  # positions whose binary64 statistics are computed at once: bounds the [rows, V] tensors


@dataclass
class FloatModel:
    """A ``transformers`` causal LM and its tokenizer, as the lens uses them."""

    name: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    start_token: int  # what every context starts from, as the exact engine's start token
    max_positions: int  # the longest context the model takes (its configuration's), or a large number
    engine: str  # "float32" or "bfloat16"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def tokenize(self, data: bytes) -> list[int] | None:
        """Token ids of ``data``, or None if it is not UTF-8 text (the lens then counts it as skipped)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids or None

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def load_float_model(spec: str | None = None, engine: str = "float32", device: str | None = None) -> FloatModel:
    """A model by the specs ``load_model`` takes: None or the default model's name, a GGUF file, a model folder,
    or a Hub id; computing in ``engine`` ("float32" or "bfloat16"). Kept loaded for reuse."""
    if engine not in DTYPES:
        raise ValueError(f"float engine {engine!r}: one of {', '.join(DTYPES)}")
    return _load(spec or DEFAULT_MODEL, engine, device_for(device))


@functools.lru_cache(maxsize=2)
def _load(spec: str, engine: str, device: torch.device) -> FloatModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(spec).expanduser()
    if spec == DEFAULT_MODEL:
        path = fetch_default()
    where: dict[str, Any] = {}
    if path.is_file():  # GGUF: transformers dequantises it
        source, where["gguf_file"], name = str(path.parent), path.name, spec if spec == DEFAULT_MODEL else path.name
    elif path.is_dir():
        source, name = str(path), path.name
    elif HUB_ID.fullmatch(spec):
        source, name = spec, spec
    else:
        raise ModelUnavailableError(f"{spec}: no such model file or folder")
    model: Any
    try:
        # transformers' GGUF reader draws a progress bar of its own; tqdm reads TQDM_DISABLE as each bar is made
        with mock.patch.dict(os.environ, TQDM_DISABLE="1"):
            tokenizer = AutoTokenizer.from_pretrained(source, **where)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[engine], **where)
    except Exception as e:  # transformers and huggingface_hub raise many kinds: missing files, network, formats
        raise ModelUnavailableError(
            f"{spec}: transformers cannot load it as a causal language model ({' '.join(str(e).split())[:300]})"
        ) from None
    model.to(device).eval()
    config = model.config
    ends = (config.bos_token_id, config.eos_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    start = next((t for t in ends if isinstance(t, int)), 0)  # (a configuration may list several eos ids)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return FloatModel(name, model, tokenizer, int(start), int(limit or 1 << 20), engine)


def rolling_windows(ids: list[int], start_token: int, length: int) -> Iterator[tuple[list[int], int, int, int]]:
    """lm-evaluation-harness's rolling loglikelihood windows (``context_len`` 1) over a whole document's tokens:
    (inputs, first scored, end, shift) — the first window scores up to ``length`` tokens from the start token, each
    later one the next ``length`` tokens, its inputs the ``length`` tokens before each (so a full window's context
    is the one token before it); the logit at input position j predicts token j + shift."""
    first_end = min(length, len(ids))
    yield [start_token, *ids[: first_end - 1]], 0, first_end, 0
    predicted = first_end
    while predicted < len(ids):
        end = min(len(ids), predicted + length)
        yield ids[end - length - 1 : end - 1], predicted, end, end - length
        predicted = end


def score_document(
    fm: FloatModel,
    data: bytes,
    settings: Settings | None = None,
    detail: int = 0,
    progress: Callable[[int], None] | None = None,
    rolling: bool = False,
) -> TokenScores:
    """Score every text chunk of ``data`` as ``analysis.score_document`` does, with the float model: the same
    chunks and context windows (``settings``'), no wider than the model's own context. ``rolling``: the whole
    document (not cut into chunks) in lm-evaluation-harness's rolling windows of ``settings.window`` positions (no
    more than the model's), the way its ``bits_per_byte`` is computed."""
    settings = settings or Settings()
    window = min(settings.window, fm.max_positions)
    if rolling:
        out, ids = TokenScores(engine=fm.engine), fm.tokenize(data)
        rows = [] if ids is None else [ids]
        out.n_bytes, out.skipped_bytes = (0, len(data)) if ids is None else (len(data), 0)
        spans = [(0, *w) for w in rolling_windows(rows[0], fm.start_token, window)] if rows else []
    else:
        out, rows = text_rows(fm.tokenize, data, settings, fm.engine)
        keep = min(settings.keep, window - 2)
        spans = [
            (r, [fm.start_token, *ids[ctx : end - 1]], first, end, ctx)
            for r, ids in enumerate(rows)
            for ctx, first, end in windows(len(ids), window, keep)
        ]
    bits = [torch.zeros(len(ids), dtype=torch.float64) for ids in rows]
    z = [torch.zeros(len(ids), dtype=torch.float64) for ids in rows]
    rank = [torch.zeros(len(ids), dtype=torch.int64) for ids in rows]
    top: list[list] = [[None] * len(ids) for ids in rows]
    vocab = fm.model.config.vocab_size
    per_pass = max(1, LOGIT_ELEMENTS // (window * vocab))  # windows side by side
    for i in range(0, len(spans), per_pass):
        batch = spans[i : i + per_pass]
        width = max(len(inputs) for _, inputs, *_ in batch)
        # Padded on the right: a causal model's positions before the padding never see it.
        padded = [inputs + [fm.start_token] * (width - len(inputs)) for _, inputs, *_ in batch]
        with torch.inference_mode():
            logits = fm.model(input_ids=torch.tensor(padded, device=fm.device)).logits
        for k, (r, _, first, end, shift) in enumerate(batch):
            for a in range(first, end, STATISTICS_ROWS):
                b = min(end, a + STATISTICS_ROWS)
                logp = torch.log_softmax(logits[k, a - shift : b - shift].double(), dim=-1)
                tokens = torch.tensor(rows[r][a:b], device=logp.device)
                zs, ranks = z_and_rank(logp, tokens)
                chosen = logp.gather(1, tokens.view(-1, 1))[:, 0]
                bits[r][a:b] = (-chosen / math.log(2)).cpu()
                z[r][a:b], rank[r][a:b] = zs.cpu(), ranks.cpu()
                if detail:
                    values, indices = logp.exp().topk(detail, dim=-1)
                    for j, (vs, js) in enumerate(zip(values.tolist(), indices.tolist())):
                        top[r][a + j] = [(fm.decode([t]), v) for t, v in zip(js, vs)]
            if progress is not None:
                progress(end - first)
    for r, row in enumerate(rows):
        out.bits.extend(bits[r].tolist())
        out.z.extend(z[r].tolist())
        out.rank.extend(rank[r].tolist())
        if detail:
            out.top.extend(top[r])
        out.text.extend(token_texts(fm.decode, row))
    return out

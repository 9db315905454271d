"""Shared fixtures: tiny random-initialised models built here (never downloaded), and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lmpress.exact.ops import frequencies
from lmpress.models import LanguageModel, load_model

TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "def main():\n    return 0\n"
    "Größe, naïve café, 東京, данные, 🙂 emoji and tabs\tand CRLF\r\n"
) * 20


def _train(model: torch.nn.Module, ids: list[int], steps: int) -> None:
    """A few seconds of training on the fixture text, so that the model predicts text better than chance, the
    compressor prefers it to LZMA2 on text like it, and it reproduces long spans of the text. The same model in every
    process: the caller seeds before initialisation, and training runs on one thread (a thread split changes float
    sums, and training amplifies that)."""
    if not steps:
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokens = torch.tensor(ids)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            starts = torch.randint(0, len(tokens) - 65, (16,))
            batch = torch.stack([tokens[s : s + 65] for s in starts])
            loss = model(batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)


def frequency_row(seed: int, peak: int, vocab: int = 320) -> np.ndarray:
    """A valid row of the coder's frequencies (Σ = 2**24, each ≥ 1), as peaked as ``peak`` (0: flat … 40: one token
    has nearly all), from random logits."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(1, vocab, generator=gen) * peak * 256).round().to(torch.int32)
    return frequencies(logits)[0].numpy()


def build_tiny_model(
    folder: Path,
    seed: int = 2,
    vocab: int = 320,
    train_steps: int = 300,
    layers: int = 2,
    text: str = TRAINING_TEXT,
    tokenizer: Path | None = None,
) -> Path:
    """A small llama (2 layers unless told) trained on ``text``, with a byte-level BPE tokenizer (trained on the
    text too, unless ``tokenizer`` names one to use), as a Hugging Face model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tok = Tokenizer.from_file(str(tokenizer))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([text], trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "model_type": "llama",
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    # (seed and steps chosen for a wide margin: 600 memorised tokens where the audit test needs some)
    _train(model, tok.encode(text).ids, train_steps)
    model.save_pretrained(folder)
    return folder


# Tiny random-initialised models of other families, for the lens's float engine: each architecture's own
# configuration keys, at the tiny llama's shape where it has them.
_SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
}
FAMILIES = {
    "llama": _SHAPE,
    "qwen2": _SHAPE,
    "qwen3": _SHAPE,
    "mistral": {**_SHAPE, "sliding_window": None},  # as Mistral 7B from v0.2 on: the exact engine runs it
    "phi3": _SHAPE,
    "gemma3_text": {**_SHAPE, "sliding_window": 64},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "gpt_neox": {
        **{k: _SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")},
        "num_attention_heads": 4,
    },
    "mamba": {"hidden_size": 32, "num_hidden_layers": 2, "state_size": 8},
    "rwkv": {"hidden_size": 32, "num_hidden_layers": 2, "context_length": 256},
}


def build_family_model(folder: Path, model_type: str, tokenizer_json: Path, train_steps: int = 0) -> Path:
    """A random-initialised ``model_type`` model (``FAMILIES``' shape) with the tiny llama's tokenizer, as a Hugging
    Face model folder; trained ``train_steps`` as the tiny llama is (``tests/data/qwen2-tiny`` is one, trained)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=0, **FAMILIES[model_type]
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # biases start at zero and norms' gains at one: give them values, so that they are tested
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.normal_(1.0, 0.3)
    _train(model, tokenizer.encode(TRAINING_TEXT), train_steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def family_model_dirs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """A tiny model folder of every family in ``FAMILIES``."""
    root = tmp_path_factory.mktemp("families")
    return {arch: build_family_model(root / arch, arch, tiny_model_dir / "tokenizer.json") for arch in FAMILIES}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "other", seed=1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> LanguageModel:
    """The tiny model, loaded once a test module."""
    return load_model(str(tiny_model_dir))


def run(*args, stdin: bytes | None = None, cwd=None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """The ``lmpress`` command with these arguments, as a user runs it (a process of its own)."""
    command = [sys.executable, "-m", "lmpress", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, cwd=cwd, timeout=timeout, **kw)

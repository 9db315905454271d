"""Distilling a student of the user's data (``lmpress distil``).

A student is a small llama with the teacher's tokenizer, taught what the teacher predicts on the user's files: at
every position, the teacher's ``TOP_K`` most likely next tokens (its soft targets, computed once and cached beside
the output) and the data's own next token. Its embeddings start from the teacher's, projected onto their
``hidden`` leading principal directions; the rest starts at random. The result is a model folder that ``--model``
loads and the exact engine runs like any other: several times fewer operations a token than the teacher, and on
data of the kind it was taught, bits close to the teacher's (the card says how close, on held-out blocks).

Training is resumable: a checkpoint is kept in a working folder beside the output (``.NAME.distil``) and the same
command picks it up; the folder goes once the student is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import LanguageModel, device_for, load_model


@dataclasses.dataclass(frozen=True)
class Shape:
    """A student's size: a llama of ``layers`` blocks of width ``hidden``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int = 64


PRESETS = {  # parameters with SmolLM2's 49,152-token vocabulary (the tied embeddings are most of them)
    "tiny": Shape(256, 4, 4, 2, 768),  # 15.6 M: a few minutes of teacher passes, training by the hour on 2 cores
    "small": Shape(384, 6, 6, 2, 1024),  # 27.4 M
    "base": Shape(576, 8, 9, 3, 1536),  # 56.6 M: the teacher's width, 8 of its 30 layers' size
}
DEFAULT_PRESET = "tiny"
TOP_K = 32  # the teacher's soft targets a position: the rest of its distribution is left to the data's token
BLOCK = 256  # tokens a training sequence
BATCH = 8  # sequences a step
DEFAULT_STEPS = 1500
HELD_OUT_EVERY = 20  # every 20th block is held out: the student's and the teacher's bits are measured on them
SOFT_WEIGHT = 0.5  # the loss: this share of cross-entropy against the teacher's top-k, the rest against the data
LEARNING_RATE = 2e-3  # AdamW's peak, after WARMUP steps, then a cosine down to a tenth of it
WARMUP = 50
CHECKPOINT_EVERY = 25  # steps between checkpoints (and one on Ctrl-C)
CARD = "distil.json"  # what the student measured, beside its weights


@dataclasses.dataclass
class Student:
    """A written student: its folder and what ``distil`` measured (the card)."""

    path: Path
    card: dict[str, Any]


def blocks(lm: LanguageModel, samples: Iterable[bytes], block: int = BLOCK) -> np.ndarray:
    """The training sequences [n, block + 1]: every sample's tokens after the start token, as the compressor
    codes them, one stream cut into overlapping windows (each window's last token starts the next)."""
    stream = [t for s in samples if (ids := lm.tokenize(s)) for t in (lm.start_token, *ids)]
    n = (len(stream) - 1) // block
    if n < 2:
        raise ValueError(f"the samples hold {len(stream)} tokens of text; distillation needs at least {2 * block + 1}")
    flat = np.asarray(stream[: n * block + 1], np.int64)
    return np.stack([flat[i * block : i * block + block + 1] for i in range(n)])


def held_out(n: int) -> np.ndarray:
    """Which of ``n`` blocks are held out (at least one, never all)."""
    out = np.zeros(n, bool)
    out[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY] = True
    if not out.any():
        out[-1] = True
    return out


def student_config(teacher: dict, shape: Shape, start_token: int) -> Any:
    """A llama configuration of ``shape`` with the teacher's vocabulary, start token (as the training data has it),
    special tokens, positions and norms."""
    from transformers import LlamaConfig

    rope = teacher.get("rope_parameters") or {"rope_type": "default", "rope_theta": teacher.get("rope_theta", 1e4)}
    return LlamaConfig(
        vocab_size=teacher["vocab_size"],
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=teacher.get("max_position_embeddings", 8192),
        rms_norm_eps=teacher.get("rms_norm_eps", 1e-5),
        rope_parameters=rope,
        tie_word_embeddings=True,
        bos_token_id=start_token,
        eos_token_id=teacher.get("eos_token_id"),
        pad_token_id=teacher.get("pad_token_id"),
    )


def projected_embeddings(embeddings: torch.Tensor, hidden: int) -> torch.Tensor:
    """The teacher's embeddings [V, d] on their ``hidden`` leading principal directions [V, hidden] (zeros past the
    d-th), scaled to the teacher's mean row norm: a start that already tells similar tokens alike."""
    e = embeddings.float()
    _, _, vh = torch.linalg.svd(e - e.mean(0), full_matrices=False)
    out = torch.zeros(len(e), hidden)
    out[:, : min(hidden, len(vh))] = e @ vh[:hidden].T
    return out * (e.norm(dim=1).mean() / out.norm(dim=1).mean().clamp_min(1e-12))


def _hf_quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def teacher_targets(
    teacher: Any, data: np.ndarray, device: torch.device, progress: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """The teacher's top-``TOP_K`` next tokens and their log-probabilities at every position of every block, and
    its bits on each block's own tokens (what the student is measured against)."""
    n, length = data.shape
    ids = np.zeros((n, length - 1, TOP_K), np.int32)
    logp = np.zeros((n, length - 1, TOP_K), np.float16)
    bits = np.zeros(n, np.float64)
    rows = max(1, 2048 // length)
    with torch.inference_mode():
        for i in range(0, n, rows):
            x = torch.from_numpy(data[i : i + rows]).to(device)
            lp = torch.log_softmax(teacher(input_ids=x[:, :-1]).logits.float(), -1)
            top = lp.topk(TOP_K, -1)
            ids[i : i + rows] = top.indices.cpu().numpy()
            logp[i : i + rows] = top.values.cpu().numpy()
            own = lp.gather(-1, x[:, 1:, None])[..., 0]
            bits[i : i + rows] = (-own.sum(1) / math.log(2)).double().cpu().numpy()
            if progress is not None:
                progress(len(x))
    return {"ids": ids, "logp": logp, "bits": bits}


def loss(
    logits: torch.Tensor, targets: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor, soft_weight: float
) -> torch.Tensor:
    """``soft_weight`` × cross-entropy against the teacher's top-k (renormalised) + the rest × against the data."""
    lp = torch.log_softmax(logits.float(), -1)
    hard = -lp.gather(-1, targets[..., None])[..., 0]
    soft = -(torch.softmax(top_logp.float(), -1) * lp.gather(-1, top_ids)).sum(-1)
    return (soft_weight * soft + (1 - soft_weight) * hard).mean()


def learning_rate(done: float) -> float:
    """The rate at ``done`` (0 to 1) of the run, after ``WARMUP`` steps' linear rise (applied by the caller)."""
    return LEARNING_RATE * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))


def parameters(shape: Shape, vocab: int) -> int:
    """A student's parameter count (tied embeddings)."""
    d, kv = shape.hidden, shape.kv_heads * shape.head_dim
    attention = d * shape.heads * shape.head_dim * 2 + d * kv * 2
    return vocab * d + shape.layers * (attention + 3 * d * shape.intermediate + 2 * d) + d


def distil(
    lm: LanguageModel,
    samples: Iterable[bytes],
    out: Path,
    shape: Shape = PRESETS[DEFAULT_PRESET],
    steps: int = DEFAULT_STEPS,
    minutes: float | None = None,
    device: str | torch.device | None = None,
    block: int = BLOCK,
    batch: int = BATCH,
    progress: Callable[[str, int, int], None] | None = None,
    force: bool = False,
    soft_weight: float = SOFT_WEIGHT,
) -> Student:
    """Train a student of ``lm`` on ``samples`` and write it to the folder ``out``.

    ``steps`` batches of ``batch`` blocks, or fewer where ``minutes`` of training run out first (the rate's decay
    follows whichever ends sooner). ``progress(stage, done, total)`` is told of the teacher's pass ("teacher") and
    of training ("training"). A run stopped by Ctrl-C (or killed) resumes from its last checkpoint when called
    again with the same teacher, samples and settings. ``soft_weight`` 0 trains on the data alone (with the
    teacher's tokenizer and projected embeddings): the baseline that shows what the teacher adds.
    """
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    _hf_quiet()
    if lm.source is None:
        raise ValueError(f"model {lm.name!r} has no float weights to distil from")
    if out.exists() and not force:
        raise FileExistsError(f"output {out} already exists; use -f to overwrite")
    if steps < 1 or batch < 1 or (minutes is not None and minutes <= 0) or not 0 <= soft_weight <= 1:
        raise ValueError("steps and batch must be at least 1, minutes more than 0, the soft weight 0 to 1")
    where = device_for(device)
    data = blocks(lm, samples, block)
    hold = held_out(len(data))
    train_rows = np.flatnonzero(~hold)
    teacher_config = json.loads((lm.source / "config.json").read_text())
    # the teacher's targets depend on the teacher and the blocks; a checkpoint on every setting of the run too
    targets_key = _digest([lm.model_id, block, TOP_K], data)
    run_key = _digest([targets_key, dataclasses.asdict(shape), steps, minutes, batch, soft_weight], data)
    work = out.parent / f".{out.name}.distil"
    work.mkdir(parents=True, exist_ok=True)
    targets_file, checkpoint_file = work / f"targets-{targets_key}.npz", work / f"checkpoint-{run_key}.pt"

    def tell(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        teacher = AutoModelForCausalLM.from_pretrained(lm.source, dtype=torch.float32).eval()
    if targets_file.exists():
        with np.load(targets_file) as cached:
            targets = {k: cached[k] for k in cached.files}
    else:
        teacher.to(where)
        done = 0

        def counted(k: int) -> None:
            nonlocal done
            done += k
            tell("teacher", done, len(data))

        targets = teacher_targets(teacher, data, where, counted)
        _save_atomic(
            targets_file, lambda f: np.savez(f, ids=targets["ids"], logp=targets["logp"], bits=targets["bits"])
        )

    torch.manual_seed(0)
    config = student_config(teacher_config, shape, lm.start_token)
    student: Any = LlamaForCausalLM(config)
    with torch.no_grad():
        embeddings = teacher.get_input_embeddings().weight.to("cpu")
        student.get_input_embeddings().weight.copy_(projected_embeddings(embeddings, shape.hidden))
    del teacher, embeddings
    student.to(where).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.01)
    generator = np.random.default_rng(0)
    step, elapsed = 0, 0.0
    if checkpoint_file.exists():
        state = torch.load(checkpoint_file, weights_only=True)  # tensors and numbers: no pickled code
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        generator.bit_generator.state = state["generator"]
        step, elapsed = state["step"], state["elapsed"]

    def save_checkpoint() -> None:
        state = {
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.bit_generator.state,
            "step": step,
            "elapsed": elapsed,
        }
        _save_atomic(checkpoint_file, lambda f: torch.save(state, f))

    budget = None if minutes is None else minutes * 60
    top_ids, top_logp = torch.from_numpy(targets["ids"]), torch.from_numpy(targets["logp"])
    tensors = torch.from_numpy(data)
    started = time.perf_counter() - elapsed
    try:
        while step < steps and (budget is None or elapsed < budget):
            fraction = max(step / steps, 0.0 if budget is None else elapsed / budget)
            rate = learning_rate(fraction) * min(1.0, (step + 1) / WARMUP)
            for group in optimizer.param_groups:
                group["lr"] = rate
            rows = torch.from_numpy(generator.choice(train_rows, size=batch))
            x = tensors[rows].to(where)
            logits = student(input_ids=x[:, :-1]).logits
            value = loss(logits, x[:, 1:], top_ids[rows].long().to(where), top_logp[rows].to(where), soft_weight)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - started
            tell("training", step, steps)
            if step % CHECKPOINT_EVERY == 0:
                save_checkpoint()
    except BaseException:
        save_checkpoint()
        raise
    save_checkpoint()

    student.eval()
    student_bits = _bits(student, data[hold], where)
    teacher_bits = float(targets["bits"][hold].sum())
    held_bytes = sum(len(lm.detokenize([t for t in b[1:] if t != lm.start_token])) for b in data[hold])
    card = {
        "teacher": lm.name,
        "teacher_model_id": lm.model_id,
        "shape": dataclasses.asdict(shape),
        "parameters": parameters(shape, config.vocab_size),
        "steps": step,
        "minutes": round(elapsed / 60, 1),
        "device": str(where),
        "tokens": int(data[:, 1:].size),
        "held_out_tokens": int(data[hold, 1:].size),
        "held_out_bytes": held_bytes,
        "student_bits_per_byte": round(student_bits / max(held_bytes, 1), 4),
        "teacher_bits_per_byte": round(teacher_bits / max(held_bytes, 1), 4),
        "soft_targets": TOP_K,
        "soft_weight": soft_weight,
    }
    _write_student(student, lm, out, card, force)
    shutil.rmtree(work, ignore_errors=True)
    return Student(out, card)


def _digest(settings: list, data: np.ndarray) -> str:
    return hashlib.sha256(json.dumps(settings).encode() + data.tobytes()).hexdigest()[:16]


def _bits(model: Any, data: np.ndarray, device: torch.device) -> float:
    """A model's bits on each block's own tokens, summed (float: what the card reports, not what coding pays)."""
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(data), 4):
            x = torch.from_numpy(data[i : i + 4]).to(device)
            lp = torch.log_softmax(model(input_ids=x[:, :-1]).logits.float(), -1)
            total += float(-lp.gather(-1, x[:, 1:, None]).sum()) / math.log(2)
    return total


def _save_atomic(target: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def card_text(card: dict) -> str:
    """The model card: what the student is and what it measured, for a person."""
    shape = card["shape"]
    return (
        f"# A student of {card['teacher']}\n\n"
        f"Distilled by `lmpress distil`: a llama of {shape['layers']} layers of {shape['hidden']} "
        f"({card['parameters']:,} parameters) with the teacher's tokenizer, taught on {card['tokens']:,} tokens "
        f"from the teacher's top {card['soft_targets']} next tokens and the data's own "
        f"({card['steps']:,} steps, {card['minutes']} minutes on {card['device']}).\n\n"
        f"On {card['held_out_bytes']:,} held-out bytes: {card['student_bits_per_byte']:.3f} bits/byte, against the "
        f"teacher's {card['teacher_bits_per_byte']:.3f} (float; coding adds the online models).\n\n"
        f"Use: `lmpress compress --model FOLDER FILE`; archives name it by model id {card['model_id']} and decode "
        f"with it only. The teacher is model id {card['teacher_model_id']}.\n"
    )


def _write_student(student: Any, lm: LanguageModel, out: Path, card: dict, force: bool) -> None:
    """The model folder (safetensors, config, tokenizer, card), which appears at ``out`` only when complete."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        student.to("cpu").save_pretrained(tmp)
        if lm.source is not None and (lm.source / "tokenizer.json").exists():
            shutil.copyfile(lm.source / "tokenizer.json", tmp / "tokenizer.json")
        else:
            lm.tokenizer.save(str(tmp / "tokenizer.json"))
        card["model_id"] = load_model(str(tmp)).model_id  # the exact engine takes it, and names it so
        (tmp / CARD).write_text(json.dumps(card, indent=1) + "\n")
        (tmp / "README.md").write_text(card_text(card))
        if out.exists() and force:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

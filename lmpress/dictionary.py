"""Dictionaries: a model's personal memory of one kind of data, as ``zstd --train`` builds for zstd.

A dictionary holds either or both of:

- a *primed context*: a few hundred to a few thousand tokens of text chosen from a user's samples. Every chunk's
  context starts with them (after the start token), so a small file is coded by a model that has just read
  typical records of its kind, instead of from nothing;
- an *adapter*: a low-rank (LoRA) fine-tune of the model on the samples (``train_adapter``, with peft), merged
  into the model's float weights exactly (``exact.arithmetic.merge_low_rank``) and quantised into the integer
  engine when used, so every machine computes the same adapted model.

The archive names the dictionary by its id, and decoding needs the same dictionary file.

Choosing the text is first a covering problem, solved greedily as zstd's COVER algorithm does for bytes: each
sample is a segment (long ones are cut into pieces of ``SEGMENT`` tokens); every token trigram scores the number
of segments it occurs in, less one (text seen once teaches nothing about the others); the segment whose
not-yet-covered trigrams score most is taken next. When every shared trigram is in, the rest of the space goes
to the most typical segments (highest mean score per trigram): a model learns a format from several examples
of it, not from one. The first segment chosen ends up last, nearest the data.

File layout (``.lmpd``, little-endian, varints as in docs/FORMAT.md): magic ``LMPD``, u8 version (1), u8 kind
(flags: 1 primed context, 2 adapter), 8 bytes model id, varint n, n varint token ids; with the adapter flag a
varint length and that many bytes of safetensors (``{weight name}.lora_a`` [r, K] and ``.lora_b`` [N, r], binary32,
the LoRA scale folded into b), then the 8-byte id of the adapted model; then u32 crc32 of every byte before it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import os
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .codec import format as fmt
from .errors import DictionaryMismatchError, FormatError
from .models import adapted

MAGIC = b"LMPD"
VERSION = 1
KIND_PRIMED, KIND_ADAPTER = 1, 2  # flags
DEFAULT_TOKENS = 1024  # a dictionary's default size: half the default context window
PRIMED_SIZES = (256, 512, 1024)  # the sizes ``lmpress train`` tries (``tuning``), up to half the level's window
ADAPTER_RANK, ADAPTER_STEPS, ADAPTER_BLOCK, ADAPTER_BATCH = 8, 100, 256, 4  # LoRA rank, steps, tokens, blocks a step
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GRAM = 3  # tokens per n-gram that the selection counts
SEGMENT = 128  # tokens per candidate segment
_HEAD = struct.Struct("<4sBB")
_MAX_FILE = 1 << 30  # bytes: an adapter of a large model


@dataclass(frozen=True)
class Dictionary:
    """Token ids that every context starts with, and an adapter's factors (safetensors bytes), for the model
    named by ``model_id``."""

    model_id: str
    tokens: tuple[int, ...] = ()
    adapter: bytes = b""
    adapted_id: str = ""  # the id of the model with the adapter merged in, where the dictionary was made

    @property
    def kind(self) -> int:
        return (KIND_PRIMED if self.tokens else 0) | (KIND_ADAPTER if self.adapter else 0)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter's low-rank pairs (a, b) by the name of the weight they change."""
        try:
            tensors = load_tensors(self.adapter)
        except Exception as e:  # safetensors reports malformed bytes with its own exception types
            raise FormatError(f"corrupted dictionary {self.id} (its adapter: {e})") from None
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        if set(tensors) != {f"{n}.{part}" for n in names for part in ("lora_a", "lora_b")}:
            raise FormatError(f"corrupted dictionary {self.id} (its adapter's tensors do not pair up)")
        return {n: (tensors[f"{n}.lora_a"], tensors[f"{n}.lora_b"]) for n in names}

    def to_bytes(self) -> bytes:
        body = _HEAD.pack(MAGIC, VERSION, self.kind) + bytes.fromhex(self.model_id)
        body += fmt.uvarint(len(self.tokens)) + b"".join(fmt.uvarint(t) for t in self.tokens)
        if self.adapter:
            body += fmt.uvarint(len(self.adapter)) + self.adapter + bytes.fromhex(self.adapted_id)
        return body + struct.pack("<I", zlib.crc32(body))

    @functools.cached_property
    def id(self) -> str:
        """What an archive names the dictionary by: the first 4 bytes of the sha256 of its file (hex)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[: 2 * fmt.DICTIONARY_ID_BYTES]

    def for_model(self, lm) -> Dictionary:
        """This dictionary, unless it was built for another model than ``lm`` (its tokens would mean other text)."""
        if self.model_id != lm.model_id:
            raise DictionaryMismatchError(
                f"dictionary {self.id} was built for the model with id {self.model_id}, not for {lm.name!r} "
                f"(id {lm.model_id}); use that model, or train a dictionary for this one"
            )
        if max(self.tokens, default=0) >= lm.net.cfg.vocab_size:
            raise FormatError(f"corrupted dictionary {self.id} (a token outside the model's vocabulary)")
        return self

    @classmethod
    def from_bytes(cls, data: bytes) -> Dictionary:
        if len(data) < _HEAD.size or data[:4] != MAGIC:
            raise FormatError("not an lmpress dictionary (bad magic bytes)")
        _, version, kind = _HEAD.unpack_from(data)
        if version != VERSION or kind not in (1, 2, 3):
            raise FormatError(f"unsupported dictionary (version {version}, kind {kind}); upgrade lmpress")
        short = len(data) < _HEAD.size + fmt.MODEL_ID_BYTES + 5
        if short or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise FormatError("corrupted dictionary (checksum mismatch)")
        body = data[:-4]
        offset = _HEAD.size + fmt.MODEL_ID_BYTES
        try:
            n, offset = fmt.read_uvarint(body, offset)
            tokens = []
            for _ in range(min(n, fmt.MAX_WINDOW)):
                token, offset = fmt.read_uvarint(body, offset)
                tokens.append(token)
            adapter, adapted_id = b"", ""
            if kind & KIND_ADAPTER:
                size, offset = fmt.read_uvarint(body, offset)
                adapter, offset = bytes(body[offset : offset + size]), offset + size
                adapted_id, offset = body[offset : offset + fmt.MODEL_ID_BYTES].hex(), offset + fmt.MODEL_ID_BYTES
        except fmt._NeedMore:
            raise FormatError("corrupted dictionary (cut short)") from None
        if (
            n > fmt.MAX_WINDOW
            or offset != len(body)
            or bool(tokens) != bool(kind & KIND_PRIMED)
            or not (adapter or not kind & KIND_ADAPTER)
        ):
            raise FormatError("corrupted dictionary (its fields do not match its size and kind)")
        return cls(body[_HEAD.size : _HEAD.size + fmt.MODEL_ID_BYTES].hex(), tuple(tokens), adapter, adapted_id)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Dictionary:
        try:
            with open(path, "rb") as f:
                if f.read(4) != MAGIC:
                    raise FormatError("not an lmpress dictionary (bad magic bytes)")
                if os.fstat(f.fileno()).st_size > _MAX_FILE:
                    raise FormatError("not an lmpress dictionary (too large)")
                return cls.from_bytes(MAGIC + f.read())
        except FormatError as e:
            raise FormatError(f"{os.fspath(path)}: {e}") from None


def select(samples: Iterable[list[int]], size: int = DEFAULT_TOKENS) -> list[int]:
    """At most ``size`` tokens from tokenized samples: whole samples (long ones in pieces of ``SEGMENT``), first
    by greedy cover of the trigrams they share, then, when every shared trigram is in, the most typical."""
    segments = []
    for ids in samples:
        step = len(ids) if len(ids) <= 2 * SEGMENT else SEGMENT
        segments += [ids[a : a + step] for a in range(0, len(ids), step)]
    grams = [{tuple(s[i : i + GRAM]) for i in range(len(s) - GRAM + 1)} for s in segments]
    weight = Counter(g for gs in grams for g in gs)  # segments each trigram occurs in
    covered: set[tuple[int, ...]] = set()

    def score(i: int) -> int:
        return sum(weight[g] - 1 for g in grams[i] if g not in covered)

    heap = [(-score(i), i) for i in range(len(segments))]
    heapq.heapify(heap)
    chosen, total = [], 0
    while heap and total < size:
        stale, i = heapq.heappop(heap)
        now = score(i)
        if now <= 0:
            heapq.heappush(heap, (0, i))
            break  # every trigram that segments share is in
        if -stale != now and heap and now < -heap[0][0]:  # scores only fall: re-queue a stale one (lazy greedy)
            heapq.heappush(heap, (-now, i))
            continue
        chosen.append(i)
        covered |= grams[i]
        total += len(segments[i])

    def typicality(i: int) -> float:
        return sum(weight[g] - 1 for g in grams[i]) / max(1, len(grams[i]))

    for i in sorted((i for _, i in heap), key=lambda i: (-typicality(i), i)):  # made most of what others share
        if total >= size or typicality(i) <= 0:
            break
        chosen.append(i)
        total += len(segments[i])
    return [t for i in reversed(chosen) for t in segments[i]][-size:]


def train(
    lm, samples: Iterable[bytes], size: int = DEFAULT_TOKENS, progress: Callable[[int], None] | None = None
) -> Dictionary:
    """A primed-context dictionary for ``lm`` from sample texts (those that are not text are skipped)."""
    if not 1 <= size <= fmt.MAX_WINDOW:
        raise ValueError(f"a dictionary holds 1 to {fmt.MAX_WINDOW} tokens")
    tokenized = []
    for sample in samples:
        ids = lm.tokenize(sample)
        if ids:
            tokenized.append(ids)
        if progress is not None:
            progress(len(sample))
    tokens = select(tokenized, size)
    if not tokens:
        raise ValueError("the samples share no text to build a dictionary from (give more samples of one kind)")
    return Dictionary(lm.model_id, tuple(tokens))


def train_adapter(
    lm,
    samples: Iterable[bytes],
    steps: int = ADAPTER_STEPS,
    rank: int = ADAPTER_RANK,
    primer: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Dictionary:
    """A dictionary whose adapter is a LoRA fine-tune of ``lm``'s float weights on the samples (peft; AdamW on
    ``steps`` batches of ``ADAPTER_BATCH`` blocks of ``ADAPTER_BLOCK`` tokens, each sample after the start token,
    as the compressor codes it), and, with ``primer`` tokens, a primed context as ``train`` chooses it too.
    ``progress`` is called with 1 after each step."""
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ImportError("training an adapter needs peft: pip install 'lmpress[adapter]'") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if lm.source is None:
        raise ValueError(f"model {lm.name!r} has no float weights to train an adapter on")
    tokenized = [ids for s in samples if (ids := lm.tokenize(s))]
    stream = [t for ids in tokenized for t in (lm.start_token, *ids)]
    if len(stream) < 2:
        raise ValueError("the samples hold no text to train an adapter on")
    block = min(ADAPTER_BLOCK, len(stream))
    data = torch.tensor(stream)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(ADAPTER_TARGETS))
    with warnings.catch_warnings():  # transformers' deprecation notices are not the user's business
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(lm.source, dtype=torch.float32), config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - block + 1, (ADAPTER_BATCH,), generator=generator)
        batch = torch.stack([data[s : s + block] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(1)
    factors = {}
    for name, module in model.named_modules():
        if "default" in getattr(module, "lora_A", {}):  # a layer peft wrapped
            weight = name.removeprefix("base_model.model.") + ".weight"
            a = module.lora_A["default"].weight.detach().float().contiguous()
            b = (module.lora_B["default"].weight.detach().float() * module.scaling["default"]).contiguous()
            factors[f"{weight}.lora_a"], factors[f"{weight}.lora_b"] = a, b
    tokens = tuple(select(tokenized, primer)) if primer else ()
    dictionary = Dictionary(lm.model_id, tokens, save_tensors(factors))
    merged = adapted(lm, dictionary.factors(), "adapter")
    return dataclasses.replace(dictionary, adapted_id=merged.model_id)

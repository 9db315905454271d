"""A student written by ``lmpress distil`` against its teacher, on held-out files of the kind it was taught: archive
sizes, bits per byte and each direction's speed, with xz -9e and paq8px -8 beside (where installed), one run.

Both models are loaded and warmed first, so lmpress's times are the coding's alone (the peers' are whole commands,
which load nothing). The student's card (what ``distil`` measured on its held-out blocks) goes into the report.

    lmpress distil train/ -o student --minutes 25
    python benchmarks/distillation.py --student student held-out/* --out benchmarks/distillation
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import lmpress
from lmpress import distillation

from suite.measuring import PEERS, measure_peer, publish, script_meta

PEER_NAMES = ("xz -9e", "paq8px -8")


def timed(lm, data: bytes) -> dict:
    started = time.perf_counter()
    blob = lmpress.compress(data, lm)
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    if lmpress.decompress(blob, lm) != data:
        raise SystemExit("a round trip was not exact")
    return {"bytes_out": len(blob), "compress_s": compress_s, "decompress_s": time.perf_counter() - started}


def row(name: str, size: int, r: dict) -> str:
    def cell(k: str) -> str:
        return f"{r[k]['bytes_out']:,} ({8 * r[k]['bytes_out'] / size:.3f})" if k in r else "–"

    def speed(k: str) -> str:
        if k not in r:
            return "–"
        return f"{size / r[k]['compress_s'] / 1e3:.1f} / {size / r[k]['decompress_s'] / 1e3:.1f}"

    t, s = r["teacher"], r["student"]
    faster = f"{t['compress_s'] / s['compress_s']:.1f}× / {t['decompress_s'] / s['decompress_s']:.1f}×"
    return (
        f"| {name} | {size:,} | {cell('xz -9e')} | {cell('paq8px -8')} | {cell('teacher')} | {cell('student')} | "
        f"{r['xz -9e']['bytes_out'] / s['bytes_out']:.2f}× | {speed('teacher')} | {speed('student')} | "
        f"{speed('paq8px -8')} | {faster} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="held-out files of the student's kind")
    p.add_argument("--student", type=Path, required=True, help="the folder lmpress distil wrote")
    p.add_argument("--teacher", help="the teacher (default: the default model)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/distillation"))
    args = p.parse_args()
    card = json.loads((args.student / distillation.CARD).read_text())
    models = {"teacher": lmpress.load_model(args.teacher), "student": lmpress.load_model(str(args.student))}
    warm = b"<page><title>warm</title> the kernels up</page>\n" * 20
    for lm in models.values():
        assert lmpress.decompress(lmpress.compress(warm, lm), lm) == warm
    peers = [peer for peer in PEERS if peer.name in PEER_NAMES and shutil.which(peer.compress[0])]
    results, lines = {}, []
    for path in args.files:
        data = path.read_bytes()
        r = {name: timed(lm, data) for name, lm in models.items()}
        r |= {peer.name: measure_peer(peer, data) for peer in peers}
        results[path.name] = {"bytes": len(data), **r}
        lines.append(row(path.name, len(data), r))
        print(lines[-1], file=sys.stderr)
    gap = card["student_bits_per_byte"] / card["teacher_bits_per_byte"] - 1
    text = "\n".join(
        [
            f"A student of {card['teacher']} ({card['parameters'] / 1e6:.1f} M parameters: {card['shape']['layers']} "
            f"layers of {card['shape']['hidden']}), {card['steps']:,} steps in {card['minutes']} minutes on "
            f"{card['device']}, taught on {card['tokens']:,} tokens. On its {card['held_out_bytes']:,} held-out bytes "
            f"(float, as `distil` measures): {card['student_bits_per_byte']:.3f} bits/byte against the teacher's "
            f"{card['teacher_bits_per_byte']:.3f} ({gap:+.0%}).",
            "",
            "Held-out files, default level; archive bytes (bits/byte); speeds in KB/s, compress / decompress "
            "(lmpress's with the model loaded; the peers' whole commands).",
            "",
            "| file | bytes | xz -9e | paq8px -8 | teacher | student | xz / student | teacher KB/s | student KB/s | "
            "paq8px KB/s | student faster (c / d) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *lines,
        ]
    )
    publish(args.out, script_meta("distillation.py"), results, text, card=card)


if __name__ == "__main__":
    main()

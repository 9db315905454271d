"""The benchmark's tables: totals per group of files, the bits-per-byte table, every figure, the notes on how
they were measured, and the README's results section."""

from __future__ import annotations

from pathlib import Path

from .drawing import chart

MARKERS = ("<!-- results -->", "<!-- /results -->")


def derive(r: dict) -> dict:
    r["bits_per_byte"] = 8 * r["bytes_out"] / max(r["bytes"], 1)
    r["compress_kbps"] = r["bytes"] / 1000 / max(r["compress_s"], 1e-9)
    r["decompress_kbps"] = r["bytes"] / 1000 / max(r["decompress_s"], 1e-9)
    if r.get("model_steps"):  # lmpress's rows of runs that counted them
        r["tokens_per_step"] = r["tokens"] / r["model_steps"]
        r["guess_hit_pct"] = 100 * r["guesses_right"] / max(r["guesses_checked"], 1)
    return r


def totals(rows: list[dict], name: str, label: str) -> dict:
    keys = ("bytes", "bytes_out", "compress_s", "decompress_s", "tokens", "ideal_bits", "lm_bytes_out", "model_steps")
    keys += ("guesses_checked", "guesses_right")
    t = {k: sum(r.get(k, 0) or 0 for r in rows) for k in keys}
    t.update(compressor=name, file=label, files=len(rows), exact=all(r["exact"] for r in rows))
    t["rss_kib"] = max(r["rss_kib"] for r in rows)
    return derive(t)


def groups(rows: list[dict]) -> dict[str, set[str]]:
    """The sets of files totalled: all; the text files (of which the first lmpress coded at least half the bytes
    with the model); the fresh files (2026 text, which no model can have memorised), when there are any."""
    first = rows[0]["compressor"]
    files = {r["file"] for r in rows}
    out = {"total": files}
    text = {r["file"] for r in rows if r["compressor"] == first and r["lm_bytes_in"] >= r["bytes"] / 2}
    if text and text != files:
        out["total (text files)"] = text
    fresh = {f for f in files if f.startswith("fresh/")}
    if fresh and fresh != files:
        out["total (fresh/, 2026)"] = fresh
    return out


def summary(rows: list[dict], meta: dict) -> list[dict]:
    """Totals per group and compressor; the first lmpress total also gets its coding overhead and roofline share."""
    compressors = list(dict.fromkeys(r["compressor"] for r in rows))
    out = [
        totals([r for r in rows if r["compressor"] == c and r["file"] in files], c, label)
        for label, files in groups(rows).items()
        for c in compressors
    ]
    lm = out[0]
    lm["overhead_pct"] = 100 * (lm["lm_bytes_out"] * 8 / lm["ideal_bits"] - 1) if lm["ideal_bits"] else 0.0
    lm["flops_per_byte"] = meta["flops_per_token"] * lm["tokens"] / max(lm["bytes"], 1)
    for key, seconds in (("roofline_pct", "compress_s"), ("decode_roofline_pct", "decompress_s")):
        lm[key] = 100 * meta["flops_per_token"] * lm["tokens"] / lm[seconds] / meta["roofline_gflops"] / 1e9
    if "engine_ops_per_token" in meta:  # results of older runs lack it
        at_roofline = meta["engine_ops_per_token"] * lm["tokens"] / meta["roofline_gflops"] / 1e9
        lm["products_share_pct"] = 100 * at_roofline / lm["compress_s"]
    mine = [r for r in rows if r["compressor"] == lm["compressor"]]
    if all(r.get("float_ideal_bits") is not None for r in mine):
        lm["float_ideal_bits"] = sum(r["float_ideal_bits"] for r in mine)
        lm["lm_bytes_in"] = sum(r["lm_bytes_in"] for r in mine)
        lm["float_bits_per_byte"] = lm["float_ideal_bits"] / max(lm["lm_bytes_in"], 1)
    return out


def full_table(rows: list[dict], xz: dict[str, int]) -> str:
    """One line per compressor and file (or total): every measured figure."""
    lines = [
        "| compressor | file | bytes | compressed | bits/byte | vs xz -9e | compress KB/s | decompress KB/s | "
        "decompress / compress speed | tokens / model step (guesses right) | peak RSS MiB | exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        vs = r["bytes_out"] / xz[r["file"]] if xz.get(r["file"]) else float("nan")
        steps = f"{r['tokens_per_step']:.2f} ({r['guess_hit_pct']:.0f} %)" if r.get("tokens_per_step") else "–"
        lines.append(
            f"| {r['compressor']} | {r['file']} | {r['bytes']:,} | {r['bytes_out']:,} | "
            f"{r['bits_per_byte']:.3f} | {vs:.3f}× | {r['compress_kbps']:.2f} | {r['decompress_kbps']:.2f} | "
            f"{r['compress_s'] / max(r['decompress_s'], 1e-9):.2f} | {steps} | {r['rss_kib'] / 1024:.0f} | "
            f"{'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def bits_table(rows: list[dict], total_rows: list[dict], xz: dict[str, int]) -> str:
    """Files down, compressors across, bits per byte in the cells; the smallest of each line in bold."""
    compressors = list(dict.fromkeys(r["compressor"] for r in rows))
    cell = {(r["file"], r["compressor"]): r for r in total_rows + rows}
    first = compressors[0]
    lines = [
        f"| file | bytes | {' | '.join(compressors)} | {first} vs xz -9e |",
        "|---|---:|" + "---:|" * (len(compressors) + 1),
    ]
    for name in dict.fromkeys(r["file"] for r in total_rows + rows):
        line = [cell.get((name, c)) for c in compressors]
        best = min(r["bytes_out"] for r in line if r)
        bits = [
            "–"
            if r is None
            else f"**{r['bits_per_byte']:.3f}**"
            if r["bytes_out"] == best
            else f"{r['bits_per_byte']:.3f}"
            for r in line
        ]
        vs = f"{line[0]['bytes_out'] / xz[name]:.3f}×" if line[0] and xz.get(name) else "–"
        label = f"**{name}**" if name.startswith("total") else name
        lines.append(f"| {label} | {line[0]['bytes'] if line[0] else 0:,} | {' | '.join(bits)} | {vs} |")
    return "\n".join(lines)


def notes(meta: dict, lm: dict) -> str:
    out = [
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}`"
        + (f" (first {meta['prefix']:,} bytes of each file)" if meta["prefix"] else "")
        + (f", resumed {', '.join(meta['resumed'])}" if meta.get("resumed") else "")
        + f"; finished {meta['finished']}. Every output was decompressed by its own compressor and compared.",
        "Text files: those of which lmpress coded at least half the bytes with the model (on the others it falls "
        "back to LZMA2). fresh/: files written in 2026, which a model trained before then cannot have memorised.",
        f"lmpress {meta['lmpress_version']} (engine {meta['engine']}), model {lm['model']} (loaded in "
        f"{meta['load_s']:.1f} s), torch {meta['torch']}, {meta['cpu']}: {lm['tokens']:,} tokens, ideal code length "
        f"{lm['ideal_bits'] / 8:,.0f} bytes, range-coder overhead {lm['overhead_pct']:.2f}%.",
        f"Exact-product roofline of this machine: {meta['roofline_gflops']:.0f} GOP/s "
        f"({meta.get('roofline_backend', meta['gemm'])}, the model's "
        f"weight products with 8-bit operands), {meta['flops_per_token'] / 1e6:.0f} MOP per token; lmpress at "
        f"{lm['roofline_pct']:.1f}% of it compressing and {lm['decode_roofline_pct']:.1f}% decompressing"
        + (
            f". Its own products, with its 16-bit activations counted as two int8 rows each, are "
            f"{meta['engine_ops_per_token'] / 1e6:.0f} MOP per token: at the roofline's rate they alone would take "
            f"{lm['products_share_pct']:.0f}% of the compressing time."
            if "products_share_pct" in lm
            else "."
        ),
        *(
            [
                f"The float model (float32, what lmpress 0.1 coded with) on the same chunks: "
                f"{lm['float_bits_per_byte']:.4f} bits/byte of model-coded text against the integer engine's "
                f"{lm['ideal_bits'] / max(lm['lm_bytes_in'], 1):.4f} ideal and "
                f"{8 * lm['lm_bytes_out'] / max(lm['lm_bytes_in'], 1):.4f} coded: "
                f"{100 * (lm['lm_bytes_out'] * 8 / lm['float_ideal_bits'] - 1):+.2f}% bits."
            ]
            if lm.get("float_ideal_bits")
            else []
        ),
    ]
    out += [f"Skipped: {s}." for s in meta["skipped"]]
    return "\n".join(f"- {n}" for n in out)


def report(results: dict, out: Path, readme: Path | None, draw: bool) -> str:
    """results.md (summary, bits-per-byte table, every figure), chart.png, and the README's results section."""
    rows = sorted(results["files"], key=lambda r: r["file"])  # stable: compressors keep their order per file
    total_rows, meta = results["totals"], results["meta"]
    xz = {r["file"]: r["bytes_out"] for r in total_rows + rows if r["compressor"] == "xz -9e"}
    lm = {**total_rows[0], "model": next(iter(meta["models"]))}
    overall = [t for t in total_rows if t["file"] == "total"]
    summary_md = f"{full_table(overall, xz)}\n\nBits per byte (lower is better):\n\n{bits_table(rows, total_rows, xz)}"
    (out / "results.md").write_text(
        f"{summary_md}\n\n{notes(meta, lm)}\n\nEvery total and file:\n\n{full_table(total_rows + rows, xz)}\n"
    )
    if draw:
        chart(rows, overall, out / "chart.png")
    if readme:
        text = readme.read_text()
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        readme.write_text(f"{text[:start]}\n{summary_md}\n\n{notes(meta, lm)}\n{text[end:]}")
    return summary_md

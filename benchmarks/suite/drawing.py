"""The benchmark's chart: bits per byte against compression throughput, per file and in total."""

from __future__ import annotations

from pathlib import Path


def chart(rows: list[dict], totals_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = plt.get_cmap("tab10" if len(totals_rows) <= 10 else "tab20").colors  # a colour of its own each
    for i, t in enumerate(totals_rows):
        c = colours[i % len(colours)]
        mine = [r for r in rows if r["compressor"] == t["compressor"]]
        ax.scatter([r["compress_kbps"] for r in mine], [r["bits_per_byte"] for r in mine], s=10, color=c, alpha=0.35)
        ax.scatter([t["compress_kbps"]], [t["bits_per_byte"]], s=70, color=c, label=t["compressor"], edgecolor="k")
    ax.set_xscale("log")
    ax.set_xlabel("compression throughput, KB/s (log scale)")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Compressors on the benchmark files (large: total, small: per file)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)

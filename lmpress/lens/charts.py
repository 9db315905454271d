"""The lens's chart: bits per byte of each model on each group of documents, with their bootstrap intervals."""

from __future__ import annotations

from pathlib import Path


def bits_chart(rows: list[dict], path: Path) -> None:
    """A PNG of ``measure``'s summary rows: one bar per model (and engine) in each group ("total" without groups),
    its interval as an error bar where it has one. Needs matplotlib (ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.get("group") or "total" for r in rows))
    models = list(dict.fromkeys(f"{r['model']} ({r['engine']})" for r in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(models) ** 0.5 + 3), 4.5), dpi=120)
    for k, model in enumerate(models):
        mine = {r.get("group") or "total": r for r in rows if f"{r['model']} ({r['engine']})" == model}
        at = [(i, mine[g]) for i, g in enumerate(groups) if g in mine]
        xs = [i + (k - (len(models) - 1) / 2) * width for i, _ in at]
        ys = [r["bits_per_byte"] for _, r in at]
        low = [r["ci_low"] if isinstance(r.get("ci_low"), float) else r["bits_per_byte"] for _, r in at]
        high = [r["ci_high"] if isinstance(r.get("ci_high"), float) else r["bits_per_byte"] for _, r in at]
        errors = [[max(0.0, y - lo) for y, lo in zip(ys, low)], [max(0.0, hi - y) for y, hi in zip(ys, high)]]
        ax.bar(xs, ys, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel("bits per byte (lower: the model knows the text better)")
    intervals = any(isinstance(r.get("ci_low"), float) for r in rows)
    title = "Bits per byte by model" + (" and group" if len(groups) > 1 else "")
    ax.set_title(title + (" (95 % bootstrap intervals)" if intervals else ""))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

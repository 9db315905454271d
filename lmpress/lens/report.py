"""``lmpress show``: one self-contained HTML page of which tokens surprised the model.

No network: styles, script, data and chart are all inline. Each token is a span coloured by its bits;
hovering shows its probability, rank and the model's top alternatives.
"""

from __future__ import annotations

import html
import json

import numpy as np

from .analysis import memorised_spans
from .scores import TokenScores

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header,section{max-width:1100px;margin:0 auto;padding:12px 20px}
h1{font-size:20px;margin:8px 0}
table.s{border-collapse:collapse}table.s td,table.s th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
table.s th:first-child,table.s td:first-child{text-align:left}
.doc{white-space:pre-wrap;font:13px/1.6 ui-monospace,monospace;background:#fff;border:1px solid #ddd;padding:12px;
 word-break:break-word}
.t{cursor:default;border-radius:2px}.t:hover{outline:1px solid #000}
#tip{position:fixed;display:none;background:#222;color:#fff;padding:8px 10px;border-radius:6px;font:12px/1.4 monospace;
 pointer-events:none;max-width:380px;z-index:10;white-space:pre}
.legend span{display:inline-block;width:26px;height:12px}
.views button{margin-right:6px}.hidden{display:none}
ol.spans li{margin:4px 0}ol.spans code{background:#fff;border:1px solid #ddd;padding:0 3px;white-space:pre-wrap}
"""

_SCRIPT = """
const D = JSON.parse(document.getElementById('data').textContent);
const tip = document.getElementById('tip');
function show(e){
  const t = e.target.closest('.t'); if(!t){tip.style.display='none';return;}
  const i = +t.dataset.i, k = D.tokens[i];
  let s = 'token ' + JSON.stringify(k[0]) + '\\n' + k[1].toFixed(2) + ' bits   p = ' + Math.pow(2,-k[1]).toPrecision(3)
        + '   rank ' + k[2];
  if (D.diff) s += '\\n' + D.names[1] + ': ' + D.diff[i].toFixed(2) + ' bits more than ' + D.names[0];
  if (k[3] && k[3].length) s += '\\n\\ntop alternatives:\\n' + k[3].map(a => '  ' + JSON.stringify(a[0]).padEnd(18)
        + ' ' + a[1].toFixed(3)).join('\\n');
  tip.textContent = s; tip.style.display = 'block';
  tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 400) + 'px'; tip.style.top = (e.clientY + 16) + 'px';
}
document.addEventListener('mousemove', show);
for (const b of document.querySelectorAll('.views button')) b.onclick = () => {
  for (const v of document.querySelectorAll('.view')) v.classList.toggle('hidden', v.id !== b.dataset.view);
};
"""


def _surprise_colour(bits: float) -> str:
    """White for free tokens through yellow to red for ~16+ bits."""
    x = min(bits / 16.0, 1.0) ** 0.6
    return f"hsl({60 - 60 * x:.0f},100%,{100 - 45 * x:.0f}%)"


def _diff_colour(d: float) -> str:
    """Blue where the first model needs fewer bits, red where the second does."""
    x = min(abs(d) / 8.0, 1.0)
    return f"hsl({210 if d > 0 else 0},90%,{100 - 40 * x:.0f}%)"


def _spans_html(texts: list[str], colours: list[str]) -> str:
    # CR as a character reference: the HTML parser would turn a literal one into LF.
    return "".join(
        f'<span class="t" data-i="{i}" style="background:{c}">{html.escape(t).replace(chr(13), "&#13;")}</span>'
        for i, (t, c) in enumerate(zip(texts, colours))
    )


def _chart(bits: list[float], width: int = 1060, height: int = 160) -> str:
    """Inline SVG: bits per token along the document, as a moving average over 32 tokens."""
    if not bits:
        return ""
    smooth = np.convolve(np.asarray(bits), np.ones(32) / 32, mode="same") if len(bits) >= 32 else np.asarray(bits)
    top = max(float(smooth.max()), 1.0)
    step = width / max(len(smooth) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - 4 - (height - 8) * v / top:.1f}" for i, v in enumerate(smooth))
    return (
        f'<svg id="chart" width="{width}" height="{height + 18}" viewBox="0 0 {width} {height + 18}" '
        f'role="img" aria-label="bits per token along the document">'
        f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ddd"/>'
        f'<polyline fill="none" stroke="#c33" stroke-width="1.2" points="{points}"/>'
        f'<text x="4" y="14" font-size="11">{top:.1f} bits</text>'
        f'<text x="4" y="{height + 14}" font-size="11">start</text>'
        f'<text x="{width - 40}" y="{height + 14}" font-size="11">end</text></svg>'
    )


def _char_bits(scores: TokenScores) -> np.ndarray:
    """Each token's bits spread evenly over its characters, so models with different tokenizers compare."""
    per_char = []
    for text, b in zip(scores.text, scores.bits):
        per_char.extend([b / len(text)] * len(text) if text else [])
        if not text and per_char:
            per_char[-1] += b
    return np.asarray(per_char)


def render(title: str, names: list[str], scores: list[TokenScores], xz_bpb: float) -> str:
    """The page for one document under one model, or two (``names[1]``'s bits compared with ``names[0]``'s)."""
    a = scores[0]
    bits = a.bits
    tokens = [
        [t, round(b, 3), r, [[alt, round(p, 4)] for alt, p in (a.top[i] if a.top else [])]]
        for i, (t, b, r) in enumerate(zip(a.text, a.bits, a.rank))
    ]
    data: dict = {"names": names, "tokens": tokens}
    rows = []
    for name, s in zip(names, scores):
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(s.engine)}</td><td>{s.n_bytes:,}</td><td>{len(s.bits):,}</td>"
            f"<td>{s.total_bits:,.0f}</td><td>{s.bits_per_byte:.3f}</td><td>{s.bits_per_byte / xz_bpb:.3f}×</td></tr>"
        )
    views = [("surprise", "Bits per token", _spans_html(a.text, [_surprise_colour(b) for b in bits]))]
    if len(scores) > 1:
        ca, cb = _char_bits(a), _char_bits(scores[1])
        n = min(len(ca), len(cb))
        ca, cb = ca[:n], cb[:n]
        diff, pos = [], 0
        for text in a.text:
            diff.append(float(cb[pos : pos + len(text)].sum() - ca[pos : pos + len(text)].sum()))
            pos += len(text)
        data["diff"] = [round(d, 3) for d in diff]
        views.append(
            (
                "diff",
                f"{names[1]} minus {names[0]} (blue: {names[0]} needs fewer bits; red: {names[1]} does)",
                _spans_html(a.text, [_diff_colour(d) for d in diff]),
            )
        )
    worst = sorted(range(len(bits)), key=lambda i: -bits[i])[:8]
    surprising = "".join(
        f"<li><code>{html.escape(''.join(a.text[max(0, i - 6) : i]))}<b>{html.escape(a.text[i])}</b>"
        f"{html.escape(''.join(a.text[i + 1 : i + 4]))}</code> {bits[i]:.1f} bits</li>"
        for i in worst
    )
    predictable = (
        "".join(
            f"<li><code>{html.escape(''.join(a.text[s:e])[:300])}</code> {e - s} tokens, {sum(bits[s:e]):.1f} bits</li>"
            for s, e in sorted(memorised_spans(a), key=lambda s: s[0] - s[1])[:5]
        )
        or "<li>none of 32 or more tokens</li>"
    )
    buttons = "".join(f'<button data-view="{v}">{html.escape(label.split(" (")[0])}</button>' for v, label, _ in views)
    body = "".join(
        f'<div class="view{"" if i == 0 else " hidden"}" id="{v}"><h2>{html.escape(label)}</h2>'
        f'<div class="doc">{spans}</div></div>'
        for i, (v, label, spans) in enumerate(views)
    )
    legend = "".join(
        f'<span style="background:{_surprise_colour(b)}" title="{b} bits"></span>' for b in range(0, 17, 2)
    )
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lmpress: {html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<header><h1>{html.escape(title)}</h1>
<table class="s"><tr><th>model</th><th>engine</th><th>bytes</th><th>tokens</th><th>bits</th><th>bits/byte</th>
<th>vs xz -9e</th></tr>
{"".join(rows)}
<tr><td>xz -9e</td><td></td><td></td><td></td><td></td><td>{xz_bpb:.3f}</td><td>1.000×</td></tr></table></header>
<section><h2>Bits along the document</h2>{_chart(bits)}</section>
<section><h2>Most surprising tokens</h2><ol class="spans">{surprising}</ol>
<h2>Most predictable spans</h2><ol class="spans">{predictable}</ol></section>
<section><p class="legend">0 bits {legend} 16+ bits &nbsp; <span class="views">{buttons}</span></p>{body}</section>
<div id="tip"></div>
<script type="application/json" id="data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""

"""The benchmark of benchmarks/run.py, in three parts: measuring, reporting, drawing; and where every benchmark
script finds the corpora."""

from pathlib import Path

BENCH = (Path(__file__).resolve().parents[3] / "shared" / "bench").resolve()  # resolved: ../shared may be a link
HELD_OUT = [  # 2026 files no model can have memorised, and a book for prose: the mixing and decoding benchmarks'
    "fresh/eol_gitlab.json",
    "fresh/crush_swagger.json",
    "fresh/uv_CHANGELOG.md",
    "fresh/uv_docs_internals_metadata.md",
    "fresh/claude-code_security-guidance_llm.py",
    "canterbury/alice29.txt",
]

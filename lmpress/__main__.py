"""``python -m lmpress`` and the ``lmpress`` command.

Ctrl-C is answered here, in one line and exit status 130, wherever it lands: in the seconds the command's modules
take to import torch, or during work (``cli.main`` has cleaned up its outputs on the way out).
"""

import os
import sys

EXIT_INTERRUPTED = 130


def run() -> None:
    try:
        from .cli import main

        status = main()
    except KeyboardInterrupt:
        print("lmpress: interrupted", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)  # skip interpreter teardown under a signal, with torch perhaps half-imported
    sys.exit(status)


if __name__ == "__main__":
    run()

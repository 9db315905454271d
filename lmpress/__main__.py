"""``python -m lmpress`` and the ``lmpress`` command.

The command's modules import torch, which takes seconds; a Ctrl-C meanwhile gets the same one line and exit status
as one during work (``cli.main`` handles those), not a traceback.
"""

import os
import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("lmpress: interrupted", file=sys.stderr, flush=True)
        os._exit(130)  # cli.EXIT_INTERRUPTED; a half-imported torch is no state to tear down
    sys.exit(main())


if __name__ == "__main__":
    run()

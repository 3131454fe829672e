"""The ``sanitize`` console script: a small door in front of :func:`sanitize.cli.root.main`.

Importing the command line takes a few tenths of a second (torch and the detectors load later,
when a command runs, and are covered by the command line's own handler). A Ctrl-C or a
termination signal in that first moment would otherwise end in a traceback and Python's exit
code 1, the code of a failed gate; here it is one line and 130 / 128 + signal, like an
interrupt during the run.
"""

from __future__ import annotations

import sys

from .exits import Terminated, catch_termination, stopped


def main() -> None:
    catch_termination()
    try:
        from .cli.root import main as run
    except (KeyboardInterrupt, Terminated) as exc:
        line, code = stopped(exc)
        print(line, file=sys.stderr)
        sys.exit(code)
    run()

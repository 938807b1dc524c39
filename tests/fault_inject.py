"""Runs ``neurflow`` with a fault: ``python tests/fault_inject.py GLOB ARGS...`` is ``neurflow ARGS...``,
killed with SIGKILL when it is about to rename a written file whose path (or name) matches ``GLOB``
into place - the temporary file is written, the rename has not happened (docs/reliability.md).
The hook lives here, in the tests, not in the production path."""

import fnmatch
import os
import signal
import sys

from neurflow.cli import main

_replace = os.replace


def replace(src, dst, *args, **kwargs):
    pattern, name = sys.argv[1], os.fspath(dst)
    if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(os.path.basename(name), pattern):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


if __name__ == "__main__":
    os.replace = replace
    sys.exit(main(sys.argv[2:]))

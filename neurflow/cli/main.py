"""``neurflow``'s entry point: parse, run the command, print a ``NeurFlowError`` as one line with
this command's flags (exit code 2).
"""

from __future__ import annotations

import logging
import os
import sys

from ..errors import NeurFlowError
from ..progress import end_line, log_stream
from .commands import COMMANDS
from .parser import Parser, build_parser
from .terminal import SafeFormatter, SafeStream, printable

HINT_NAMES = {"directory": "DIR", "images": "--data", "labels": "--data", "experiment": "EXPERIMENT"}


def flag_namer(parser: Parser, command: str):
    """Python parameter name -> how the command ``command`` spells it (``top_k`` -> ``--top-k``),
    as ``parser`` (``build_parser()``) recorded while it was built."""
    spelled = {**HINT_NAMES, **parser.commands[command].spelled}
    return lambda name: spelled.get(name, name)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(log_stream())  # a log line never starts after a progress bar's carriage return
    handler.setFormatter(SafeFormatter("neurflow: %(message)s"))
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, handlers=[handler])
    stdout, sys.stdout = sys.stdout, SafeStream(sys.stdout)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away (`neurflow show DIR | head -1`) shows here, not at exit
        return code
    except BrokenPipeError:
        sys.stdout = stdout
        return _stdout_gone()
    except NeurFlowError as exc:
        _end_progress_line()
        print(f"neurflow: error: {printable(exc.render(flag_namer(parser, args.command)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_line()
        print("neurflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if isinstance(sys.stdout, SafeStream):
            sys.stdout = stdout


def _end_progress_line() -> None:
    """Errors start on their own line, not after a progress bar's carriage return."""
    end_line()


def _stdout_gone() -> int:
    """stdout's reader closed the pipe: exit quietly as ``git log | head`` does (141 = 128 + SIGPIPE).
    stdout goes to /dev/null so that Python's flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass
    return 141

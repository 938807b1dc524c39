"""The ``neurflow`` command line: a thin layer over the library.  ``flags``: flags generated from
the option dataclasses; ``parser``: one ``add_<command>`` per command (torch-free, built for every
``--help``); ``commands``: what each command runs; ``main``: the entry point."""

from .flags import add_flags, from_flags
from .main import flag_namer, main
from .parser import build_parser

__all__ = ["add_flags", "build_parser", "flag_namer", "from_flags", "main"]

"""User-facing errors: one clear line that names the parameter, what was expected,
what was given and a hint.  The CLI turns them into exit code 2 without a traceback.

Errors name *Python* parameters (``top_k``); a hint refers to another parameter as ``{p:name}``.
``str(error)`` shows them as Python names, ``error.render(flag_of)`` with the CLI's flags
(``--top-k``), so the library never needs to know the command line.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Iterable

_REF = re.compile(r"\{p:([A-Za-z_][A-Za-z0-9_]*)\}")


class NeurFlowError(Exception):
    """A mistake in what the user asked for (bad parameter, bad file, bad model)."""

    def __init__(self, parameter: str, expected: str, given: object, hint: str = ""):
        self.parameter = parameter
        self.expected = expected
        self.given = given
        self.hint = hint
        super().__init__(self.render())

    def render(self, name_of: Callable[[str], str] = lambda name: name) -> str:
        """The one-line message, with parameter names spelled by ``name_of``."""
        msg = f"{name_of(self.parameter)}: expected {self.expected}, got {self.given!r}"
        if self.hint:
            msg += f" ({_REF.sub(lambda m: name_of(m.group(1)), self.hint)})"
        return msg


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``: a count with its noun in the right number (messages, summaries)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        found = [c for c in choices if name and (name in c or c in name)][:n]
    return found


def unknown_name(parameter: str, name: str, choices: Iterable[str], hint: str = "") -> NeurFlowError:
    matches = close_matches(name, choices)
    parts = []
    if matches:
        parts.append("did you mean " + ", ".join(matches) + "?")
    if hint:
        parts.append(hint)
    return NeurFlowError(parameter, "a known name", name, "; ".join(parts))

"""User-facing errors: one clear line that names the parameter, what was expected,
what was given and a hint.  The CLI turns them into exit code 2 without a traceback."""
from __future__ import annotations

import difflib
from typing import Iterable


class NeurFlowError(Exception):
    """A mistake in what the user asked for (bad parameter, bad file, bad model)."""

    def __init__(self, parameter: str, expected: str, given: object, hint: str = ""):
        self.parameter = parameter
        self.expected = expected
        self.given = given
        self.hint = hint
        msg = f"{parameter}: expected {expected}, got {given!r}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


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

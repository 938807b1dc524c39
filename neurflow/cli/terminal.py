"""What the command line prints is shown, never obeyed: text from a run directory, a model, a data
folder or a labeler's answer (class names, file names, captions) may hold terminal control
sequences - clear the screen, move the cursor back over a line, start a fake ``neurflow: error:``
line with a carriage return, reorder text with bidirectional overrides.  Every character that
controls the terminal rather than shows is printed as its escape (``\\x1b``, ``\\u202e``), on
stdout (``SafeStream``) and in log lines and the error line (``printable``).

JSON output (``--json``) is unaffected: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import logging
import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional embeddings, overrides and
# isolates (Unicode's "Trojan source" characters)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = m.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: str) -> str:
    """``text`` with every terminal control character (but tab and newline) shown as its escape."""
    return _CONTROL.sub(_escape, text)


class SafeStream:
    """A text stream (stdout) that writes ``printable(text)``: what neurflow prints shows control
    characters instead of obeying them.  Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class SafeFormatter(logging.Formatter):
    """Log lines with their control characters shown (a caption logged as it is labelled, a file
    name in a warning)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))

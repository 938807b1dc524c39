"""Progress bars (tqdm) that ``--quiet`` silences, and lines that never start after a bar's
carriage return: ``end_line`` (what the CLI calls before it prints an error or the interrupt
message) and ``log_stream`` (the stream of the CLI's log lines)."""

from __future__ import annotations

import sys


class _Stderr:
    """``sys.stderr`` (looked up at every write: tests swap it) that remembers whether the last
    text a bar wrote left the cursor mid-line (a bar ends in ``\\r``, not ``\\n``)."""

    mid_line = False

    def write(self, text: str) -> int:
        if text:
            _Stderr.mid_line = not text.endswith("\n")
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def __getattr__(self, name):
        return getattr(sys.stderr, name)


class _LineStart(_Stderr):
    """``sys.stderr`` for whole lines (log records): a newline first when a bar left the cursor mid-line."""

    def write(self, text: str) -> int:
        if text and _Stderr.mid_line:
            sys.stderr.write("\n")
        return super().write(text)


def progress(total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, unit=unit, leave=False, dynamic_ncols=True, file=_Stderr())


def log_stream() -> _LineStart:
    return _LineStart()


def end_line() -> None:
    """Close the bars still open (an error or Ctrl-C left them), each as it stood, and end the
    line a bar left the cursor on: what goes to stderr next starts on a line of its own."""
    std = sys.modules.get("tqdm.std")  # not imported: no bar was ever shown
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        if getattr(bar, "fp", None) is not None and not bar.disable:
            bar.leave = True  # keep the bar where it stopped, then a newline
            try:
                bar.close()
            except Exception:  # noqa: BLE001 - the stream may be gone; the newline below still helps
                pass
    if _Stderr.mid_line:
        _Stderr.mid_line = False
        try:
            sys.stderr.write("\n")
        except Exception:  # noqa: BLE001
            pass

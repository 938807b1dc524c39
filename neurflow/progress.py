"""Progress bars (tqdm) that ``--quiet`` silences."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it"):
    return tqdm(total=total, desc=desc, disable=quiet, unit=unit, leave=False, dynamic_ncols=True)

"""Progress bars: off with --quiet, and off when stderr is not a terminal (logs, CI, pipes)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str, quiet: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr. `disable=None` is tqdm's 'only on a terminal'."""
    return tqdm(total=total, desc=desc, unit=unit, disable=True if quiet else None, **kwargs)

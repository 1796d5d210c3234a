"""Atomic files and directories: readers see the old content or the new, never half of it.

Every file pkd publishes goes through here: `atomic_write` / `write_json` for text,
`atomic_file` for writers that want a path (matplotlib), `staged_dir` for a directory built
aside and swapped in (a model, an export; `temp_dir` + `replace_dir` where the steps are
split, as for checkpoints that several processes write). What lands gets the modes the
umask gives (0644/0755 under umask 022), as files made with `open` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it without setting it (another thread may be creating files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a new file (or directory) gets under the umask: 0644 (0755) under 022."""
    return (0o777 if directory else 0o666) & ~_umask()


def publish_modes(root: Path) -> None:
    """Give `root` and everything in it the umask's modes.

    For trees written through `mkstemp`-style writers (safetensors writes 0600 files), so a
    model or cache moved into place is readable as any other file the user creates.
    """
    files, dirs = default_mode(), default_mode(directory=True)
    os.chmod(root, dirs)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, dirs if p.is_dir() else files)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; moved onto `path` when the block succeeds,
    removed when it fails. The file gets the umask's mode (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """Write a text file atomically (see `atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON (values JSON cannot hold as their str), atomically."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def temp_dir(path: Path) -> Path:
    """A new empty hidden directory beside `path` (`.NAME.tmp-XXXX`) to build it in, with the
    umask's mode (not mkdtemp's 0700, which would follow it into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, default_mode(directory=True))
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished directory `tmp` to `path`, replacing what is there.

    `tmp` gets the umask's modes first (`publish_modes`). An old `path` is moved aside and
    removed only after the swap, so `path` always holds the old tree or the new one.
    """
    publish_modes(tmp)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A `temp_dir` to fill; it replaces `path` when the block succeeds (`replace_dir`) and
    is removed when it fails, leaving `path` as it was."""
    tmp = temp_dir(path)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

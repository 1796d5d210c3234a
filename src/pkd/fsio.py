"""Atomic files and directories: readers see the old content or the new, never half of it.

Every file pkd publishes goes through here: `atomic_write` / `write_json` for text,
`atomic_file` for writers that want a path (matplotlib), `staged_dir` for a directory built
aside and swapped in (a model, an export; `temp_dir` + `replace_dir` where the steps are
split, as for checkpoints that several processes write). What lands gets the modes the
umask gives (0644/0755 under umask 022), as files made with `open` would.

Also the lock files that keep two processes out of one directory (`try_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
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


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (resolved)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_error(directory: Path) -> str | None:
    """Why nothing can be created in `directory`, or None when something can: a real write,
    as os.access says yes to root even on read-only file systems."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".pkd-write-test-"))
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------
# Lock files


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one we may not signal runs too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def lock_record(path: Path) -> dict:
    """What a lock file says of its holder: pid, host, command, started (empty when it
    cannot be read, e.g. while its holder is writing it)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, /proc/PID/stat field 22), to tell
    a reused pid from the one a lock recorded; None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # fields after "(comm)" from 3
    except (OSError, ValueError, IndexError):
        return None


def is_stale(record: dict) -> bool:
    """A lock whose holder is gone: a process of this host that no longer runs, or whose pid
    now belongs to another process (a restarted container reuses small pids)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if not process_alive(pid):
        return True
    started = record.get("pid_start")
    return started is not None and process_start(pid) not in (None, started)


def take_stale(path: Path, stale: dict) -> bool:
    """Remove the stale lock `path` if it still holds `stale`: moved aside first, so two
    processes that both read it stale never both remove it (the second would remove the
    first one's new lock); a fresh lock moved aside by mistake is put back."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process removed it: try to create ours
    if lock_record(aside) == stale:
        aside.unlink(missing_ok=True)
        return True
    with contextlib.suppress(OSError):  # not the stale one: give it back unless replaced
        os.link(aside, path)
    aside.unlink(missing_ok=True)
    return False


def try_lock(path: Path) -> tuple[bool, dict]:
    """Create the lock file `path` exclusively (O_CREAT|O_EXCL) with this process's record
    (pid, host, command line, start time).

    Returns (True, the stale record taken over or {}) when this process holds it now, or
    (False, the holder's record) when another process does. A lock left by a process of this
    host that no longer runs is taken over; one of another host is never (its pid means
    nothing here).
    """
    stale: dict = {}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, default_mode())
        except FileExistsError:
            record = lock_record(path)
            if not is_stale(record):
                return False, record
            stale = record
            if not take_stale(path, record):
                return False, lock_record(path)
            continue
        mine = {
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine) + "\n")
        return True, stale
    return False, lock_record(path)

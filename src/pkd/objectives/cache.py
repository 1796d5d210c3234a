"""Teacher cache: run the teacher once over the training set, keep its outputs on disk.

As in the authors' setup, student training never runs the teacher. Unlike their pickles,
the cache is keyed by a fingerprint of what determines its content (teacher weights, the
tokenised inputs, which already reflect tokenizer, data, max length and truncation, and
the label order), carries a manifest with per-file checksums, and is rebuilt, never read,
when any check fails.

Verified once: the files are hashed once, after they are written, and `verified.json` records
each file's stat stamp (size, mtime, ctime, inode) with its sha256. A load whose files still
have those stamps checks sizes, shapes and dtypes (the .npy headers) but reads no data; a
file with another stamp (touched, replaced, copied) is hashed in full and, when it matches
the manifest, its new stamp is recorded (atomically). `PKD_CACHE_VERIFY=full` hashes every
file on every load. Not caught without it: damage that leaves a file's size, mtime and ctime
as they were (bit rot on the disk, a write that bypasses the file system); the
file system's own writes, `os.utime` included, change the ctime.

The teacher's config counts too: settings that change its forward pass without changing its
weights (`hidden_act`, `layer_norm_eps`, `position_embedding_type`, the attention kernel, the
parameters' dtype) change the fingerprint; names, versions and pkd's own records do not.

Layout of `<root>/<task>-<fingerprint[:16]>/`:
    logits.npy  float32 (n, *logit_shape)       teacher logits per training example
    states.npy  float16 (n, *prefix, N+1, H)    pooled state of every teacher layer (0 = embeddings):
                                                [CLS], or the masked token mean for a mean-pooled
                                                teacher (`pkd.models.encoders.layer_states`)
    manifest.json
    verified.json  the files' stat stamps when last hashed
Rows are indexed by `example_index`, so shuffled batches read the right targets and any
layer map reuses the same cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pkd.errors import PkdError
from pkd.fsio import file_sha256, nearest_existing, temp_dir, write_error, write_json
from pkd.models.encoders import model_pooling
from pkd.objectives.objective import teacher_signals
from pkd.progress import progress

logger = logging.getLogger(__name__)

VERIFY_ENV = "PKD_CACHE_VERIFY"  # "full": hash every file on every load; "stat" (default)
FORMAT_VERSION = 3  # 2: the fingerprint covers the teacher's config and tensor dtypes;
# 3: states.npy holds the teacher's pooled states ([CLS] or token mean)

# Teacher config keys that cannot change its outputs in eval mode: names and versions, what
# pkd passes per call or records after training (keys starting with "pkd_"), dropout (off in
# eval mode), initialisation, and the dtype the config records (the parameters' own count).
IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "transformers_version",
        "architectures",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_cache",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        "initializer_range",
        "dtype",
        "torch_dtype",
    }
)


def default_root() -> Path:
    return Path(os.environ.get("PKD_CACHE_DIR", Path.home() / ".cache" / "pkd" / "teacher"))


def check_cache_dir(cache_dir: str | None) -> tuple[Path, Path]:
    """(the cache root, its nearest existing directory) for --cache-dir (default_root when
    None); refuses a root that is or lies under a file, or that cannot be written."""
    root = Path(cache_dir) if cache_dir else default_root()
    existing = nearest_existing(root)
    if not existing.is_dir():
        where = (
            "is a file"
            if existing == root.resolve()
            else f"cannot be created: {existing} is a file"
        )
        raise PkdError(f"--cache-dir: {root} {where}, not a directory; pass a directory")
    problem = write_error(existing)
    if problem:
        raise PkdError(
            f"--cache-dir: cannot write the teacher cache under {root}: {existing} is not "
            f"writable ({problem}); pass a writable --cache-dir"
        )
    return root, existing


def forward_config(config) -> dict:
    """The teacher config's settings that can change its outputs, with the attention kernel."""
    out = {
        k: v
        for k, v in config.to_dict().items()
        if k not in IGNORED_CONFIG_KEYS and not k.startswith("pkd_")
    }
    out["attn_implementation"] = getattr(config, "_attn_implementation", None)
    return out


def attention_kernel(teacher) -> str | None:
    """The attention implementation the teacher's encoder runs (of a `pkd.models.pooling` model,
    its encoder's, which has its own config)."""
    return getattr(teacher.base_model.config, "_attn_implementation", None)


def cache_extra(task: str, max_length: int, labels: Sequence[str] | None = None) -> dict:
    """What besides teacher weights and token ids decides the teacher cache's content: the
    task (`pkd pretrain`'s: `pretrain`), its label order (a task's), the max length."""
    extra: dict = {"task": task}
    if labels is not None:
        extra["labels"] = list(labels)
    return {**extra, "max_length": max_length, "truncation": True}


def fingerprint(teacher, features: dict[str, list], extra: dict) -> str:
    """sha256 over the teacher's weights (with their dtypes), the config settings that change
    its forward pass, the tokenised inputs, `extra` (labels, max length) and the format."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    settings = {**forward_config(teacher.config), "encoder_attention": attention_kernel(teacher)}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for key in sorted(features):
        rows = features[key]
        h.update(key.encode())
        h.update(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
        h.update(token_ids(rows))
    h.update(json.dumps(extra, sort_keys=True).encode())
    h.update(str(FORMAT_VERSION).encode())
    return h.hexdigest()


def token_ids(rows: Sequence) -> np.ndarray:
    """Every token id of `rows` in order, as one int64 array (no per-token Python loop).

    Multiple-choice rows are lists of per-choice lists: -1 follows each choice, so
    [[1, 2], [3]] != [[1], [2, 3]].
    """
    first = next((r for r in rows if len(r)), None)
    if first is not None and isinstance(first[0], list):
        choices = itertools.chain.from_iterable(rows)
        ids = itertools.chain.from_iterable(itertools.chain(c, (-1,)) for c in choices)
    else:
        ids = itertools.chain.from_iterable(rows)
    return np.fromiter(ids, dtype=np.int64)


@dataclass
class TeacherCache:
    """Memory-mapped teacher outputs for one training set."""

    path: Path
    logits: np.ndarray
    states: np.ndarray
    manifest: dict

    def targets(self, example_index: torch.Tensor, layers: list[int]):
        """Teacher logits and [CLS] states at `layers` for a batch, as float32 tensors.

        Returns:
            logits (B, *logit_shape) and pooled states (B, *prefix, len(layers), H).
        """
        idx = example_index.cpu().numpy()
        logits = torch.from_numpy(np.asarray(self.logits[idx], dtype=np.float32))
        states = torch.from_numpy(np.asarray(self.states[idx][..., layers, :], dtype=np.float32))
        return logits, states

    def record(self) -> dict:
        """Where it is, whether it was reused, its build time: a run's metrics.json entry."""
        m = self.manifest
        return {
            "path": str(self.path),
            "reused": m.get("reused"),
            "build_seconds": m.get("build_seconds"),
        }


def estimate_bytes(n: int, logit_shape: tuple, states_shape: tuple) -> int:
    return n * (int(np.prod(logit_shape)) * 4 + int(np.prod(states_shape)) * 2)


def teacher_shapes(config, choices: int = 0) -> tuple[tuple, tuple]:
    """Per-example shapes of the cached logits and [CLS] states for a teacher config.

    Multiple choice (choices > 0): (C,) and (C, N+1, H); otherwise (labels,) and (N+1, H).
    """
    states = (config.num_hidden_layers + 1, config.hidden_size)
    if choices:
        return (choices,), (choices, *states)
    return (max(1, config.num_labels),), states


def full_check() -> bool:
    """Whether `$PKD_CACHE_VERIFY` asks for every file to be hashed on every load."""
    mode = os.environ.get(VERIFY_ENV, "").strip().lower()
    if mode not in ("", "stat", "full"):
        raise PkdError(f"${VERIFY_ENV}: expected 'full' or 'stat', got {mode!r}")
    return mode == "full"


def file_stamp(f: Path, sha256: str) -> dict:
    """What a file's stat says of it (size, mtime, ctime, inode), with the sha256 its bytes
    had when hashed: equal stamps, and the bytes need not be read again."""
    st = f.stat()
    return {
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "sha256": sha256,
    }


def checked_stamp(f: Path, sha256: str) -> dict:
    """Hash `f` in full; its stamp, taken before the read (a write during it changes the
    file's times, so the next load hashes it again), when the bytes match `sha256`."""
    stamp = file_stamp(f, sha256)
    if file_sha256(f) != sha256:
        raise ValueError(f"{f.name} checksum differs from the manifest's")
    return stamp


def _read_stamps(path: Path) -> dict:
    """verified.json's stamps; {} when missing or unreadable (the files are then hashed)."""
    try:
        stamps = json.loads((path / "verified.json").read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _write_stamps(path: Path, stamps: dict) -> None:
    try:
        write_json(path / "verified.json", stamps)
    except OSError as e:  # a read-only cache: still usable, each load hashes it again
        logger.info("teacher cache: cannot record its check in %s (%s)", path, e)


def load_cache(path: Path, fp: str, full: bool = False) -> TeacherCache:
    """Open a cache dir, checking manifest, fingerprint, sizes, shapes, dtypes, and the
    checksums of files whose stat stamps differ from verified.json's (of all when `full`)."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError("no manifest")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("fingerprint") != fp:
        raise ValueError("fingerprint differs from the manifest's")
    stamps = _read_stamps(path)
    checked, arrays = {}, {}
    for name, dtype in (("logits", "float32"), ("states", "float16")):
        f = path / f"{name}.npy"
        meta = manifest["files"][name]
        if not f.is_file() or f.stat().st_size != meta["bytes"]:
            raise ValueError(f"{f.name} is missing or truncated")
        checked[name] = stamps.get(name)
        if full or checked[name] != file_stamp(f, meta["sha256"]):
            checked[name] = checked_stamp(f, meta["sha256"])
        arr = np.load(f, mmap_mode="r")  # reads the header; the data stay on disk
        if arr.dtype != np.dtype(dtype) or list(arr.shape) != meta["shape"]:
            raise ValueError(
                f"{f.name} has shape {arr.shape} {arr.dtype}, expected {meta['shape']}"
            )
        arrays[name] = arr
    if checked != stamps:
        _write_stamps(path, checked)
    return TeacherCache(path, arrays["logits"], arrays["states"], manifest)


@torch.no_grad()
def _run_teacher(teacher, dataset, collate, batch_size: int, device, show_progress: bool):
    """Yield (example indices, logits, pooled layer states) over the dataset, longest first."""
    order = np.argsort([-n for n in dataset.lengths()], kind="stable")  # little padding
    pooling = model_pooling(teacher.config)
    teacher.eval().to(device)
    bar = progress(len(order), "teacher cache", "ex", quiet=not show_progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([dataset[int(i)] for i in idx]).items()}
        # (B, [choices,] N+1, H), pooled as the teacher pools
        out, states = teacher_signals(teacher, batch, None, pooling)
        yield idx, out.logits.float().cpu().numpy(), states.cpu().numpy()
        bar.update(len(idx))
    bar.close()


def build_or_load(
    teacher,
    dataset,
    collate,
    task: str,
    extra: dict,
    root: Path | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> TeacherCache:
    """Return the valid cache for (teacher, dataset), building it if needed.

    Args:
        teacher: the fine-tuned teacher.
        dataset: the tokenised training split (`pkd.data.splits.EncodedSplit`).
        collate: batch collator (dynamic padding).
        task: task name, for the directory name.
        extra: other inputs to the fingerprint (label order, max length, truncation).
        root: cache root (default `$PKD_CACHE_DIR` or ~/.cache/pkd/teacher).

    A reused cache's files are hashed again only when their stat stamps changed, or all of
    them under `$PKD_CACHE_VERIFY=full`.
    """
    root = Path(root) if root else default_root()
    full = full_check()
    t0 = time.perf_counter()
    fp = fingerprint(teacher, dataset.features, extra)
    path = root / f"{task}-{fp[:16]}"
    if path.exists():
        try:
            cache = load_cache(path, fp, full)
            logger.info(
                "teacher cache: reusing %s (checked in %.1fs)", path, time.perf_counter() - t0
            )
            cache.manifest["reused"] = True
            return cache
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # incl. JSONDecodeError
            logger.warning("teacher cache %s is invalid (%s); rebuilding it", path, e)
            shutil.rmtree(path, ignore_errors=True)
    return _build(teacher, dataset, collate, path, fp, extra, batch_size, device, show_progress)


def _build(teacher, dataset, collate, path, fp, extra, batch_size, device, show_progress):
    # One forward on a single example tells the shapes of logits and [CLS] states.
    first = next(_run_teacher(teacher, _Subset(dataset, [0]), collate, 1, device, False))
    shapes = first[1].shape[1:], first[2].shape[1:]
    batches = _run_teacher(teacher, dataset, collate, batch_size, device, show_progress)
    info = {"pooling": model_pooling(teacher.config), **extra}
    return write_cache(path, fp, len(dataset), shapes, batches, info)


def write_cache(path: Path, fp: str, n: int, shapes: tuple, batches, info: dict) -> TeacherCache:
    """Write the cache at `path` from `batches` of (example indices, logits, states) and open
    it: built aside and moved into place, each file hashed once, after it is written.

    Args:
        shapes: per-example shapes of the logits and of the states (`teacher_shapes`).
        info: what else the manifest records (pooling, `extra`).
    """
    logit_shape, states_shape = (tuple(s) for s in shapes)
    size = estimate_bytes(n, logit_shape, states_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    logger.info("teacher cache: %d examples, %.1f MB at %s", n, size / 1e6, path)
    if free < size * 1.1:
        raise PkdError(
            f"--cache-dir: the teacher cache needs {size / 1e6:.0f} MB but {path.parent} has "
            f"{free / 1e6:.0f} MB free"
        )
    tmp = temp_dir(path)
    try:
        t0 = time.perf_counter()
        logits = np.lib.format.open_memmap(tmp / "logits.npy", "w+", np.float32, (n, *logit_shape))
        states = np.lib.format.open_memmap(tmp / "states.npy", "w+", np.float16, (n, *states_shape))
        for idx, lg, cs in batches:
            logits[idx] = lg
            states[idx] = cs
        logits.flush()
        states.flush()
        del logits, states
        seconds = time.perf_counter() - t0
        files, stamps = {}, {}
        for name in ("logits", "states"):
            f = tmp / f"{name}.npy"
            stamp = file_stamp(f, file_sha256(f))  # no write comes after: the stamp holds
            files[name] = {
                "shape": list(np.load(f, mmap_mode="r").shape),
                "bytes": stamp["bytes"],
                "sha256": stamp["sha256"],
            }
            stamps[name] = stamp
        manifest = {
            "format": FORMAT_VERSION,
            "fingerprint": fp,
            "examples": n,
            "teacher_layers": int(states_shape[-2]) - 1,
            "hidden_size": int(states_shape[-1]),
            "build_seconds": round(seconds, 3),
            "files": files,
            **info,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _write_stamps(tmp, stamps)  # a directory rename keeps the files' stamps
        try:
            # atomic: a half-built cache is never at `path`; not fsio.replace_dir, which
            # would replace a cache another process has just finished
            os.replace(tmp, path)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
            return load_cache(path, fp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("teacher cache: built in %.1fs", seconds)
    cache = load_cache(path, fp)
    cache.manifest["reused"] = False
    return cache


class _Subset(torch.utils.data.Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def lengths(self):
        return [self.dataset.lengths()[i] for i in self.indices]

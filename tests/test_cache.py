"""The teacher cache: built once, reused without the teacher, rebuilt on any change or damage."""

import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import write_sst2

from pkd.data.loading import collator, encode, load_split
from pkd.errors import PkdError
from pkd.models.encoders import load_finetuned, load_tokenizer
from pkd.objectives import cache as cache_mod
from pkd.objectives.objective import online_teacher
from pkd.tasks import get_task

SPEC = get_task("sst2")
LABEL2ID = {"0": 0, "1": 1}


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher):
    return load_tokenizer(str(tiny_teacher))


def encoded(data_dir, tokenizer, max_length=32):
    split = load_split(SPEC, "train", data_dir=str(data_dir))
    return encode(split, tokenizer, max_length, LABEL2ID, show_progress=False)


def extra(max_length=32):
    # what pkd.recipes.distill.distill puts in the fingerprint besides weights and token ids
    return {"task": "sst2", "labels": ["0", "1"], "max_length": max_length, "truncation": True}


class Counted:
    """The teacher with its forward calls counted."""

    def __init__(self, teacher):
        self.model = teacher
        self.calls = 0
        forward = teacher.forward

        def counting(*args, **kwargs):
            self.calls += 1
            return forward(*args, **kwargs)

        teacher.forward = counting  # an instance attribute: nn.Module.__call__ uses it


@pytest.fixture
def teacher(tiny_teacher):
    return Counted(load_finetuned(str(tiny_teacher)))


def build(teacher, dataset, tokenizer, root, max_length=32):
    return cache_mod.build_or_load(
        teacher.model,
        dataset,
        collator(tokenizer),
        "sst2",
        extra(max_length),
        root=root,
        batch_size=16,
        show_progress=False,
    )


def cache_dirs(root):
    return sorted(p.name for p in root.iterdir())


def test_build_then_reuse_without_teacher(teacher, tokenizer, sst2_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pkd.objectives.cache")
    root = tmp_path / "cache"
    data = encoded(sst2_dir, tokenizer)
    first = build(teacher, data, tokenizer, root)
    # 64 examples in batches of 16 = 4 forwards, plus 1 on a single example for the shapes
    assert teacher.calls == 5
    assert first.manifest["reused"] is False
    assert first.path.parent == root and first.path.name.startswith("sst2-")
    assert cache_dirs(root) == [first.path.name]  # no leftover .tmp dirs

    teacher.calls = 0
    caplog.clear()
    again = build(teacher, data, tokenizer, root)
    assert teacher.calls == 0
    assert again.manifest["reused"] is True
    assert again.path == first.path
    assert any("reusing" in r.getMessage() for r in caplog.records)
    assert np.array_equal(np.asarray(again.logits), np.asarray(first.logits))
    assert np.array_equal(np.asarray(again.states), np.asarray(first.states))


def test_default_root_is_env_var(teacher, tokenizer, sst2_dir, tmp_path):
    # conftest sets PKD_CACHE_DIR per test
    data = encoded(sst2_dir, tokenizer)
    cache = cache_mod.build_or_load(
        teacher.model, data, collator(tokenizer), "sst2", extra(), show_progress=False
    )
    assert cache.path.parent == tmp_path / "teacher-cache"


def test_manifest_records_shapes_and_checksums(teacher, tokenizer, sst2_dir, tmp_path):
    data = encoded(sst2_dir, tokenizer)
    cache = build(teacher, data, tokenizer, tmp_path / "cache")
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["examples"] == 64
    assert manifest["teacher_layers"] == 4
    assert manifest["hidden_size"] == 32
    assert manifest["files"]["logits"]["shape"] == [64, 2]
    assert manifest["files"]["states"]["shape"] == [64, 5, 32]  # (n, N+1, H), 0 = embeddings
    for name in ("logits", "states"):
        f = cache.path / f"{name}.npy"
        assert manifest["files"][name]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert manifest["files"][name]["bytes"] == f.stat().st_size
    assert len(manifest["fingerprint"]) == 64
    assert cache.path.name == f"sst2-{manifest['fingerprint'][:16]}"
    assert manifest["max_length"] == 32 and manifest["labels"] == ["0", "1"]
    assert cache.logits.dtype == np.float32 and cache.states.dtype == np.float16
    assert isinstance(cache.states, np.memmap)


def test_cached_targets_equal_online_targets(teacher, tokenizer, sst2_dir, tmp_path):
    data = encoded(sst2_dir, tokenizer)
    cache = build(teacher, data, tokenizer, tmp_path / "cache")
    online = online_teacher(teacher.model)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=gen)[:12].tolist()
    batch = collator(tokenizer)([data[i] for i in order])
    assert batch["example_index"].tolist() == order
    for layers in ([2], [1, 3], [0, 1, 2, 3, 4]):
        on_logits, on_cls = online(batch, layers)
        ca_logits, ca_cls = cache.targets(batch["example_index"], layers)
        assert ca_logits.shape == (12, 2) and ca_logits.dtype == torch.float32
        assert ca_cls.shape == on_cls.shape == (12, len(layers), 32)
        assert ca_cls.dtype == torch.float32
        assert torch.allclose(ca_logits, on_logits, atol=1e-5)
        assert torch.allclose(ca_cls, on_cls, atol=1e-2)  # fp16 storage
    # and the rows really are per example: a wrong order would not match
    wrong = cache.targets(batch["example_index"].roll(1), [2])[1]
    assert not torch.allclose(wrong, online(batch, [2])[1], atol=1e-2)


def test_changed_inputs_give_a_new_cache(teacher, tokenizer, sst2_dir, tiny_teacher, tmp_path):
    root = tmp_path / "cache"
    base = build(teacher, encoded(sst2_dir, tokenizer), tokenizer, root)

    # a changed data file (one more training example)
    other_dir = write_sst2(tmp_path / "SST-2-b", n_train=65)
    teacher.calls = 0
    more = build(teacher, encoded(other_dir, tokenizer), tokenizer, root)
    assert more.path != base.path and teacher.calls > 0
    assert more.manifest["examples"] == 65

    # the same file edited in place: one word of one sentence, same number of examples
    train = other_dir / "train.tsv"
    lines = train.read_text().splitlines()
    lines[1] = lines[1].replace("the", "a", 1) if "the" in lines[1] else "the " + lines[1]
    train.write_text("\n".join(lines) + "\n")
    teacher.calls = 0
    edited = build(teacher, encoded(other_dir, tokenizer), tokenizer, root)
    assert edited.path not in (base.path, more.path) and teacher.calls > 0
    assert edited.manifest["examples"] == 65

    # a changed max length: cuts the 7-token sentences, and is part of the fingerprint
    teacher.calls = 0
    short = build(teacher, encoded(sst2_dir, tokenizer, 5), tokenizer, root, max_length=5)
    assert short.path not in (base.path, more.path, edited.path) and teacher.calls > 0
    # same token ids (nothing reaches 64), different recorded max length: still a new cache
    teacher.calls = 0
    longer = build(teacher, encoded(sst2_dir, tokenizer, 64), tokenizer, root, max_length=64)
    assert longer.path not in (base.path, more.path, edited.path, short.path)
    assert teacher.calls > 0

    # changed teacher weights
    changed = Counted(load_finetuned(str(tiny_teacher)))
    with torch.no_grad():
        changed.model.classifier.bias.add_(1e-3)
    retrained = build(changed, encoded(sst2_dir, tokenizer), tokenizer, root)
    assert retrained.path not in (base.path, more.path, edited.path, short.path, longer.path)
    assert changed.calls > 0
    assert not np.allclose(np.asarray(retrained.logits), np.asarray(base.logits), atol=1e-6)

    assert len(cache_dirs(root)) == 6
    assert not [n for n in cache_dirs(root) if ".tmp" in n]

    # the original inputs still map to the original, untouched cache
    teacher.calls = 0
    assert build(teacher, encoded(sst2_dir, tokenizer), tokenizer, root).path == base.path
    assert teacher.calls == 0


def copy_with_config(src, dst, **changes):
    """A copy of a model dir whose config.json has `changes`; the same weight file."""
    shutil.copytree(src, dst)
    conf = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**conf, **changes}))
    return dst


def test_teacher_config_that_changes_the_forward_pass_gives_a_new_cache(
    teacher, tokenizer, sst2_dir, tiny_teacher, tmp_path
):
    """Same weights, a changed layer_norm_eps: other outputs, so a new cache. Keys that do
    not change the forward pass (pkd's records written after training, names, versions)
    find the old one."""
    root, data = tmp_path / "cache", encoded(sst2_dir, tokenizer)
    base = build(teacher, data, tokenizer, root)

    eps = Counted(
        load_finetuned(str(copy_with_config(tiny_teacher, tmp_path / "eps", layer_norm_eps=1e-3)))
    )
    other = build(eps, data, tokenizer, root)
    assert other.path != base.path and eps.calls > 0
    assert not np.allclose(
        np.asarray(other.states), np.asarray(base.states)
    )  # really other outputs

    renamed = copy_with_config(
        tiny_teacher, tmp_path / "renamed", transformers_version="5.0.0",
        pkd_dev_metric={"split": "dev", "name": "accuracy", "value": 0.9}, pkd_task="sst2",
    )  # fmt: skip
    same = Counted(load_finetuned(str(renamed)))
    again = build(same, data, tokenizer, root)
    assert again.path == base.path and again.manifest["reused"] is True and same.calls == 0


def test_fingerprint_covers_forward_settings_and_format_not_names(tiny_teacher, monkeypatch):
    model = load_finetuned(str(tiny_teacher))
    features, extra_ = {"input_ids": [[2, 7, 3]]}, {"max_length": 8}
    base = cache_mod.fingerprint(model, features, extra_)

    def changed(change) -> str:
        m = load_finetuned(str(tiny_teacher))
        change(m)
        return cache_mod.fingerprint(m, features, extra_)

    forward = {
        "hidden_act": lambda m: setattr(m.config, "hidden_act", "relu"),
        "layer_norm_eps": lambda m: setattr(m.config, "layer_norm_eps", 1e-5),
        "position_embedding_type": lambda m: setattr(m.config, "position_embedding_type", "relative_key"),
        "attention": lambda m: m.set_attn_implementation("eager"),
        "dtype": lambda m: m.to(torch.bfloat16),
    }  # fmt: skip
    for name, change in forward.items():
        assert changed(change) != base, name
    names = {
        "_name_or_path": lambda m: setattr(m.config, "_name_or_path", "elsewhere"),
        "transformers_version": lambda m: setattr(m.config, "transformers_version", "4.0.0"),
        "pkd_dev_metric": lambda m: m.config.update({"pkd_dev_metric": {"value": 1.0}}),
        "output_hidden_states": lambda m: setattr(m.config, "output_hidden_states", True),
    }
    for name, change in names.items():
        assert changed(change) == base, name
    monkeypatch.setattr(cache_mod, "FORMAT_VERSION", cache_mod.FORMAT_VERSION + 1)
    assert cache_mod.fingerprint(model, features, extra_) != base  # a new cache format


def _truncate_cls(path):
    f = path / "states.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_logits_byte(path):
    f = path / "logits.npy"
    built = f.stat().st_mtime_ns
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF  # in the data, past the .npy header: the shape still reads fine
    f.write_bytes(bytes(raw))
    # a write after the build: a coarse clock may give a quick one the build's mtime
    os.utime(f, ns=(built, built + 10**9))


def _wrong_fingerprint(path):
    f = path / "manifest.json"
    manifest = json.loads(f.read_text())
    manifest["fingerprint"] = "0" * 64
    f.write_text(json.dumps(manifest))


def _broken_manifest(path):
    (path / "manifest.json").write_text("{")


def _manifest_not_an_object(path):
    (path / "manifest.json").write_text("[]")


def _manifest_files_not_a_dict(path):
    f = path / "manifest.json"
    manifest = json.loads(f.read_text())
    manifest["files"] = ["logits", "states"]
    f.write_text(json.dumps(manifest))


def _no_manifest(path):
    (path / "manifest.json").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate_cls, "states.npy is missing or truncated"),
        (_flip_logits_byte, "logits.npy checksum differs"),
        (_wrong_fingerprint, "fingerprint differs"),
        (_broken_manifest, "is invalid"),
        (_manifest_not_an_object, "is invalid"),
        (_manifest_files_not_a_dict, "is invalid"),
        (_no_manifest, "no manifest"),
    ],
)
def test_damaged_cache_is_rebuilt(teacher, tokenizer, sst2_dir, tmp_path, caplog, damage, reason):
    root = tmp_path / "cache"
    data = encoded(sst2_dir, tokenizer)
    good = build(teacher, data, tokenizer, root)
    logits, cls = np.array(good.logits), np.array(good.states)
    del good
    damage(next(root.iterdir()))

    teacher.calls = 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pkd.objectives.cache"):
        rebuilt = build(teacher, data, tokenizer, root)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "is invalid" in message and "rebuilding" in message and reason in message
    assert teacher.calls == 5  # the teacher ran again
    assert rebuilt.manifest["reused"] is False
    assert np.array_equal(np.asarray(rebuilt.logits), logits)
    assert np.array_equal(np.asarray(rebuilt.states), cls)
    assert cache_dirs(root) == [rebuilt.path.name]

    # and the rebuilt cache is good: reused silently
    teacher.calls = 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pkd.objectives.cache"):
        assert build(teacher, data, tokenizer, root).manifest["reused"] is True
    assert teacher.calls == 0
    assert not caplog.records


def test_failed_build_leaves_no_tmp_dir(teacher, tokenizer, sst2_dir, tmp_path):
    root = tmp_path / "cache"
    data = encoded(sst2_dir, tokenizer)
    forward = teacher.model.forward

    def fail_late(*args, **kwargs):
        if teacher.calls >= 3:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    teacher.model.forward = fail_late
    with pytest.raises(RuntimeError, match="out of memory"):
        build(teacher, data, tokenizer, root)
    assert cache_dirs(root) == []


# ---------------------------------------------------------------------------------------------
# Verified once: stat stamps instead of re-reading the files


@pytest.fixture
def hashes(monkeypatch):
    """The files cache.py hashes, in order."""
    seen = []
    real = cache_mod.file_sha256

    def counting(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(cache_mod, "file_sha256", counting)
    return seen


def stamps(path):
    return json.loads((path / "verified.json").read_text())


def test_files_are_hashed_once_at_build_and_not_on_load(
    teacher, tokenizer, sst2_dir, tmp_path, hashes
):
    data = encoded(sst2_dir, tokenizer)
    first = build(teacher, data, tokenizer, tmp_path / "cache")
    assert hashes == ["logits.npy", "states.npy"]  # once each, after writing
    recorded = stamps(first.path)
    for name in ("logits", "states"):
        f = first.path / f"{name}.npy"
        assert recorded[name]["sha256"] == first.manifest["files"][name]["sha256"]
        assert recorded[name]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert recorded[name]["bytes"] == f.stat().st_size
        assert recorded[name]["mtime_ns"] == f.stat().st_mtime_ns
        assert recorded[name]["ino"] == f.stat().st_ino

    hashes.clear()
    for _ in range(3):  # each process, each sweep trial
        again = build(teacher, data, tokenizer, tmp_path / "cache")
        assert again.manifest["reused"] is True and teacher.calls == 5
    assert hashes == []
    assert np.array_equal(np.asarray(again.states), np.asarray(first.states))


def test_touched_file_is_hashed_again_and_its_stamp_recorded(
    teacher, tokenizer, sst2_dir, tmp_path, hashes, caplog
):
    data = encoded(sst2_dir, tokenizer)
    path = build(teacher, data, tokenizer, tmp_path / "cache").path
    f = path / "states.npy"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 5 * 10**9))  # same bytes, other mtime
    hashes.clear()
    with caplog.at_level(logging.WARNING, logger="pkd.objectives.cache"):
        again = build(teacher, data, tokenizer, tmp_path / "cache")
    assert not caplog.records and again.manifest["reused"] is True and teacher.calls == 5
    assert hashes == ["states.npy"]  # only the touched file
    assert stamps(path)["states"]["mtime_ns"] == st.st_mtime_ns - 5 * 10**9  # recorded

    hashes.clear()
    build(teacher, data, tokenizer, tmp_path / "cache")
    assert hashes == []  # the new stamp holds

    (path / "verified.json").write_text("{")  # unreadable stamps: every file hashed again
    assert build(teacher, data, tokenizer, tmp_path / "cache").manifest["reused"] is True
    assert hashes == ["logits.npy", "states.npy"]
    assert set(stamps(path)) == {"logits", "states"}


def test_full_verification_catches_what_the_stamps_cannot(
    teacher, tokenizer, sst2_dir, tmp_path, hashes, monkeypatch, caplog
):
    """Damage that keeps a file's stat stamp (bit rot) is the case the stamps accept not
    catching; PKD_CACHE_VERIFY=full hashes every file and rebuilds the cache."""
    data = encoded(sst2_dir, tokenizer)
    good = build(teacher, data, tokenizer, tmp_path / "cache")
    path, logits = good.path, np.array(good.logits)
    del good
    _flip_logits_byte(path)
    recorded = stamps(path)  # as if the file's stat had not changed
    sha = recorded["logits"]["sha256"]
    recorded["logits"] = cache_mod.file_stamp(path / "logits.npy", sha)
    (path / "verified.json").write_text(json.dumps(recorded))

    hashes.clear()
    unchecked = build(teacher, data, tokenizer, tmp_path / "cache")
    assert hashes == [] and unchecked.manifest["reused"] is True
    assert not np.array_equal(np.asarray(unchecked.logits), logits)  # not caught
    del unchecked

    monkeypatch.setenv("PKD_CACHE_VERIFY", "full")
    teacher.calls = 0
    with caplog.at_level(logging.WARNING, logger="pkd.objectives.cache"):
        rebuilt = build(teacher, data, tokenizer, tmp_path / "cache")
    assert "logits.npy checksum differs" in caplog.text and "rebuilding" in caplog.text
    assert teacher.calls == 5 and rebuilt.manifest["reused"] is False
    assert np.array_equal(np.asarray(rebuilt.logits), logits)

    hashes.clear()
    assert build(teacher, data, tokenizer, tmp_path / "cache").manifest["reused"] is True
    assert hashes == ["logits.npy", "states.npy"]  # full: every load hashes every file

    monkeypatch.setenv("PKD_CACHE_VERIFY", "sometimes")  # refused before any work
    teacher.calls = 0
    with pytest.raises(PkdError, match="PKD_CACHE_VERIFY: expected 'full' or 'stat', got"):
        build(teacher, data, tokenizer, tmp_path / "other")
    assert teacher.calls == 0 and not (tmp_path / "other").exists()


def test_token_ids_in_bulk_keep_rows_and_choices_apart():
    assert cache_mod.token_ids([[1, 2], [3]]).tolist() == [1, 2, 3]
    assert cache_mod.token_ids([[[1, 2], [3]], [[4], []]]).tolist() == [1, 2, -1, 3, -1, 4, -1, -1]
    assert cache_mod.token_ids([[[1], [2, 3]]]).tolist() == [1, -1, 2, 3, -1]
    assert cache_mod.token_ids([]).dtype == np.int64

"""Transfer sets (`--transfer-file`) and gradient shares on tiny random BERTs."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import sentiment_rows

from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
from pkd.config.sections import DataConfig, DistillConfig, TrainConfig
from pkd.data.splits import EncodedSplit, Split
from pkd.data.transfer import TransferMix, spread, with_transfer
from pkd.recipes.distill import distill
from pkd.recipes.finetune import finetune
from pkd.tasks import CLASSIFICATION, IGNORE_LABEL

DATA = {"task": "sst2", "max_length": 16}


def write_transfer(path: Path, n: int, seed: int = 7, header: str = "index\tsentence") -> Path:
    """Unlabelled sentences laid out as a GLUE SST-2 test file."""
    rows = [f"{i}\t{s}" for i, (s, _) in enumerate(sentiment_rows(n, seed))]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert, sst2_dir) -> Path:
    out = tmp_path_factory.mktemp("transfer") / "teacher"
    cfg = FinetuneRunConfig(
        model=str(tiny_bert),
        output=str(out),
        data=DataConfig(data_dir=str(sst2_dir), **DATA),
        train=TrainConfig(epochs=8, lr=3e-3, batch_size=8, quiet=True),
    )
    finetune(cfg)
    return out


def distill_cfg(teacher, sst2_dir, out, transfer=None, method="kd", **distill_opts):
    return DistillRunConfig(
        teacher=str(teacher),
        output=str(out),
        data=DataConfig(
            data_dir=str(sst2_dir), transfer_file=[str(t) for t in transfer or []], **DATA
        ),
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, quiet=True, logging_steps=2),
        distill=DistillConfig(method=method, student_layers=2, **distill_opts),
    )


# ---------------------------------------------------------------------------------------------
# Batches


def _encoded(n: int, offset: int = 0, labelled: bool = True) -> EncodedSplit:
    split = Split("s", "s.tsv", [str(i) for i in range(n)], ["x"] * n, None, None)
    ids = [[2, 5 + (offset + i) % 20, 3] for i in range(n)]
    features = {"input_ids": ids, "attention_mask": [[1, 1, 1]] * n}
    return EncodedSplit(split, features, [i % 2 for i in range(n)] if labelled else None)


@pytest.mark.parametrize("ratio, transfer", [(1.0, 50), (0.5, 50), (3.0, 7)])
def test_each_labelled_example_brings_its_transfer_partners(ratio, transfer):
    labelled = 20
    combined = with_transfer(_encoded(labelled), _encoded(transfer, 100, False), CLASSIFICATION)
    assert len(combined) == labelled + transfer
    assert combined.labels[labelled:] == [IGNORE_LABEL] * transfer
    mix = TransferMix(combined, labelled, ratio, seed=3)
    assert len(mix) == labelled  # an epoch is a pass over the labelled examples
    drawn = [j for i in range(labelled) for j in mix.partners(i)]
    assert len(drawn) == round(labelled * ratio)
    assert all(labelled <= j < labelled + transfer for j in drawn)
    if labelled * ratio <= transfer:
        assert len(set(drawn)) == len(drawn)  # no repeats until the set is used up
    item = mix[4]
    assert item[0]["example_index"] == 4 and item[0]["labels"] == 0
    assert [x["example_index"] for x in item[1:]] == mix.partners(4)
    # the same (seed, epoch) draws the same partners: a resumed run sees the same batches
    again = TransferMix(combined, labelled, ratio, seed=3)
    mix.set_epoch(1), again.set_epoch(1)
    assert [mix.partners(i) for i in range(labelled)] == [
        again.partners(i) for i in range(labelled)
    ]
    again.set_epoch(2)
    assert [mix.partners(i) for i in range(labelled)] != [
        again.partners(i) for i in range(labelled)
    ]


def _varied(lengths: list[int], labelled: bool = True) -> EncodedSplit:
    n = len(lengths)
    split = Split("s", "s.tsv", [str(i) for i in range(n)], ["x"] * n, None, None)
    ids = [[2] + [7] * (k - 2) + [3] for k in lengths]
    features = {"input_ids": ids, "attention_mask": [[1] * k for k in lengths]}
    return EncodedSplit(split, features, [i % 2 for i in range(n)] if labelled else None)


def test_partners_are_matched_by_length():
    """The k-th shortest labelled example gets the k-th shortest drawn partner, so a batch of
    short examples is not padded to a long partner."""
    labelled = [30, 4, 17, 9, 25, 12]
    transfer = [5, 28, 11, 19, 8, 31, 14, 22, 6, 26]
    combined = with_transfer(_varied(labelled), _varied(transfer, False), CLASSIFICATION)
    mix = TransferMix(combined, len(labelled), 1.0, seed=0)
    lengths = combined.lengths()
    pairs = sorted((lengths[i], lengths[mix.partners(i)[0]]) for i in range(len(labelled)))
    partner_lengths = [p for _, p in pairs]
    assert partner_lengths == sorted(partner_lengths)  # shortest with shortest, in order
    assert len({mix.partners(i)[0] for i in range(len(labelled))}) == len(labelled)


@pytest.mark.parametrize(
    "ratio, transfer, closer", [(3.0, 20, 0.5), (2.0, 25, 0.4), (1.5, 10, 0.5), (3.0, 4, 1.0)]
)
def test_a_reused_transfer_set_never_repeats_a_partner(ratio, transfer, closer):
    """ratio x labelled > transfer rows: each row is drawn several times per epoch. Its copies
    used to sit side by side in length order, so a labelled example got one partner r times;
    now no labelled example gets a partner twice, partners still follow length (their
    length gap a share `closer` of a random partner's: 4 rows in groups of 3 cannot), and
    they change from epoch to epoch (4 rows of distinct lengths, used 30 times each, have
    one best order)."""
    rng = random.Random(0)
    labelled = [rng.randint(4, 30) for _ in range(40)]
    rows = [rng.randint(4, 30) for _ in range(transfer)]
    combined = with_transfer(_varied(labelled), _varied(rows, False), CLASSIFICATION)
    mix = TransferMix(combined, len(labelled), ratio, seed=1)
    lengths = combined.lengths()
    epochs = []
    for epoch in range(3):
        mix.set_epoch(epoch)
        groups = [mix.partners(i) for i in range(len(labelled))]
        assert all(len(g) == len(set(g)) for g in groups), groups
        assert sum(map(len, groups)) == math.ceil(len(labelled) * ratio)
        gap = [abs(lengths[i] - lengths[j]) for i, g in enumerate(groups) for j in g]
        anyone = [abs(a - b) for a in labelled for b in rows]  # a random partner's gap
        assert sum(gap) / len(gap) < closer * sum(anyone) / len(anyone)
        epochs.append(groups)
    assert any(groups != epochs[0] for groups in epochs[1:]) or transfer < 5 * ratio


def test_spread_keeps_copies_apart_in_every_window():
    """Any width / rounds consecutive values of `spread`'s output differ, whatever the runs of
    copies (up to `rounds` long) and the offset; it is a reordering; none moves far."""
    rng = random.Random(0)
    for _ in range(300):
        rounds, group = rng.randint(1, 6), rng.randint(1, 4)
        copies = []
        while len(copies) < rounds * group or rng.random() < 0.9:
            copies += [len(copies)] * rng.randint(1, rounds)  # value: its first place
        width = rounds * group
        out = spread(copies, rounds, width, rng.randrange(width))
        assert sorted(out) == copies
        windows = [out[i : i + group] for i in range(len(out) - group + 1)]
        assert all(len(set(w)) == len(w) for w in windows), (rounds, group, copies, out)
        assert all(abs(v - i) < 3 * width + rounds for i, v in enumerate(out))


@pytest.mark.slow
def test_unlabelled_rows_never_reach_the_ce_term(teacher, sst2_dir):
    from pkd.data.loading import collator
    from pkd.models.encoders import load_finetuned, load_tokenizer
    from pkd.objectives.objective import Objective, loss_terms, online_teacher

    model = load_finetuned(str(teacher), "teacher")
    tok = load_tokenizer(str(teacher), "teacher")
    collate = collator(tok)
    texts = ["good film", "awful plot", "the story is great", "boring actors"]
    labelled = [{**tok(t), "labels": y} for t, y in zip(texts[:2], [1, 0], strict=True)]
    unlabelled = [{**tok(t), "labels": IGNORE_LABEL} for t in texts[2:]]
    objective = Objective(terms=("ce", "kd"), alpha=0.5, temperature=2.0,
                          teacher=online_teacher(load_finetuned(str(teacher), "teacher")))  # fmt: skip
    with torch.no_grad():
        only = loss_terms(model, collate(labelled), objective, False)
        mixed = loss_terms(model, collate([labelled + unlabelled]), objective, False)
        none = loss_terms(model, collate(unlabelled), objective, False)
    assert torch.allclose(only["ce"], mixed["ce"], atol=1e-6)  # CE: the labelled rows only
    assert not torch.allclose(only["kd"], mixed["kd"])  # KD: every row
    assert none["ce"].item() == 0.0 and math.isfinite(none["kd"].item())


# ---------------------------------------------------------------------------------------------
# Runs


@pytest.mark.slow
def test_transfer_examples_join_kd_and_pkd_batches_and_the_cache(teacher, sst2_dir, tmp_path):
    transfer = write_transfer(tmp_path / "unlabelled.tsv", 48)
    m = distill(distill_cfg(teacher, sst2_dir, tmp_path / "kd", [transfer], transfer_ratio=0.5))
    # 64 labelled training sentences, each with 0.5 partners: 32 transfer examples per epoch
    assert m["examples_seen"] == {"labelled": 64, "transfer": 32}
    assert m["data"]["transfer"]["examples"] == 48
    assert m["transfer_ratio"] == 0.5
    assert m["teacher_cache"]["reused"] is False
    saved = (tmp_path / "kd" / "config.yaml").read_text()
    assert "transfer_ratio: 0.5" in saved and str(transfer) in saved

    pkd = distill(distill_cfg(teacher, sst2_dir, tmp_path / "pkd", [transfer], method="pkd"))
    assert pkd["examples_seen"] == {"labelled": 64, "transfer": 64}
    assert pkd["teacher_cache"]["reused"] is True  # the same teacher, data and transfer set
    assert pkd["teacher_cache"]["path"] == m["teacher_cache"]["path"]

    write_transfer(transfer, 48, seed=8)  # other sentences: a new cache
    again = distill(distill_cfg(teacher, sst2_dir, tmp_path / "again", [transfer]))
    assert again["teacher_cache"]["reused"] is False
    assert again["teacher_cache"]["path"] != m["teacher_cache"]["path"]

    plain = distill(distill_cfg(teacher, sst2_dir, tmp_path / "plain"))
    assert plain["examples_seen"] == {"labelled": 64, "transfer": 0}


@pytest.mark.slow
def test_ft_and_finetune_refuse_a_transfer_file(teacher, tiny_bert, sst2_dir, tmp_path, pkd_cli):
    transfer = write_transfer(tmp_path / "u.tsv", 8)
    common = ["--task", "sst2", "--data-dir", str(sst2_dir), "--transfer-file", str(transfer)]
    for argv, message in (
        (["distill", "--teacher", str(teacher), "--method", "ft", *common],
         "--transfer-file: has no effect with --method ft"),
        (["finetune", "--model", str(tiny_bert), *common], "--transfer-file: finetune learns"),
    ):  # fmt: skip
        assert pkd_cli.error([*argv, "--output", tmp_path / "x"]).startswith(message)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_bad_transfer_file_names_file_and_line(teacher, sst2_dir, tmp_path, pkd_cli):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tsentence\n0\ta good film\n1\tan\textra tab\n")
    argv = ["distill", "--teacher", str(teacher), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--method", "kd", "--transfer-file", str(bad), "--output", str(tmp_path / "x")]  # fmt: skip
    assert pkd_cli.error(argv) == f"{bad}:3: 3 columns, the header has 2 (a tab inside a field?)"
    missing = tmp_path / "none.tsv"
    argv = [*argv[:-4], "--transfer-file", missing, "--output", tmp_path / "x"]
    assert pkd_cli.error(argv) == f"--transfer-file: {missing} not found"
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Gradient shares


def _shares(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("share_")} for r in rows if "lr" in r]


@pytest.mark.parametrize("beta, warns", [(1e-6, True), (1e5, False)])
@pytest.mark.slow
def test_gradient_shares_and_the_inert_patient_term(
    teacher, sst2_dir, tmp_path, caplog, beta, warns
):
    out = tmp_path / "pkd"
    with caplog.at_level(logging.WARNING, logger="pkd.training.loop"):
        m = distill(distill_cfg(teacher, sst2_dir, out, method="pkd", beta=beta))
    records = [r for r in _shares(out) if r]  # logged steps 1, 2, 4, ... and the last
    assert records and all(set(r) == {"share_ce", "share_kd", "share_pt"} for r in records)
    for r in records:
        assert sum(r.values()) == pytest.approx(1.0, abs=1e-9)
    assert set(m["gradient_shares"]) == {"ce", "kd", "pt"}
    assert sum(m["gradient_shares"].values()) == pytest.approx(1.0, abs=1e-5)
    pt = max(r["share_pt"] for r in records)
    assert (pt < 0.01) is warns and (pt > 0.5) is not warns
    warned = "the patient loss's share of the gradient stayed under 1%" in caplog.text
    assert warned is warns, caplog.text
    if warns:
        assert "beta=1e-06" in caplog.text and "--beta" in caplog.text


@pytest.mark.slow
def test_ft_logs_no_shares(teacher, sst2_dir, tmp_path):
    out = tmp_path / "ft"
    m = distill(distill_cfg(teacher, sst2_dir, out, method="ft"))
    assert m["gradient_shares"] == {} and all(r == {} for r in _shares(out))


@pytest.mark.slow
def test_compare_gives_the_transfer_set_to_kd_and_pkd_only(teacher, sst2_dir, tmp_path):
    from pkd.recipes.compare import compare

    transfer = write_transfer(tmp_path / "u.tsv", 40)
    base = {
        "data": {"task": "sst2", "data_dir": str(sst2_dir), "max_length": 16,
                 "transfer_file": [str(transfer)]},
        "train": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "quiet": True},
        "distill": {"transfer_ratio": 0.5},
    }  # fmt: skip
    out = tmp_path / "cmp"
    result = compare(str(teacher), str(out), base, [2], ["ft", "kd"], [1],
                     bench_batch_size=2, bench_seq_length=16, bench_warmup=0, bench_iterations=1)  # fmt: skip
    seen = {}
    for name in ("L2-ft-seed1", "L2-kd-seed1"):
        m = json.loads((out / "runs" / name / "metrics.json").read_text())
        seen[name] = m["examples_seen"]
    assert seen == {"L2-ft-seed1": {"labelled": 64, "transfer": 0},
                    "L2-kd-seed1": {"labelled": 64, "transfer": 32}}  # fmt: skip
    assert "KD share %" in result["markdown"] and "PT share %" in result["markdown"]


@pytest.mark.slow
def test_dry_run_shows_the_transfer_set(teacher, sst2_dir, tmp_path, pkd_cli):
    transfer = write_transfer(tmp_path / "u.tsv", 30)
    argv = ["distill", "--teacher", str(teacher), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--max-length", "16", "--student-layers", "2", "--transfer-file", str(transfer),
            "--transfer-ratio", "2", "--dry-run", "--output", str(tmp_path / "x")]  # fmt: skip
    out = pkd_cli.ok(argv).out
    assert f"            transfer: 30 examples, 0.0% truncated ({transfer})" in out.splitlines()
    assert "2 transfer example(s) per labelled one in each batch" in out
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Options and files that would do nothing, or the wrong thing


def _distill_argv(teacher, sst2_dir, tmp_path, *extra) -> list:
    return ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", sst2_dir,
            "--max-length", "16", "--student-layers", "2", "--allow-weak-teacher", "--dry-run",
            "--output", tmp_path / "x", *extra]  # fmt: skip


def test_the_dev_file_as_transfer_file_is_refused(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    dev = sst2_dir / "dev.tsv"
    err = pkd_cli.error(_distill_argv(tiny_teacher, sst2_dir, tmp_path, "--transfer-file", dev))
    assert err == (
        f"--transfer-file: {dev} holds 32 of the 32 inputs of {dev} (dev, on which the student "
        "is selected and scored); pass other unlabelled text"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_few_dev_inputs_in_the_transfer_set_are_a_warning(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli, caplog
):
    transfer = write_transfer(tmp_path / "u.tsv", 40, seed=9)
    dev = (sst2_dir / "dev.tsv").read_text().splitlines()[1:4]
    extra = [f"{40 + i}\t{line.split(chr(9))[0]}" for i, line in enumerate(dev)]
    transfer.write_text(transfer.read_text() + "\n".join(extra) + "\n")
    caplog.set_level(logging.WARNING, logger="pkd.data.transfer")
    pkd_cli.ok(_distill_argv(tiny_teacher, sst2_dir, tmp_path, "--transfer-file", transfer))
    assert [r.getMessage() for r in caplog.records if r.name == "pkd.data.transfer"] == [
        f"--transfer-file: {transfer} holds 3 of the 32 inputs of {sst2_dir / 'dev.tsv'} (dev): "
        "the student is distilled on them and scored on them"
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--transfer-ratio", "0.001", "--transfer-file", "{transfer}"],
         "--transfer-ratio: 0.001 x 64 labelled examples draws no transfer example per epoch; "
         "use at least 0.016"),  # rounded up: 0.016 x 64 draws one
        (["--transfer-ratio", "2"],
         "--transfer-ratio: 2 needs --transfer-file (the unlabelled text it draws from)"),
        (["--max-transfer-samples", "10"],
         "--max-transfer-samples: needs --transfer-file (the rows it keeps)"),
    ],
)  # fmt: skip
def test_transfer_options_that_draw_nothing_are_refused(
    extra, message, tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    transfer = write_transfer(tmp_path / "u.tsv", 40)
    extra = [str(a).format(transfer=transfer) for a in extra]
    assert pkd_cli.error(_distill_argv(tiny_teacher, sst2_dir, tmp_path, *extra)) == message
    assert not (tmp_path / "x").exists()


def test_evaluate_and_predict_take_no_transfer_file(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    from pkd.api import evaluate, predict
    from pkd.errors import PkdError

    transfer = write_transfer(tmp_path / "u.tsv", 4)
    for command in ("evaluate", "predict"):
        argv = [command, "--model", tiny_teacher, "--task", "sst2", "--data-dir", sst2_dir]
        code, out, err = pkd_cli([*argv, "--transfer-file", transfer])
        assert code == 2 and "unrecognized arguments: --transfer-file" in err
    data = DataConfig(data_dir=str(sst2_dir), transfer_file=[str(transfer)], **DATA)
    for run in (evaluate, predict):
        with pytest.raises(PkdError, match=r"^--transfer-file: a training option; evaluate and"):
            run(str(tiny_teacher), data)

"""Paper presets: the shipped table against the authors' released numbers, the precedence
defaults < YAML < preset < options, and the documented fallback where the authors have no row.

Expected values are copied by hand from the authors' repository
(intersun/PKD-for-BERT-Model-Compression @9e9e860, result/glue/result_summary/), not from
presets.csv, so a wrong row in the shipped table fails here.
"""

from __future__ import annotations

import logging
import re

import pytest
import yaml
from conftest import make_tiny_bert, make_tiny_teacher, write_sst2

from pkd.cli.commands import resolve
from pkd.cli.parser import build_parser
from pkd.config import presets as P
from pkd.config.files import save
from pkd.config.runs import DistillRunConfig
from pkd.errors import PkdError
from pkd.recipes.compare import StudentGrid, plan_runs


def _row(task, method, layers):
    rows = [p for p in P.table() if (p.task, p.method, p.student_layers) == (task, method, layers)]
    assert len(rows) == 1, (task, method, layers)
    return rows[0]


# (task, method, layers) -> lr, T, alpha, beta, pt_normalize, dev mean, source file
AUTHORS = {
    # pkd_3layer_mean.csv: kd.cls.True_SST-2_nlayer.3_lr.5e-05_T.20.0_alpha.0.2_beta.1.0_bs.32
    ("sst2", "pkd", 3): (5e-5, 20.0, 0.2, 1.0, True, 0.8807339449541285, "pkd_3layer_mean.csv"),
    # pkd_6layer_mean.csv: kd.cls.False_MNLI_nlayer.6_lr.5e-05_T.10.0_alpha.0.5_beta.100.0_bs.32
    ("mnli", "pkd-skip", 6): (
        5e-5,
        10.0,
        0.5,
        100.0,
        False,
        0.8223127865511972,
        "pkd_6layer_mean.csv",
    ),
    # pkd_6layer_last_mean.csv: kd.cls.True_RTE_nlayer.6_lr.1e-05_T.20.0_alpha.0.7_beta.1000.0_bs.32
    ("rte", "pkd-last", 6): (
        1e-5,
        20.0,
        0.7,
        1000.0,
        True,
        0.667870036101083,
        "pkd_6layer_last_mean.csv",
    ),
    # kd_3layer_mean.csv: kd_QQP_nlayer.3_lr.5e-05_T.20.0_alpha.0.7_beta.0.0_bs.32
    ("qqp", "kd", 3): (5e-5, 20.0, 0.7, 0.0, None, 0.8941009151620084, "kd_3layer_mean.csv"),
    # kd_6layer_mean.csv: kd_CoLA_nlayer.6_lr.2e-05_T.5.0_alpha.0.7_beta.0.0_bs.32 (CoLA: KD only)
    ("cola", "kd", 6): (2e-5, 5.0, 0.7, 0.0, None, 0.4218819578856275, "kd_6layer_mean.csv"),
    # ft_6layer_mean.csv: kd_MRPC_nlayer.6_lr.2e-05_T.10.0_alpha.0.0_beta.0.0_bs.32
    ("mrpc", "ft", 6): (2e-5, 10.0, 0.0, 0.0, None, 0.8223039215686274, "ft_6layer_mean.csv"),
}


@pytest.mark.parametrize("key", list(AUTHORS))
def test_table_rows_are_the_authors_released_values(key):
    lr, t, alpha, beta, norm, dev, source = AUTHORS[key]
    p = _row(*key)
    assert (p.lr, p.temperature, p.alpha, p.beta, p.pt_normalize) == (lr, t, alpha, beta, norm)
    assert p.dev_mean == dev
    assert (p.epochs, p.batch_size) == (4, 32)
    assert p.source.endswith("result/glue/result_summary/" + source)
    assert p.source.startswith("intersun/PKD-for-BERT-Model-Compression@9e9e860:")


def test_every_row_matches_its_run_name():
    """The run name encodes the setting: each row's values must be the ones its name says."""
    pattern = re.compile(
        r"^kd(?:\.cls\.(True|False))?_(.+)_nlayer\.(\d+)_lr\.([^_]+)_T\.([^_]+)_alpha\.([^_]+)"
        r"_beta\.([^_]+)_bs\.(\d+)$"
    )
    rows = P.table()
    assert len(rows) == 55
    for p in rows:
        m = pattern.match(p.run)
        assert m, p.run
        norm, _, layers, lr, t, alpha, beta, bs = m.groups()
        assert int(layers) == p.student_layers
        assert (float(lr), float(t), float(alpha), float(beta)) == (
            p.lr,
            p.temperature,
            p.alpha,
            p.beta,
        )
        assert int(bs) == p.batch_size
        assert p.pt_normalize == (None if norm is None else norm == "True")
        assert (norm is not None) == p.method.startswith("pkd"), p.run
    # SPEC §2: the authors' 3-layer dev means, SST-2 FT/KD/PKD = 87.5 / 87.5 / 88.1
    means = [round(100 * _row("sst2", m, 3).dev_mean, 1) for m in ("ft", "kd", "pkd")]
    assert means == [87.5, 87.5, 88.1]


def test_presets_command_prints_the_table(pkd_cli):
    out = pkd_cli.ok(["presets"]).out
    assert (
        "| sst2 | pkd | 3 | 5e-05 | 20 | 0.2 | 1 | true | 4 | 32 | 88.1 | pkd_3layer_mean.csv |"
        in out
    )
    assert "| mnli | pkd-skip | 6 | 5e-05 | 10 | 0.5 | 100 | false | 4 | 32 | 82.2 |" in out


def _distill_cfg(*argv, config=None):
    args = ["distill", "--teacher", "t", "--output", "o", *argv]
    if config:
        args += ["--config", str(config)]
    return resolve(build_parser().parse_args(args), DistillRunConfig)


def test_preset_fills_values_and_options_override_it(tmp_path):
    cfg = _distill_cfg("--task", "sst2", "--preset", "paper", "--student-layers", "6")
    d, t = cfg.distill, cfg.train
    # pkd_6layer_mean.csv, SST-2: lr 5e-5, T 10, alpha 0.5, beta 100, normalised
    assert (t.lr, d.temperature, d.alpha, d.beta, d.pt_normalize) == (5e-5, 10.0, 0.5, 100.0, True)
    assert (t.epochs, t.batch_size, d.kd_loss, d.pt_loss) == (4, 32, "kl", "mean")
    assert (t.warmup_ratio, t.lr_schedule) == (0.1, "linear")  # the authors' BertAdam schedule
    assert d.preset == "paper" and d.preset_source.endswith("pkd_6layer_mean.csv")

    # An option on the command line beats the preset; the rest of the preset stays.
    cfg = _distill_cfg(
        "--task",
        "sst2",
        "--preset",
        "paper",
        "--student-layers",
        "6",
        "--lr",
        "1e-4",
        "--beta",
        "7",
    )
    assert (cfg.train.lr, cfg.distill.beta, cfg.distill.temperature) == (1e-4, 7.0, 10.0)

    # The preset beats the YAML config (it sits between YAML and options), except where the
    # preset sets nothing (max_length).
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"train": {"lr": 3e-3}, "data": {"max_length": 40}}))
    cfg = _distill_cfg("--task", "sst2", "--preset", "paper", "--method", "kd", config=y)
    # kd_3layer_mean.csv, SST-2: lr 2e-5, T 20, alpha 0.2
    assert (cfg.train.lr, cfg.distill.temperature, cfg.distill.alpha) == (2e-5, 20.0, 0.2)
    assert cfg.data.max_length == 40
    assert cfg.distill.preset_source.endswith("kd_3layer_mean.csv")

    # Recorded in config.yaml, as a run writes it.
    save(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]
    assert saved["preset"] == "paper" and saved["preset_source"].endswith("kd_3layer_mean.csv")

    # Without --preset nothing changes and nothing is recorded.
    cfg = _distill_cfg("--task", "sst2")
    assert (cfg.train.lr, cfg.distill.temperature, cfg.distill.preset_source) == (5e-5, 10.0, None)
    assert cfg.train.lr_schedule == "constant"  # distill's own default (finetune: linear)


def test_3layer_pkd_row_serves_both_maps_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="pkd.config.presets"):
        cfg = _distill_cfg("--task", "rte", "--preset", "paper", "--strategy", "last")
    # pkd_3layer_mean.csv, RTE: kd.cls.False, lr 2e-5, T 20, alpha 0.2, beta 10
    assert (cfg.train.lr, cfg.distill.beta, cfg.distill.pt_normalize) == (2e-5, 10.0, False)
    assert "does not say which layer map it used; its setting serves pkd-last" in caplog.text


@pytest.mark.parametrize(
    "task, argv, note",
    [
        ("stsb", [], "the authors released no results for stsb"),
        (
            "cola",
            ["--student-layers", "6"],
            "the authors released no pkd-skip result for cola with a 6-layer student (they have kd/6)",
        ),
        ("custom", [], "task 'custom' is not a GLUE task the authors ran"),
    ],
)
def test_no_authors_row_falls_back_to_documented_defaults(task, argv, note, caplog):
    with caplog.at_level(logging.WARNING, logger="pkd.config.presets"):
        cfg = _distill_cfg("--task", task, "--preset", "paper", "--epochs", "2", *argv)
    msg = [r.getMessage() for r in caplog.records if r.name == "pkd.config.presets"]
    assert len(msg) == 1, msg
    assert msg[0].startswith(f"--preset paper: {note}")
    assert "using the documented defaults and your options (lr=5e-05, epochs=2," in msg[0]
    d = cfg.distill
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (5e-5, 2, 32)
    assert (d.temperature, d.alpha, d.beta, d.pt_normalize) == (10.0, 0.5, 100.0, True)
    assert d.preset == "paper" and d.preset_source.startswith("none: ")


def test_unknown_preset_and_unknown_task_are_errors(pkd_cli):
    argv = ["distill", "--teacher", "t", "--output", "o", "--task", "sst2", "--preset", "book"]
    assert pkd_cli.error(argv) == "--preset: 'book' is not one of paper"
    with pytest.raises(PkdError, match="--task: unknown task 'sst3'"):
        P.apply({"data": {"task": "sst3"}, "distill": {"preset": "paper"}})


def test_compare_applies_the_preset_per_method_and_depth(tmp_path, caplog):
    base = {"data": {"task": "sst2"}, "distill": {"preset": "paper"}, "train": {"lr": 9e-3}}
    with caplog.at_level(logging.WARNING, logger="pkd.config.presets"):
        runs = plan_runs(
            "teacher",
            str(tmp_path / "cmp"),
            base,
            StudentGrid([3, 2], ["ft", "kd", "pkd-skip"], [1, 2]),
            options={"train": {"batch_size": 16}},
        )
    by = {r.name: r.cfg for r in runs}
    # ft_3layer_mean.csv SST-2 lr 2e-5 (beats the base's 9e-3); the option's batch 16 stays
    assert (by["L3-ft-seed1"].train.lr, by["L3-ft-seed1"].train.batch_size) == (2e-5, 16)
    # kd_3layer_mean.csv SST-2: T 20, alpha 0.2
    kd = by["L3-kd-seed2"].distill
    assert (kd.temperature, kd.alpha, kd.beta) == (20.0, 0.2, 0.0)
    assert by["L3-kd-seed2"].train.seed == 2
    # pkd_3layer_mean.csv SST-2: beta 1, normalised
    assert (by["L3-pkd-skip-seed1"].distill.beta, by["L3-pkd-skip-seed1"].train.lr) == (1.0, 5e-5)
    # No 2-layer rows: documented defaults (and the base's lr), one warning per method, not per seed
    assert by["L2-kd-seed1"].train.lr == 9e-3
    assert by["L2-kd-seed1"].distill.preset_source.startswith("none: ")
    warnings = [r.getMessage() for r in caplog.records if r.name == "pkd.config.presets"]
    assert len(warnings) == 3 and all("2-layer student" in w for w in warnings)


def test_distill_run_records_the_preset(tmp_path, pkd_cli):
    """A real (2-step) run: config.yaml says which preset and which authors' file."""
    bert = make_tiny_bert(tmp_path / "bert")
    teacher = make_tiny_teacher(tmp_path / "teacher", bert)
    data = write_sst2(tmp_path / "SST-2")
    argv = ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", data]
    argv += ["--output", tmp_path / "run", "--preset", "paper", "--method", "kd"]
    argv += ["--max-steps", "2", "--batch-size", "8", "--max-length", "16", "--quiet"]
    argv += ["--allow-weak-teacher"]
    pkd_cli.ok(argv)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["distill"]["preset"] == "paper"
    assert saved["distill"]["preset_source"].endswith("result_summary/kd_3layer_mean.csv")
    # kd_3layer_mean.csv SST-2: lr 2e-5, T 20, alpha 0.2; batch 8 from the command line
    assert (saved["train"]["lr"], saved["train"]["batch_size"]) == (2e-5, 8)
    assert (saved["distill"]["temperature"], saved["distill"]["alpha"]) == (20.0, 0.2)

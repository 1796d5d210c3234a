"""`pkd compare` on a tiny teacher and toy SST-2: runs, tables, plot, reuse, up-front checks."""

import csv
import json

import pytest
import yaml

from pkd.errors import PkdError
from pkd.recipes.compare import compare

PNG = b"\x89PNG\r\n\x1a\n"


def _base(sst2_dir, epochs=1):
    return {
        "data": {"task": "sst2", "data_dir": str(sst2_dir), "max_length": 16},
        "train": {"epochs": epochs, "lr": 1e-3, "batch_size": 16, "quiet": True},
        # conftest's teacher is untrained: fine for plumbing, not for conclusions.
        "distill": {"allow_weak_teacher": True},
    }


def _compare(teacher, out, base, **kw):
    return compare(
        str(teacher),
        str(out),
        base,
        [2],
        ["ft", "pkd-skip"],
        [1, 2],
        bench_batch_size=2,
        bench_seq_length=16,
        bench_warmup=1,
        bench_iterations=3,
        bench_threads=1,
        **kw,
    )


NAMES = ["L2-ft-seed1", "L2-ft-seed2", "L2-pkd-skip-seed1", "L2-pkd-skip-seed2"]


@pytest.mark.slow
def test_compare_tables_plot_and_reuse(tiny_teacher, sst2_dir, tmp_path):
    out = tmp_path / "cmp"
    result = _compare(tiny_teacher, out, _base(sst2_dir))

    # Runs: one dir per depth x method x seed, with the right settings.
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == NAMES
    for name in NAMES:
        cfg = yaml.safe_load((runs / name / "config.yaml").read_text())
        assert cfg["train"]["seed"] == int(name[-1])
        assert cfg["distill"]["student_layers"] == 2
        assert cfg["distill"]["method"] == ("ft" if "-ft-" in name else "pkd")
        assert cfg["distill"]["strategy"] == "skip"
    pkd_metrics = [json.loads((runs / n / "metrics.json").read_text()) for n in NAMES[2:]]
    assert [m["layer_map"] for m in pkd_metrics] == [[[2, 1]], [[2, 1]]]  # 4 -> 2, skip
    caches = [m["teacher_cache"] for m in pkd_metrics]
    assert caches[0]["path"] == caches[1]["path"] and caches[1]["reused"] is True  # one cache

    from pkd.deploy.report import collect_runs

    found = collect_runs(runs)
    assert [(r["method"], r["seed"], r["layers"]) for r in found] == [
        ("ft", 1, 2),
        ("ft", 2, 2),
        ("pkd-skip", 1, 2),
        ("pkd-skip", 2, 2),
    ]
    recorded = [r["result"] for r in found]  # metrics.json, typed
    assert [(r.method, r.layer_map) for r in recorded] == [("ft", [])] * 2 + [("pkd", [[2, 1]])] * 2
    assert [r.teacher_cache.get("path") for r in recorded[2:]] == [caches[0]["path"]] * 2

    # results.json: teacher + one row per method x seed, with scores and speeds.
    data = json.loads((out / "results.json").read_text())
    assert data["task"] == "sst2" and data["metric"] == "accuracy" and data["split"] == "dev"
    rows = data["rows"]
    assert [r["name"] for r in rows] == ["teacher", *NAMES]
    assert rows[0]["role"] == "teacher" and rows[0]["layers"] == 4
    assert rows[0]["fraction_of_teacher"] == 1.0 and rows[0]["speedup"] == 1.0
    # Each score is the one its own run recorded, and a count of the 32 dev examples.
    recorded = {n: json.loads((runs / n / "metrics.json").read_text()) for n in NAMES}
    teacher_acc = recorded[NAMES[0]]["teacher_metrics"]["dev"]["accuracy"]  # distill scored it
    assert rows[0]["metric"] == pytest.approx(teacher_acc)
    for r in rows[1:]:
        assert r["metric"] == pytest.approx(
            recorded[r["name"]]["best"]["metrics"]["dev"]["accuracy"]
        )
    for r in rows:
        assert (32 * r["metric"]) == pytest.approx(round(32 * r["metric"]))
        assert r["metric"] == pytest.approx(r["metrics"]["dev"]["accuracy"])
        assert r["metrics"]["dev"]["examples"] == 32
        assert r["throughput"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert r["params_total"] > 0
    for r in rows[1:]:
        assert r["layers"] == 2 and r["reused"] is False
        assert r["params_total"] < rows[0]["params_total"]
        assert r["metric"] == pytest.approx(r["recorded_best"])  # same model, same dev set
        assert r["fraction_of_teacher"] == pytest.approx(r["metric"] / rows[0]["metric"])
        shares = recorded[r["name"]]["gradient_shares"]  # the run's mean gradient shares
        assert (r["share_kd"], r["share_pt"]) == (shares.get("kd"), shares.get("pt"))
        assert (r["share_pt"] is None) is (r["method"] == "ft")
    summary = {g["method"]: g for g in data["summary"]}
    assert set(summary) == {"ft", "pkd-skip"}
    for method, g in summary.items():
        values = [r["metric"] for r in rows if r["method"] == method]
        assert g["n"] == 2 and g["seeds"] == [1, 2]
        assert g["mean"] == pytest.approx(sum(values) / 2)
        assert g["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    wall = data["wall_seconds"]
    assert set(wall["students"]) == set(NAMES)
    assert all(not s["reused"] and s["seconds"] > 0 for s in wall["students"].values())
    parts = wall["validate"] + wall["teacher_cache"] + wall["evaluation"] + wall["benchmark"]
    parts += sum(s["seconds"] for s in wall["students"].values())
    assert parts <= wall["total"] + 0.1
    assert wall["students"]["L2-ft-seed1"].get("teacher_cache") == 0.0  # FT needs no teacher

    # results.md / results.csv / pareto.png
    md = (out / "results.md").read_text()
    assert md == result["markdown"]
    lines = md.splitlines()
    assert sum(line.startswith("| teacher |") for line in lines) == 1
    assert all(sum(line.startswith(f"| {n} |") for line in lines) == 1 for n in NAMES)
    for r in rows:  # the table shows the same numbers: name | layers | method | seed | metric
        (line,) = [x for x in lines if x.startswith(f"| {r['name']} |")]
        assert line.split(" | ")[4] == f"{100 * r['metric']:.2f}", line
        share_pt = "-" if r.get("share_pt") is None else f"{100 * r['share_pt']:.2f}"
        assert line.split(" | ")[-1] == f"{share_pt} |", line
    assert "± " in md and "% of teacher" in md and "**total**" in md
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["teacher", *NAMES]
    assert [float(r["metric"]) for r in table] == pytest.approx([r["metric"] for r in rows])
    assert (out / "pareto.png").read_bytes()[:8] == PNG
    assert (out / "benchmark.json").is_file()

    # Model cards: every student's with the speed measured here; the best one says so.
    from huggingface_hub import ModelCard

    best = max(rows[1:], key=lambda r: r["metric"])
    for r in rows[1:]:
        text = ModelCard.load(runs / r["name"] / "model" / "README.md").text
        assert f"| speed-up over the teacher | {r['speedup']:.2f}× (" in text
        assert ("The best of the 4 students of `pkd compare`" in text) is (r is best)

    # Second run: finished runs are reused; an unfinished one is replaced.
    mtimes = {n: (runs / n / "metrics.json").stat().st_mtime_ns for n in NAMES}
    (runs / "L2-ft-seed2" / "metrics.json").unlink()  # as if interrupted
    (runs / "L2-ft-seed2" / "junk.txt").write_text("left over")
    again = _compare(tiny_teacher, out, _base(sst2_dir))
    for n in ("L2-ft-seed1", "L2-pkd-skip-seed1", "L2-pkd-skip-seed2"):
        assert (runs / n / "metrics.json").stat().st_mtime_ns == mtimes[n], n
        assert again["wall_seconds"]["students"][n] == {"reused": True, "seconds": 0.0}
    assert (runs / "L2-ft-seed2" / "metrics.json").is_file()
    assert not (runs / "L2-ft-seed2" / "junk.txt").exists()
    assert again["wall_seconds"]["students"]["L2-ft-seed2"]["reused"] is False
    assert [r["reused"] for r in again["rows"][1:]] == [True, False, True, True]
    assert "L2-ft-seed1 (reused)" in again["markdown"]

    # A finished run trained with other settings is not silently mixed in.
    with pytest.raises(
        PkdError, match=r"L2-ft-seed1 was trained with other settings \(train.epochs: 1(\.0)? -> 2"
    ):
        _compare(tiny_teacher, out, _base(sst2_dir, epochs=2))


def test_compare_cli_dry_run_and_checks(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "cmp"
    common = ["compare", "--teacher", str(tiny_teacher), "--output", str(out)]
    common += ["--task", "sst2", "--data-dir", str(sst2_dir), "--max-length", "16"]
    common += ["--bench-seq-length", "16"]  # the tiny models have 64 positions
    code, stdout, err = pkd_cli(
        [*common, "--methods", "kd,pkd-last", "--seeds", "3", "--student-layers", "3,2"]
        + ["--allow-weak-teacher", "--dry-run"]
    )
    assert code == 0, err
    for name in ("L3-kd-seed3", "L3-pkd-last-seed3", "L2-kd-seed3", "L2-pkd-last-seed3"):
        assert f"| {name} | " in stdout
    assert "4 runs, 4 to train, 0 finished" in stdout
    assert not out.exists()  # a dry run writes nothing

    assert "--methods: unknown method(s) ['pkd-middle']" in pkd_cli.error(
        [*common, "--methods", "ft,pkd-middle", "--allow-weak-teacher"]
    )
    assert "--student-layers: 4 is impossible for a 4-layer teacher" in pkd_cli.error(
        [*common, "--student-layers", "4", "--allow-weak-teacher"]
    )
    assert "--bench-seq-length: 65 exceeds the teacher's 64 positions" in pkd_cli.error(
        [*common, "--bench-seq-length", "65", "--allow-weak-teacher"]
    )
    assert "--seeds: repeated values" in pkd_cli.error(
        [*common, "--seeds", "1,1", "--allow-weak-teacher"]
    )
    missing = ["compare", "--teacher", str(tiny_teacher), "--output", str(out), "--task", "sst2"]
    missing += ["--bench-seq-length", "16"]
    assert "nope" in pkd_cli.error([*missing, "--data-dir", str(tmp_path / "nope")])
    # The untrained teacher is near chance: refused before any run starts.
    assert "--allow-weak-teacher" in pkd_cli.error([*common, "--seeds", "1"])
    assert not (out / "runs").exists()


def test_report_helpers(tmp_path):
    from pkd.deploy import report as R

    # (2, .8) is beaten by (3, .8); (1.5, .7) by (2, .8): the front is the teacher-like
    # slow/accurate point and the fast one.
    assert R.pareto_front([(1, 0.9), (2, 0.8), (1.5, 0.7), (3, 0.8)]) == [0, 3]
    mean, std = R.mean_std([0.8, 0.9])
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.0707107, rel=1e-5)
    assert R.mean_std([0.5]) == (0.5, 0.0)
    assert R.pm(0.85, 0.0707107) == "85.00 ± 7.07"
    assert R.markdown_table(["a", "b"], [["x|y", None]]) == "| a | b |\n|---|---|\n| x\\|y | - |\n"
    assert R.parse_run_name("L3-pkd-skip-seed12") == {"layers": 3, "method": "pkd-skip", "seed": 12}
    assert R.parse_run_name("teacher") is None
    R.pareto_plot(
        [{"label": "t", "group": "teacher", "x": 1.0, "y": 90.0}], tmp_path / "p.png", "x", "y", "t"
    )
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG

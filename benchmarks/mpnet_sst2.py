"""SST-2, 12-layer teacher -> 6- and 3-layer students (issue 25, point 3): the paper's depths.

The teacher is all-mpnet-base-v2 (MPNet, 12 x 768, mean pooling: BERT-base's size),
fine-tuned on SST-2; the students start from its first 6 or 3 pre-trained layers and are
trained with FT, KD, PKD-Skip and PKD-Last over several seeds, then set beside the paper's
BERT-base figures (Sun et al. 2019).

    python benchmarks/mpnet_sst2.py --dry-run           # checks + the compare's time estimate
    python benchmarks/mpnet_sst2.py                     # the study (about 1-1.5 h on 2 cores)
    python benchmarks/mpnet_sst2.py --teacher-run runs/mpnet/teacher   # a finished teacher
    python benchmarks/mpnet_sst2.py --report-only       # rewrite the README from the results

1. `mpnet_teacher`: assemble (or reuse) the pre-trained model in --model-dir.
2. `pkd finetune` the teacher on the first --teacher-train-samples sentences into
   OUTPUT/teacher (reused when finished; `--teacher-run RUN` uses a finished run).
3. `sst2_compare.main` with `--student-layers 6,3`: every depth x method x seed, evaluated
   on the dev set, tables copied to RESULTS/sst2_compare (no weights).
4. `step_cost.main` for 3x768 and 6x768 students: seconds per step cached vs online teacher,
   the teacher cache's build time and size -> RESULTS/step_cost.{json,md}.
5. RESULTS/README.md and summary.json: budget, machine (load average sampled through the
   run), the table (mean ± std over seeds) beside the paper's rows, cache, step costs, and a
   verdict computed from the numbers.

Each stage's outcome is kept in OUTPUT/study.json; a rerun reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling scripts, also when loaded by the tests
    sys.path.insert(0, str(HERE))

REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue" / "SST-2"
DEFAULT_OUTPUT = Path("runs") / "mpnet"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "mpnet"
METHODS = ["ft", "kd", "pkd-skip", "pkd-last"]
PKD_METHODS = ["pkd-skip", "pkd-last"]
LABELS = {"ft": "FT", "kd": "KD", "pkd-skip": "PKD-Skip", "pkd-last": "PKD-Last"}
# Sun et al. 2019 (Table 1/2), SST-2 dev, BERT-base (12 x 768) teacher; the figures exactly
# as the issue gives them: "dev: PKD-6 SST-2 91.1 of a 92.6 teacher, PKD-3 88.1".
PAPER = {
    "source": "Sun et al. 2019, Patient Knowledge Distillation for BERT Model Compression "
    "(Table 1/2), SST-2 dev",
    "as_given": "dev: PKD-6 SST-2 91.1 of a 92.6 teacher, PKD-3 88.1",
    "teacher": 0.926,
    "pkd": {6: 0.911, 3: 0.881},
}


def int_list(text: str) -> list[int]:
    """'6,3' -> [6, 3]."""
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="GLUE SST-2 directory (TSVs)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="teacher, runs, logs")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="README, tables (no weights)")
    p.add_argument("--model-dir", default="~/.cache/pkd/models/all-mpnet-base-v2")
    p.add_argument("--teacher-run", default=None, help="a finished `pkd finetune` run to reuse")
    p.add_argument("--train-samples", type=int, default=1000, help="first N training sentences")
    p.add_argument("--teacher-train-samples", type=int, default=None, help="default: the same")
    p.add_argument("--eval-samples", type=int, default=None, help="first N dev sentences (all)")
    p.add_argument("--epochs", type=float, default=1, help="student epochs")
    p.add_argument("--teacher-epochs", type=float, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=100.0)
    p.add_argument("--seeds", type=int_list, default=[1, 2, 3])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--student-layers", type=int_list, default=[6, 3])
    p.add_argument("--step-layers", type=int_list, default=[3, 6], help="step cost depths")
    p.add_argument("--step-examples", type=int, default=512)
    p.add_argument("--step-steps", type=int, default=12)
    p.add_argument("--no-step-cost", action="store_true", help="skip the step cost")
    p.add_argument("--allow-weak-teacher", action="store_true", help="for smoke runs")
    p.add_argument("--dry-run", action="store_true", help="checks and the compare's estimate")
    p.add_argument("--report-only", action="store_true", help="rewrite README from results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--note", default=None, help="a remark for the README's machine section")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The machine


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class LoadSampler:
    """The 1-minute load average every `every` seconds in a daemon thread, as
    [seconds since start, load]."""

    def __init__(self, every: float = 60.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            load = load_average()
            if load:
                self.samples.append([round(time.time() - self._t0), load[0]])
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def machine() -> dict:
    import torch
    import transformers

    from pkd.deploy.bench import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def sharing(load: dict, cores: int, own: float) -> dict:
    """Whether other processes shared the machine: the 1-minute load average above what this
    study alone gives (`own` runnable threads, at most `cores`) by more than half a core."""
    values = [x[1] for x in load.get("samples") or []]
    values += [x[0] for x in (load.get("start"), load.get("end")) if x]
    if not values:
        return {"shared": None, "text": "no load average on this platform"}
    limit = min(own, cores) + 0.5
    over = sum(v > limit for v in values)
    text = (
        f"1-minute load average {min(values):.2f}-{max(values):.2f} (mean "
        f"{statistics.fmean(values):.2f}) over {len(values)} samples on {cores} cores; this "
        f"study alone gives about {min(own, cores):g}. "
    )
    if over:
        text += (
            f"{over} of {len(values)} samples exceed {limit:g}: other processes shared the "
            "machine, so the times are slower than an idle machine's."
        )
    else:
        text += "No sample exceeds that by more than half a core: the machine was not shared."
    return {"shared": bool(over), "over": over, "samples": len(values), "text": text}


# ---------------------------------------------------------------------------------------------
# Stages


def compare_argv(args, teacher_run: Path) -> list[str]:
    """`sst2_compare.main`'s arguments for this study."""
    argv = [
        "--data-dir", str(args.data_dir),
        "--output", str(Path(args.output) / "compare"),
        "--results", str(Path(args.results) / "sst2_compare"),
        "--teacher-run", str(teacher_run),
        "--train-samples", str(args.train_samples),
        "--epochs", f"{args.epochs:g}",
        "--max-length", str(args.max_length),
        "--seeds", ",".join(map(str, args.seeds)),
        "--methods", args.methods,
        "--student-layers", ",".join(map(str, args.student_layers)),
        "--lr", f"{args.lr:g}",
        "--batch-size", str(args.batch_size),
        "--temperature", f"{args.temperature:g}",
        "--alpha", f"{args.alpha:g}",
        "--beta", f"{args.beta:g}",
    ]  # fmt: skip
    if args.eval_samples:
        argv += ["--eval-samples", str(args.eval_samples)]
    if args.allow_weak_teacher:
        argv.append("--allow-weak-teacher")
    if args.quiet:
        argv.append("--quiet")
    return argv


def step_cost_argv(args, teacher_run: Path) -> list[str]:
    return [
        "--data-dir", str(args.data_dir),
        "--teacher", str(teacher_run),
        "--student-layers", ",".join(map(str, args.step_layers)),
        "--examples", str(args.step_examples),
        "--steps", str(args.step_steps),
        "--batch-size", str(args.batch_size),
        "--max-length", str(args.max_length),
        "--threads", str(min(2, os.cpu_count() or 2)),
        "--output", str(args.results),
        "--name", "step_cost",
    ]  # fmt: skip


def locate_base(args) -> str:
    """The assembled all-mpnet-base-v2 directory (`mpnet_teacher`: reused when checked)."""
    import mpnet_teacher

    directory = str(Path(args.model_dir).expanduser().absolute())
    if mpnet_teacher.main(["--cache-dir", directory]) != 0:
        raise SystemExit("mpnet_sst2: the teacher's base model could not be assembled")
    return directory


def teacher_command(args, base: str, run: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "pkd.cli", "finetune",
        "--model", base,
        "--task", "sst2",
        "--data-dir", str(args.data_dir),
        "--max-train-samples", str(args.teacher_train_samples or args.train_samples),
        "--max-length", str(args.max_length),
        "--epochs", f"{args.teacher_epochs:g}",
        "--lr", f"{args.lr:g}",
        "--batch-size", str(args.batch_size),
        "--output", str(run),
        "--overwrite",
        "--quiet",
    ]  # fmt: skip
    if args.eval_samples:
        cmd += ["--max-eval-samples", str(args.eval_samples)]
    return cmd


def teacher_stage(args, study: dict) -> Path:
    """The fine-tuned teacher run: --teacher-run, OUTPUT/teacher when finished, or trained."""
    run = Path(args.teacher_run) if args.teacher_run else Path(args.output) / "teacher"
    if (run / "metrics.json").is_file():
        study["teacher"] = {"run": str(run), "trained_here": False, "seconds": 0.0}
    elif args.teacher_run:
        raise SystemExit(f"mpnet_sst2: --teacher-run {run} is not a finished run")
    else:
        base = locate_base(args)
        t = time.perf_counter()
        subprocess.run(teacher_command(args, base, run), check=True)
        study["teacher"] = {
            "run": str(run),
            "trained_here": True,
            "seconds": round(time.perf_counter() - t, 1),
        }
    metrics = json.loads((run / "metrics.json").read_text())
    study["teacher"]["own_seconds"] = (metrics.get("wall_seconds") or {}).get("total")
    study["teacher"]["base"] = metrics.get("model")
    study["teacher"]["budget"] = teacher_budget(run)
    return run


def teacher_budget(run: Path) -> dict:
    """What the teacher was fine-tuned with, from its run's config.yaml."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    return {
        "train_samples": data.get("max_train_samples"),
        "max_length": data.get("max_length"),
        "epochs": train.get("epochs"),
        "lr": train.get("lr"),
        "batch_size": train.get("batch_size"),
        "seed": train.get("seed"),
        "pooling": ((cfg.get("meta") or {}).get("resolved") or {}).get("pooling"),
    }


def dry_run(args, teacher_run: Path) -> dict:
    """The compare's checks and estimate (`pkd.recipes.compare.compare(dry_run=True)`), trains nothing."""
    import sst2_compare

    from pkd.cli import configure_logging
    from pkd.recipes.compare import compare

    c = sst2_compare.parse_args(compare_argv(args, teacher_run))
    configure_logging(c.quiet)  # as `pkd compare --dry-run` would show it
    plan = compare(
        str(teacher_run / "model"),
        c.output,
        sst2_compare.student_base(c),
        c.student_layers,
        [m.strip() for m in c.methods.split(",") if m.strip()],
        c.seeds,
        bench_seq_length=c.max_length,
        dry_run=True,
    )
    print(plan["markdown"])
    return {
        "estimate_seconds": (plan.get("plans") or {}).get("estimate_seconds"),
        "teacher_metrics": plan["teacher"]["metrics"],
        "eval_samples": args.eval_samples,
    }


# ---------------------------------------------------------------------------------------------
# The report (pure: results in, text out)


def groups(results: dict) -> dict[tuple[int, str], dict]:
    """(depth, method) -> the compare's summary row (mean, std, n, min, max over seeds)."""
    return {(g["layers"], g["method"]): g for g in results["summary"]}


def pts(x: float) -> str:
    return f"{100 * x:.2f}"


def compare_pkd_kd(g: dict, layers: int, method: str) -> dict | None:
    """PKD (`method`) vs KD at one depth: difference of the means, in accuracy points, and
    whether it exceeds the seed spread (the larger of the two standard deviations)."""
    pkd, kd = g.get((layers, method)), g.get((layers, "kd"))
    if pkd is None or kd is None:
        return None
    diff = round(pkd["mean"] - kd["mean"], 9)  # equal means are a tie, not float noise
    spread = max(pkd["std"], kd["std"])
    return {
        "layers": layers,
        "method": method,
        "pkd_mean": pkd["mean"],
        "kd_mean": kd["mean"],
        "diff_points": round(100 * diff, 4),
        "spread_points": round(100 * spread, 4),
        "beats": diff > 0,
        "beyond_spread": abs(diff) > spread,
        "n": min(pkd["n"], kd["n"]),
    }


def verdict(results: dict) -> dict:
    """PKD-Skip and PKD-Last vs KD at each depth, from the compare's results.json: one
    paragraph and the comparisons it is made of."""
    g = groups(results)
    depths = sorted({k[0] for k in g}, reverse=True)
    rows = [c for d in depths for m in PKD_METHODS if (c := compare_pkd_kd(g, d, m))]
    if not rows:
        return {"comparisons": [], "text": "No PKD and KD runs at the same depth to compare."}
    sentences = []
    for d in depths:
        parts = []
        for c in (r for r in rows if r["layers"] == d):
            where = "beyond" if c["beyond_spread"] else "within"
            if c["diff_points"] == 0:
                parts.append(f"{LABELS[c['method']]} ties with KD ({pts(c['kd_mean'])})")
                continue
            how = "beats" if c["beats"] else "trails"
            parts.append(
                f"{LABELS[c['method']]} {how} KD by {abs(c['diff_points']):.2f} points "
                f"({pts(c['pkd_mean'])} vs {pts(c['kd_mean'])}), {where} the seed spread "
                f"(std up to {c['spread_points']:.2f})"
            )
        if parts:
            sentences.append(f"At {d} layers, " + "; ".join(parts) + ".")
    wins = sum(c["beats"] for c in rows)
    clear = sum(c["beats"] and c["beyond_spread"] for c in rows)
    n = min(c["n"] for c in rows)
    summary = (
        f"Overall PKD beats KD in {wins} of {len(rows)} depth x strategy comparisons, "
        f"{clear} of them beyond the seed spread"
    )
    if clear == 0:
        summary += (
            f"; with {n} seed{'s' if n != 1 else ''} per method this budget does not separate "
            "PKD from KD"
        )
    sentences.append(summary + ".")
    sentences += paper_sentences(results, g, depths)
    return {"comparisons": rows, "text": " ".join(sentences)}


def paper_sentences(results: dict, g: dict, depths: list[int]) -> list[str]:
    """Our best PKD's share of our teacher beside the paper's PKD share of its teacher."""
    teacher = teacher_accuracy(results)
    out = []
    for d in depths:
        ours = [g[(d, m)] for m in PKD_METHODS if (d, m) in g]
        if d not in PAPER["pkd"] or not ours or not teacher:
            continue
        best = max(ours, key=lambda x: x["mean"])
        out.append(
            f"The better PKD at {d} layers ({LABELS[best['method']]}) keeps "
            f"{100 * best['mean'] / teacher:.1f}% of our teacher's accuracy; the paper's "
            f"PKD-{d} keeps {100 * PAPER['pkd'][d] / PAPER['teacher']:.1f}% of its BERT-base."
        )
    return out


def teacher_accuracy(results: dict) -> float | None:
    split, metric = results["split"], results["metric"]
    return ((results["teacher"].get("metrics") or {}).get(split) or {}).get(metric)


def results_table(results: dict) -> list[str]:
    """Markdown: mean ± std over seeds per depth x method, with the paper's PKD rows."""
    teacher = teacher_accuracy(results)
    lines = [
        "| model | seeds | dev accuracy % (mean ± std) | min-max | % of teacher "
        "| paper (BERT-base, dev) |",
        "|---|---|---|---|---|---|",
        f"| teacher, {results['teacher']['layers']} layers | - | {pts(teacher)} | - | 100 "
        f"| {pts(PAPER['teacher'])} |",
    ]
    for s in results["summary"]:
        paper = PAPER["pkd"].get(s["layers"]) if s["method"].startswith("pkd") else None
        paper_cell = f"PKD-{s['layers']}: {pts(paper)}" if paper else "-"
        lines.append(
            f"| {s['layers']}-layer {LABELS.get(s['method'], s['method'])} | {s['n']} "
            f"| {pts(s['mean'])} ± {pts(s['std'])} | {pts(s['min'])}-{pts(s['max'])} "
            f"| {100 * s['mean'] / teacher:.1f} "
            f"| {paper_cell} |"
        )
    return lines


def step_table(step: dict) -> list[str]:
    modes = ["ft", "kd_cached", "pkd_cached", "pkd_online"]
    head = " | ".join(f"{d}x768 s/step (× FT)" for d in step["by_depth"])
    lines = [f"| mode | {head} |", "|---|" + "---|" * len(step["by_depth"])]
    for mode in modes:
        cells = [
            f"{d['step_seconds_median'][mode]:.2f} ({d['ratio_vs_ft'][mode]:.2f})"
            for d in step["by_depth"].values()
        ]
        lines.append(f"| {mode} | {' | '.join(cells)} |")
    return lines


def online_sentence(step: dict) -> str:
    """How much an online-teacher PKD step costs over a cached one, per depth."""
    parts = []
    for layers, d in step["by_depth"].items():
        sec = d["step_seconds_median"]
        parts.append(
            f"{sec['pkd_online'] / sec['pkd_cached']:.2f}x the time at {layers} layers "
            f"(+{sec['pkd_online'] - sec['pkd_cached']:.2f} s/step)"
        )
    return "A PKD step with the online teacher, against a cached one: " + ", ".join(parts) + "."


def cache_info(results: dict) -> dict | None:
    """The compare's teacher cache: path, examples, build seconds, bytes on disk (from its
    manifest when it is still there)."""
    path = next((r.get("teacher_cache_path") for r in results["rows"] if r.get("teacher_cache_path")), None)  # fmt: skip
    if not path:
        return None
    info = {"path": path}
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        info.update(
            examples=m.get("examples"),
            build_seconds=m.get("build_seconds"),
            bytes=sum(f["bytes"] for f in m.get("files", {}).values()) + manifest.stat().st_size,
            teacher_layers=m.get("teacher_layers"),
            hidden_size=m.get("hidden_size"),
        )
    return info


def fmt_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def budget_lines(study: dict) -> list[str]:
    a, t = study["args"], (study.get("teacher") or {}).get("budget") or {}
    dev = f"first {a['eval_samples']}" if a.get("eval_samples") else "all 872"
    return [
        f"- Students: first {a['train_samples']} SST-2 training sentences, {a['epochs']:g} "
        f"epoch(s), max length {a['max_length']}, batch {a['batch_size']}, lr {a['lr']:g}, "
        f"T={a['temperature']:g}, alpha={a['alpha']:g}, beta={a['beta']:g} (mean-form "
        f"patient loss), seeds {', '.join(map(str, a['seeds']))}; methods {a['methods']}; "
        f"depths {', '.join(map(str, a['student_layers']))} (first layers of the pre-trained "
        "all-mpnet-base-v2).",
        f"- Teacher: all-mpnet-base-v2 (MPNet, 12 x 768, {t.get('pooling') or 'mean'} pooling) "
        f"fine-tuned on the first {t.get('train_samples') or 'all'} sentences, "
        f"{t.get('epochs', 0):g} epochs, lr {t.get('lr', 0):g}, batch {t.get('batch_size')}, max "
        f"length {t.get('max_length')}, seed {t.get('seed')}.",
        f"- Evaluation: SST-2 dev, {dev} sentences.",
    ]


def render(study: dict, results: dict, step: dict | None) -> tuple[str, dict]:
    """README.md's text and summary.json's content."""
    m, load = study["machine"], study.get("load", {})
    share = sharing(load, m["cores"] or 2, float(m.get("torch_threads") or 2))
    v = verdict(results)
    cache = cache_info(results)
    teacher = teacher_accuracy(results)
    wall = study.get("wall_seconds", {})
    lines = [
        "# SST-2: 12-layer teacher -> 6- and 3-layer students (issue 25, point 3)",
        "",
        "`python benchmarks/mpnet_sst2.py` "
        + " ".join(study.get("argv") or [])
        + " (the compare's tables: sst2_compare/; the step cost: step_cost.md).",
        "",
        "## Budget",
        "",
        *budget_lines(study),
        "",
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"transformers {m['transformers']}. Load average (1/5/15 min) at the start "
        f"{load.get('start') or '-'}, at the end {load.get('end') or '-'}. {share['text']}"
        + (f" {study['note']}" if study.get("note") else ""),
        "",
        "## Dev accuracy, mean ± std over seeds",
        "",
        *results_table(results),
        "",
        f'Paper: {PAPER["source"]}, as given to us: "{PAPER["as_given"]}" (BERT-base teacher '
        "and students, full SST-2 training set, 128 tokens; the paper's row does not say Skip "
        f"or Last). Here: a sentence-embedding MPNet of BERT-base's size, "
        f"{study['args']['train_samples']:,} training sentences, {study['args']['epochs']:g} "
        f"student epoch(s), {study['args']['max_length']} tokens.",
        "",
        "## Verdict",
        "",
        v["text"],
        "",
        "## Cost",
        "",
    ]
    lines += cost_lines(study, results, step, cache, wall)
    summary = {
        "study": study,
        "teacher_accuracy": teacher,
        "table": results["summary"],
        "paper": {**PAPER, "pkd": {str(k): x for k, x in PAPER["pkd"].items()}},
        "verdict": v,
        "machine_shared": share,
        "teacher_cache": cache,
        "step_cost": step,
    }
    return "\n".join(lines) + "\n", summary


def cost_lines(study, results, step, cache, wall) -> list[str]:
    t = study.get("teacher", {})
    trained = "fine-tuned by this study" if t.get("trained_here") else "reused"
    own = t.get("own_seconds")
    cw = results.get("wall_seconds", {})
    lines = [
        f"- Whole study: {fmt_seconds(wall.get('total'))} of wall time"
        + (f" (plus the reused teacher's {fmt_seconds(own)})" if not t.get("trained_here") else "")
        + f"; the compare {fmt_seconds(cw.get('total'))}, the step cost "
        f"{fmt_seconds(wall.get('step_cost'))}.",
        f"- Teacher ({t.get('run')}, {trained}): fine-tuning took {fmt_seconds(own)}; dev "
        f"accuracy {pts(teacher_accuracy(results))}.",
    ]
    est = study.get("estimate") or {}
    if est.get("estimate_seconds"):
        lines.append(
            f"- The compare's dry-run estimate was {fmt_seconds(est['estimate_seconds'])} "
            "(training and evaluation, without the benchmark)."
        )
    if cw:
        lines.append(
            f"- Compare phases: checks + teacher evaluation {fmt_seconds(cw.get('validate'))}, "
            f"teacher cache {fmt_seconds(cw.get('teacher_cache'))}, students "
            f"{fmt_seconds(sum(s['seconds'] for s in cw['students'].values()))}, evaluation "
            f"{fmt_seconds(cw.get('evaluation'))}, benchmark {fmt_seconds(cw.get('benchmark'))}."
        )
    if cache and cache.get("bytes"):
        lines.append(
            f"- Teacher cache (logits + mean-pooled states of the {cache['teacher_layers'] + 1} "
            f"layer outputs, float16) over {cache['examples']} sentences: "
            f"{cache['bytes'] / 1e6:.1f} MB on disk, built in {cache['build_seconds']:.1f} s."
        )
    if step:
        s = step["setup"]
        lines += [
            "",
            f"Per-step cost (`step_cost.py`, batch {s['batch_size']}, max length "
            f"{s['max_length']}, median of {s['timed_steps']} interleaved steps; "
            f"seconds and × FT):",
            "",
            *step_table(step),
            "",
            online_sentence(step),
            "",
            f"Its teacher cache over {s['examples']} sentences: built in "
            f"{step['cache_build_seconds']:.1f} s, {step['cache_bytes'] / 1e6:.1f} MB on disk "
            f"(one teacher fine-tuning epoch over them ≈ "
            f"{step['teacher_finetune_epoch_seconds_est']:.0f} s). Load average during it: "
            f"{step['machine'].get('loadavg_start')} -> {step['machine'].get('loadavg_end')}.",
        ]
    return lines


def write_report(study: dict, results_dir: Path, compare_dir: Path) -> str:
    """README.md and summary.json in `results_dir` from the compare's results.json."""
    from pkd.fsio import atomic_write, write_json

    results = json.loads((compare_dir / "results.json").read_text())
    step_path = results_dir / "step_cost.json"
    step = json.loads(step_path.read_text()) if step_path.is_file() else None
    text, summary = render(study, results, step)
    atomic_write(results_dir / "README.md", text)
    write_json(results_dir / "summary.json", summary)
    return text


# ---------------------------------------------------------------------------------------------


def save_study(out: Path, study: dict) -> None:
    from pkd.fsio import write_json

    write_json(out / "study.json", study)


def run_study(args, out: Path, study: dict) -> None:
    import sst2_compare
    import step_cost

    t0 = time.perf_counter()
    with LoadSampler() as sampler:
        teacher_run = teacher_stage(args, study)
        save_study(out, study)
        t = time.perf_counter()
        if sst2_compare.main(compare_argv(args, teacher_run)) != 0:
            raise SystemExit("mpnet_sst2: the compare failed")
        study["wall_seconds"] = {"compare": round(time.perf_counter() - t, 1)}
        study["load"] = {"start": study["load"]["start"], "samples": sampler.samples}
        save_study(out, study)
        if not args.no_step_cost:
            t = time.perf_counter()
            step_cost.main(step_cost_argv(args, teacher_run))
            study["wall_seconds"]["step_cost"] = round(time.perf_counter() - t, 1)
    study["wall_seconds"]["total"] = round(time.perf_counter() - t0, 1)
    study["load"] = {**study["load"], "samples": sampler.samples, "end": load_average()}
    save_study(out, study)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, results_dir = Path(args.output), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    study_path = out / "study.json"
    if args.report_only:
        study = json.loads(study_path.read_text())
        if args.note:
            study["note"] = args.note
            save_study(out, study)
    else:
        old = json.loads(study_path.read_text()) if study_path.is_file() else {}
        study = {
            "argv": list(argv if argv is not None else sys.argv[1:]),
            "args": vars(args),
            "machine": machine(),
            "load": {"start": load_average()},
            "estimate": old.get("estimate"),
            "note": args.note,
        }
        if args.dry_run:
            study["estimate"] = dry_run(args, teacher_stage(args, study))
            save_study(out, {**old, "estimate": study["estimate"]})
            return 0
        run_study(args, out, study)
    print(write_report(study, results_dir, out / "compare"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

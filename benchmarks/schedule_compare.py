"""Side by side: `sst2_compare.py` result folders that differ in one training setting.

    python benchmarks/schedule_compare.py \
        --base "linear (committed)=benchmarks/results/sst2_compare_6k" \
        --other "constant=benchmarks/results/sst2_compare_6k_constant" \
        --other "constant, grouped=benchmarks/results/sst2_compare_6k_grouped" \
        --output benchmarks/results/lr_schedule

Reads each folder's results.json (dev accuracy per method and seed) and the students' gzipped
logs, and writes OUTPUT/schedule.{json,md}: per method the mean ± std over seeds, its change
against --base, and the step at which the cross-entropy first fell below --ce-below (0.6: off
the 0.69 plateau of a two-class guess), averaged over seeds; the student's training seconds
too (metrics.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

from pkd.fsio import atomic_write, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--base", required=True, help="NAME=FOLDER: what the others are measured against"
    )
    p.add_argument("--other", action="append", default=[], help="NAME=FOLDER (repeatable)")
    p.add_argument("--ce-below", type=float, default=0.6)
    p.add_argument("--output", required=True)
    return p.parse_args(argv)


def plateau_step(log: Path, threshold: float) -> int | None:
    """The first logged step whose CE is below `threshold` (None: never)."""
    with gzip.open(log, "rt") as f:
        for line in f:
            row = json.loads(line)
            if "ce" in row and "step" in row and row["ce"] < threshold:
                return row["step"]
    return None


def read(folder: Path, threshold: float) -> dict:
    """Per method: accuracies, plateau steps and training seconds over seeds; the teacher's."""
    results = json.loads((folder / "results.json").read_text())
    methods: dict[str, dict] = {}
    for row in results["rows"]:
        if row["role"] != "student":
            continue
        m = methods.setdefault(row["method"], {"accuracy": [], "plateau_step": [], "train_s": []})
        m["accuracy"].append(100 * row["metric"])
        run = folder / "runs" / row["name"]
        m["plateau_step"].append(plateau_step(run / "log.jsonl.gz", threshold))
        m["train_s"].append(json.loads((run / "metrics.json").read_text())["wall_seconds"]["train"])
    teacher = 100 * results["teacher"]["metrics"]["dev"]["accuracy"]
    return {"folder": str(folder), "teacher": teacher, "methods": methods}


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if len(known) == len(values) and known else None


def to_markdown(table: dict, base: str, threshold: float) -> str:
    names = list(table)
    lines = [
        "# SST-2 students: one training setting changed",
        "",
        f"Dev accuracy (%), mean ± std over seeds; change against **{base}**; the step at which "
        f"the CE first fell below {threshold:g} (mean over seeds; '-': a seed never did); "
        "training seconds per student (mean).",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    methods = table[base]["methods"]
    for method in methods:
        cells = []
        for name in names:
            m = table[name]["methods"].get(method)
            if m is None:
                cells.append("-")
                continue
            acc = m["accuracy"]
            cell = (
                f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f}"
            )
            if name != base:
                cell += (
                    f" ({statistics.mean(acc) - statistics.mean(methods[method]['accuracy']):+.2f})"
                )
            step = _mean(m["plateau_step"])
            cell += f"; step {step:.0f}" if step is not None else "; step -"
            cell += f"; {statistics.mean(m['train_s']):.0f} s"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| teacher | " + " | ".join(f"{table[n]['teacher']:.2f}" for n in names) + " |")
    lines += ["", "Folders: " + ", ".join(f"{n}: `{table[n]['folder']}`" for n in names)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = {}
    for spec in [args.base, *args.other]:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "results.json").is_file():
            print(
                f"schedule_compare: {spec!r}: expected NAME=FOLDER with results.json",
                file=sys.stderr,
            )
            return 2
        table[name] = read(Path(folder), args.ce_below)
    base = args.base.partition("=")[0]
    out = Path(args.output)
    write_json(out / "schedule.json", {"base": base, "ce_below": args.ce_below, "runs": table})
    markdown = to_markdown(table, base, args.ce_below)
    atomic_write(out / "schedule.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

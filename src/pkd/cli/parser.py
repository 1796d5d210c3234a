"""The `pkd` parser: one subcommand per entry of PARSERS, each with its options in the order
`pkd COMMAND --help` lists them."""

from __future__ import annotations

import argparse

from pkd.cli.options import (
    MODEL_HELP,
    HelpFormatter,
    add_data_source,
    add_grid_inputs,
    add_run_options,
    add_sections,
    list_of,
)
from pkd.config.choices import POOLINGS
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig, PretrainRunConfig
from pkd.demo import DEFAULTS as DEMO

# One function per command: its options, in the order --help lists them.


def _finetune_options(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "--model", "the pre-trained encoder to fine-tune")
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=argparse.SUPPRESS,
        help="how the head reads the tokens: auto (mean for a sentence-transformers checkpoint "
        "trained with mean pooling, else cls)|cls ([CLS] through the pooler)|mean (masked "
        "token mean) (default: auto)",
    )
    add_sections(p, FinetuneRunConfig)


def _distill_options(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "--teacher", "the fine-tuned teacher")
    add_sections(p, DistillRunConfig)


def _pretrain_options(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "--teacher", "the pre-trained encoder to distil (not fine-tuned)")
    add_sections(p, PretrainRunConfig)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    add_data_source(p)
    p.add_argument(
        "--split", default="dev", help="split to score: dev, dev_matched, dev_mismatched, train"
    )
    p.add_argument(
        "--output-file",
        help="where to write the metrics JSON (default: eval_TASK_SPLIT.json beside the model "
        "directory, i.e. in its run directory)",
    )


def _predict_options(p: argparse.ArgumentParser) -> None:
    add_data_source(p)
    p.add_argument("--split", default="test", help="split to predict: test, test_matched, dev, ...")
    p.add_argument(
        "--output-file",
        help="predictions TSV (default: predictions_TASK_SPLIT.tsv in the model directory)",
    )


def _benchmark_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        help=f"models to time, the first is the reference: each {MODEL_HELP} (or an ONNX export)",
    )
    p.add_argument(
        "--batch-sizes", type=list_of(int), default=[1, 32], metavar="N,N", help="batch sizes"
    )
    p.add_argument(
        "--seq-lengths",
        type=list_of(int),
        default=[32, 128],
        metavar="N,N",
        help="sequence lengths (tokens)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--backend", default="torch", help="torch|onnx (ONNX dirs from `pkd export`)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per setting")
    p.add_argument("--iterations", type=int, default=10, help="timed runs per setting")
    p.add_argument(
        "--output",
        default=None,
        help="directory for benchmark.json and benchmark.md (default: none, print only)",
    )


def _compare_options(p: argparse.ArgumentParser) -> None:
    add_grid_inputs(p, "directory for the runs and the tables")
    p.add_argument(
        "--student-layers",
        type=list_of(int),
        default=[3],
        metavar="N,N",
        help="student depths M to train",
    )
    p.add_argument(
        "--methods",
        type=list_of(str),
        default=["ft", "kd", "pkd-skip", "pkd-last"],
        metavar="A,B",
        help="methods to train: ft, kd, pkd-skip, pkd-last",
    )
    p.add_argument(
        "--seeds",
        type=list_of(int),
        default=[1, 2, 3],
        metavar="N,N",
        help="training seeds, one run per seed, method and depth",
    )
    p.add_argument("--bench-batch-size", type=int, default=32, help="batch size when timing")
    p.add_argument("--bench-seq-length", type=int, default=128, help="sequence length when timing")
    p.add_argument(
        "--bench-threads", type=int, default=None, help="CPU threads when timing (default: all)"
    )
    p.add_argument("--bench-warmup", type=int, default=3, help="untimed runs per model")
    p.add_argument("--bench-iterations", type=int, default=10, help="timed runs per model")
    p.add_argument("--dry-run", action="store_true", help="print the runs it would do")
    add_sections(p, DistillRunConfig, skip={"distill": ("method", "strategy", "student_layers")})


def _sweep_options(p: argparse.ArgumentParser) -> None:
    add_grid_inputs(p, "directory for trials, study and reports")
    p.add_argument("--method", default="pkd", help="ft|kd|pkd")
    p.add_argument(
        "--strategy",
        type=list_of(str),
        default=None,
        metavar="skip,last",
        help="PKD layer map(s); two are searched (default: skip)",
    )
    p.add_argument("--student-layers", type=int, default=3, help="student depth M")
    p.add_argument(
        "--grid",
        default=None,
        help="'paper': T, alpha, beta, lr as the authors (default: none; give --grid or --space)",
    )
    p.add_argument(
        "--space",
        default=None,
        help="YAML search space, lists or {low, high, log} (default: none; --grid or --space)",
    )
    p.add_argument("--trials", type=int, default=None, help="budget (default: grid size; TPE 20)")
    p.add_argument("--sampler", default=None, help="grid|tpe (default: grid for lists)")
    p.add_argument("--pruner", default="none", help="none|median|hyperband (per-epoch metric)")
    p.add_argument(
        "--pruner-startup-trials",
        type=int,
        default=3,
        metavar="N",
        help="finished trials before the median pruner prunes",
    )
    p.add_argument(
        "--seeds",
        type=list_of(int),
        default=[],
        metavar="N,N",
        help="re-run the best config with these seeds (mean ± std)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="RDB URL or journal file, for a shared study (default: OUTPUT/study.journal)",
    )
    p.add_argument("--study-name", default="pkd-sweep", help="the study's name in --storage")
    p.add_argument(
        "--selection-split",
        default=None,
        help="dev (paper)|holdout (from train) (default: holdout with --holdout-fraction, else dev)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="silence after which another machine's running trial counts as dead",
    )
    p.add_argument("--dry-run", action="store_true", help="check and describe; train nothing")
    sets = ("method", "strategy", "student_layers", "layer_map", "preset")  # the sweep's own
    add_sections(p, DistillRunConfig, skip={"distill": sets})


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"the fine-tuned model: {MODEL_HELP}")
    p.add_argument("--output", required=True, help="export directory to create")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8: add a dynamically quantised model (default: none, fp32 only)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument(
        "--task",
        default=None,
        help="task whose dev split feeds the parity check (default: none, built-in sentences)",
    )
    p.add_argument(
        "--data-dir", default=None, help="GLUE task directory for --task (default: the Hub's)"
    )
    p.add_argument(
        "--validation-file",
        default=None,
        help="CSV/TSV/JSONL whose texts feed the parity check (default: none)",
    )
    p.add_argument(
        "--text-columns",
        type=list_of(str),
        default=None,
        metavar="A,B",
        help="text column(s) of --validation-file (default: none)",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the data file")
    p.add_argument("--parity-samples", type=int, default=256, help="texts the parity check runs")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="demo_runs", help="directory for the demo's runs")
    p.add_argument("--train-samples", type=int, default=DEMO["train_samples"], help="train tweets")
    p.add_argument("--eval-samples", type=int, default=DEMO["eval_samples"], help="dev tweets")
    p.add_argument(
        "--transfer-samples",
        type=int,
        default=DEMO["transfer_samples"],
        help="unlabelled tweets the teacher labels for KD/PKD (0: none)",
    )
    p.add_argument(
        "--epochs", type=float, default=DEMO["epochs"], help="epochs for teacher and students"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _no_options(p: argparse.ArgumentParser) -> None:
    """`pkd presets` takes none."""


# command -> (its one-line help, the function adding its options), in `pkd --help` order
PARSERS = {
    "finetune": ("fine-tune a teacher (or any encoder) on a task", _finetune_options),
    "distill": ("distill a fine-tuned teacher into an M-layer student", _distill_options),
    "pretrain": (
        "task-agnostic patient distillation on unlabelled text (students of any width)",
        _pretrain_options,
    ),
    "evaluate": (
        "task metrics of a fine-tuned model, or of an embedding model on scored pairs (JSON)",
        _evaluate_options,
    ),
    "predict": ("predictions file in GLUE submission format", _predict_options),
    "benchmark": ("size, latency and throughput of several models", _benchmark_options),
    "compare": ("teacher vs FT/KD/PKD-Skip/PKD-Last students, several seeds", _compare_options),
    "sweep": ("the paper's grid or a search space on Optuna (resumable)", _sweep_options),
    "presets": ("the authors' best settings per task, method and depth", _no_options),
    "export": ("ONNX export (+ int8) with a parity check", _export_options),
    "demo": ("offline quickstart: fine-tune MiniLM, distill FT/KD/PKD students", _demo_options),
}


def build_parser() -> argparse.ArgumentParser:
    """The `pkd` parser: one subcommand per entry of PARSERS."""
    parser = argparse.ArgumentParser(
        prog="pkd", description="Patient Knowledge Distillation for BERT models"
    )
    parser.add_argument(
        "--version", action="version", version=f"pkd {__import__('pkd').__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, add_options) in PARSERS.items():
        add_options(
            sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        )
    return parser

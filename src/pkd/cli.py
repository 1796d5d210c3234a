"""`pkd` command line: subcommands -> resolved config -> the Python API. No logic here.

Every dataclass field of the config sections becomes an option (`max_length` ->
`--max-length`); `--config FILE.yaml` supplies values first, options override them.
Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from pkd.config.choices import POOLINGS
from pkd.config.files import SECTIONS, build, load_yaml, merge
from pkd.config.presets import apply, format_table
from pkd.config.runs import (
    TRAINING_DATA_OPTIONS,
    DistillRunConfig,
    FinetuneRunConfig,
    PretrainRunConfig,
)
from pkd.config.sections import DataConfig
from pkd.demo import DEFAULTS as DEMO
from pkd.errors import PkdError
from pkd.models.encoders import quiet_transformers

SECTION_OPTIONS = {
    "finetune": ("data", "train"),
    "distill": ("data", "train", "distill"),
    "pretrain": ("text", "train", "pretrain"),
}
NOT_OPTIONS = ("preset_source",)  # recorded in config.yaml by --preset, not set by the user


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _list_of(kind):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None

    return parse


MODEL_HELP = "a Hub name, a model directory, or a `pkd finetune`/`pkd distill` run directory"


def _show(value) -> str:
    """A default as the user would type it."""
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already (or is required,
    a flag, or a section option whose default `_add_section` wrote into the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} (required)"
        if "default" in text or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: {_show(action.default)})"


def _section_defaults(config_cls, section: str):
    """The section's defaults as a command sees them (distill's lr differs from finetune's)."""
    if config_cls is None:
        return SECTIONS[section]()
    f = {f.name: f for f in dataclasses.fields(config_cls)}[section]
    return f.default_factory()


def _add_section(
    parser: argparse.ArgumentParser,
    section: str,
    skip: tuple[str, ...] = (),
    config_cls=DistillRunConfig,
) -> None:
    """One option per field of a config section, defaulting to 'not given' (so --config and
    --preset can supply it); the help shows the field's default for this command."""
    group = parser.add_argument_group(section)
    defaults = _section_defaults(config_cls, section)
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name in skip or f.name in NOT_OPTIONS:
            continue
        text = f.metadata.get("help") or f.name.replace("_", " ")
        if "default" not in text:
            text += f" (default: {_show(getattr(defaults, f.name))})"
        kw = {"dest": f"{section}.{f.name}", "default": argparse.SUPPRESS, "help": text}
        t = str(f.type)
        if t != "bool":
            kw["metavar"] = f.name.upper()
        if t == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif t.startswith("list[int]"):
            kw.update(type=_list_of(int), metavar="N,N")
        elif t.startswith("list[str]"):
            kw.update(type=_list_of(str), metavar="A,B")
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        group.add_argument(_flag(f.name), **kw)


def _add_run_options(p: argparse.ArgumentParser, model_flag: str, what: str) -> None:
    """The run options of finetune and distill. Unset unless given (SUPPRESS), so that
    --config can supply them."""
    p.add_argument(
        "--config", help="YAML config file; command-line options override it (default: none)"
    )
    unset = {"default": argparse.SUPPRESS}
    flag = {"action": "store_true", **unset}
    p.add_argument(
        model_flag,
        dest=model_flag.strip("-"),
        help=f"{what}: {MODEL_HELP} (required, here or in --config)",
        **unset,
    )
    p.add_argument(
        "--output", help="run directory to create (required, here or in --config)", **unset
    )
    p.add_argument("--overwrite", help="replace an existing run directory", **flag)
    p.add_argument("--resume", help="continue from the latest checkpoint in --output", **flag)
    p.add_argument(
        "--resume-from", help="continue from this checkpoint directory (default: none)", **unset
    )
    p.add_argument(
        "--trust-remote-code", help="allow custom model code from the checkpoint", **flag
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check everything, print the plan, train nothing"
    )


def _add_data_source(p: argparse.ArgumentParser) -> None:
    """Options to pick a task and data for evaluate/predict (no training options)."""
    _add_section(p, "data", skip=TRAINING_DATA_OPTIONS, config_cls=None)
    p.add_argument("--model", required=True, help=f"the fine-tuned model: {MODEL_HELP}")
    p.add_argument("--batch-size", type=int, default=128, help="examples per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_grid_inputs(p: argparse.ArgumentParser, output_help: str) -> None:
    """--config, --teacher and --output of compare and sweep (many runs from one teacher)."""
    p.add_argument(
        "--config",
        help="YAML config file for the shared data/train/distill options (default: none)",
    )
    p.add_argument("--teacher", required=True, help=f"the fine-tuned teacher: {MODEL_HELP}")
    p.add_argument("--output", required=True, help=output_help)


def _add_shared_sections(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    """The data/train/distill options compare and sweep share between their runs; `skip`:
    the distill options the command sets itself."""
    for s in ("data", "train"):
        _add_section(p, s)
    _add_section(p, "distill", skip=skip)


# One function per command: its options, in the order --help lists them.


def _finetune_options(p: argparse.ArgumentParser) -> None:
    _add_run_options(p, "--model", "the pre-trained encoder to fine-tune")
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=argparse.SUPPRESS,
        help="how the head reads the tokens: auto (mean for a sentence-transformers checkpoint "
        "trained with mean pooling, else cls)|cls ([CLS] through the pooler)|mean (masked "
        "token mean) (default: auto)",
    )
    for s in SECTION_OPTIONS["finetune"]:
        _add_section(p, s, config_cls=FinetuneRunConfig)


def _distill_options(p: argparse.ArgumentParser) -> None:
    _add_run_options(p, "--teacher", "the fine-tuned teacher")
    for s in SECTION_OPTIONS["distill"]:
        _add_section(p, s)


def _pretrain_options(p: argparse.ArgumentParser) -> None:
    _add_run_options(p, "--teacher", "the pre-trained encoder to distil (not fine-tuned)")
    for s in SECTION_OPTIONS["pretrain"]:
        _add_section(p, s, config_cls=PretrainRunConfig)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    _add_data_source(p)
    p.add_argument(
        "--split", default="dev", help="split to score: dev, dev_matched, dev_mismatched, train"
    )
    p.add_argument(
        "--output-file",
        help="where to write the metrics JSON (default: eval_TASK_SPLIT.json beside the model "
        "directory, i.e. in its run directory)",
    )


def _predict_options(p: argparse.ArgumentParser) -> None:
    _add_data_source(p)
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
        "--batch-sizes", type=_list_of(int), default=[1, 32], metavar="N,N", help="batch sizes"
    )
    p.add_argument(
        "--seq-lengths",
        type=_list_of(int),
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
    _add_grid_inputs(p, "directory for the runs and the tables")
    p.add_argument(
        "--student-layers",
        type=_list_of(int),
        default=[3],
        metavar="N,N",
        help="student depths M to train",
    )
    p.add_argument(
        "--methods",
        type=_list_of(str),
        default=["ft", "kd", "pkd-skip", "pkd-last"],
        metavar="A,B",
        help="methods to train: ft, kd, pkd-skip, pkd-last",
    )
    p.add_argument(
        "--seeds",
        type=_list_of(int),
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
    _add_shared_sections(p, skip=("method", "strategy", "student_layers"))


def _sweep_options(p: argparse.ArgumentParser) -> None:
    _add_grid_inputs(p, "directory for trials, study and reports")
    p.add_argument("--method", default="pkd", help="ft|kd|pkd")
    p.add_argument(
        "--strategy",
        type=_list_of(str),
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
        type=_list_of(int),
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
    _add_shared_sections(p, skip=("method", "strategy", "student_layers", "layer_map", "preset"))


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
        type=_list_of(str),
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
    "evaluate": ("task metrics of a fine-tuned model (JSON)", _evaluate_options),
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


def resolve(args: argparse.Namespace, cls):
    """defaults < --config YAML < command-line options -> a validated config dataclass."""
    values = load_yaml(args.config) if args.config else {}
    source = args.config or "options"
    given: dict = {}
    for key, value in vars(args).items():
        if key in ("command", "config", "dry_run"):
            continue
        if "." in key:
            section, name = key.split(".", 1)
            given.setdefault(section, {})[name] = value
        else:
            given[key] = value
    if cls is DistillRunConfig:  # defaults < YAML < --preset < options
        return build(cls, apply(values, given), source)
    return build(cls, merge(values, given), source)


def resolve_sections(args: argparse.Namespace) -> dict:
    """--config YAML merged with the section options given: a nested dict for `compare`."""
    values = load_yaml(args.config) if args.config else {}
    given: dict = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            given.setdefault(section, {})[name] = value
    return merge(values, given)


def _given_sections(args: argparse.Namespace) -> dict:
    """The section options given on the command line (they override a --preset)."""
    given: dict = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            given.setdefault(section, {})[name] = value
    return given


def _data_config(args) -> DataConfig:
    values = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("data.")}
    return DataConfig(**values)


def configure_logging(quiet: bool) -> None:
    """How `pkd` shows its progress: pkd's log lines as plain messages (INFO, or WARNING with
    --quiet), transformers' load reports and download bars off, accelerate's per-file lines
    off. Only the CLI (or a script, as the host) calls this: the library leaves the host's
    logging alone."""
    quiet_transformers()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


QUIET_COMMANDS = ("evaluate", "predict", "benchmark", "export", "presets")  # warnings only


# One function per command. Each imports its module when it runs: `pkd --help`, `pkd presets`
# and argument errors then load neither Accelerate nor the run API (about 2 s on 2 CPU cores).


def _finetune(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import finetune
    from pkd.recipes.dryrun import format_plan

    cfg = resolve(args, FinetuneRunConfig)
    if args.dry_run:
        print(format_plan(finetune(cfg, dry_run=True)))
        return
    metrics = finetune(cfg)
    print(json.dumps({"output": cfg.output, "best": metrics["best"]}, indent=2))


def _distill(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import distill

    _run_or_plan(args, DistillRunConfig, distill)


def _pretrain(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import pretrain

    _run_or_plan(args, PretrainRunConfig, pretrain)


def _run_or_plan(args: argparse.Namespace, cls, command) -> None:
    """`command(cfg)` for the resolved config: its best metrics, or with --dry-run its plan."""
    from pkd.recipes.dryrun import format_plan

    cfg = resolve(args, cls)
    result = command(cfg, dry_run=args.dry_run)
    if args.dry_run:
        print(format_plan(result))
    else:
        print(json.dumps({"output": cfg.output, "best": result["best"]}, indent=2))


def _evaluate(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import evaluate

    data = _data_config(args)
    metrics = evaluate(args.model, data, args.split, args.batch_size, True, args.output_file)
    print(json.dumps(metrics, indent=2))


def _predict(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import predict

    print(predict(args.model, _data_config(args), args.split, args.output_file, args.batch_size))


def _benchmark(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.deploy.bench import benchmark

    result = benchmark(
        args.models,
        args.batch_sizes,
        args.seq_lengths,
        args.threads,
        args.backend,
        args.output,
        args.warmup,
        args.iterations,
    )
    print(result["markdown"])


def _compare(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.recipes.compare import compare

    result = compare(
        args.teacher,
        args.output,
        resolve_sections(args),
        args.student_layers,
        args.methods,
        args.seeds,
        options=_given_sections(args),
        bench_batch_size=args.bench_batch_size,
        bench_seq_length=args.bench_seq_length,
        bench_threads=args.bench_threads,
        bench_warmup=args.bench_warmup,
        bench_iterations=args.bench_iterations,
        dry_run=args.dry_run,
    )
    print(result["markdown"])


def _sweep(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.recipes.sweep import SweepOptions, run_sweep

    options = SweepOptions(
        teacher=args.teacher,
        output=args.output,
        base=resolve_sections(args),
        method=args.method,
        strategies=args.strategy,
        student_layers=args.student_layers,
        grid=args.grid,
        space=args.space,
        trials=args.trials,
        sampler=args.sampler,
        pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials,
        seeds=args.seeds,
        storage=args.storage,
        study_name=args.study_name,
        selection_split=args.selection_split,
        stale_after=args.stale_after,
    )
    print(run_sweep(options, dry_run=args.dry_run, quiet=quiet)["markdown"])


def _presets(args: argparse.Namespace, quiet: bool) -> None:
    print(format_table())


def _export(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.deploy.export import export

    parity = export(
        args.model,
        args.output,
        quantize=args.quantize,
        opset=args.opset,
        task=args.task,
        data_dir=args.data_dir,
        validation_file=args.validation_file,
        text_columns=args.text_columns,
        encoding=args.encoding,
        parity_samples=args.parity_samples,
        overwrite=args.overwrite,
    )
    print(json.dumps(parity, indent=2))


def _demo(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.demo import demo

    demo(
        args.output,
        args.train_samples,
        args.eval_samples,
        args.epochs,
        quiet=args.quiet,
        transfer_samples=args.transfer_samples,
    )


COMMANDS = {
    "finetune": _finetune,
    "distill": _distill,
    "pretrain": _pretrain,
    "evaluate": _evaluate,
    "predict": _predict,
    "benchmark": _benchmark,
    "compare": _compare,
    "sweep": _sweep,
    "presets": _presets,
    "export": _export,
    "demo": _demo,
}


def run(argv: list[str] | None = None) -> int:
    """Parse `argv`, configure logging, run the command; 0 on success (errors raise)."""
    args = build_parser().parse_args(argv)
    quiet = args.command in QUIET_COMMANDS or bool(
        getattr(args, "quiet", False) or getattr(args, "train.quiet", False)
    )
    configure_logging(quiet)
    COMMANDS[args.command](args, quiet)
    return 0


def end_process_group() -> None:
    """End the torchrun process group that the command's runs shared (`pkd.training.loop.train`
    keeps it up for the next run in the process: compare, sweep); torch is not imported
    for a command that did not load it."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
        end_process_group()
    except PkdError as e:
        print(f"pkd: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("pkd: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()

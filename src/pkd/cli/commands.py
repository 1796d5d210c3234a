"""What each `pkd` command does with its parsed options: resolve the config, call the Python
API, print the result. No logic here.

`--config FILE.yaml` supplies values first, command-line options override them.
"""

from __future__ import annotations

import argparse
import json

from pkd.config.files import build, load_yaml, merge
from pkd.config.presets import apply, format_table
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig, PretrainRunConfig
from pkd.config.sections import DataConfig

PARSER_KEYS = ("command", "config", "dry_run")  # what the parser adds besides the options


def given_options(args: argparse.Namespace) -> dict:
    """The options given on the command line as a nested dict (`data.task` -> data: {task})."""
    given: dict = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            given.setdefault(section, {})[name] = value
        elif key not in PARSER_KEYS:
            given[key] = value
    return given


def given_sections(args: argparse.Namespace) -> dict:
    """The section options given on the command line (they override a --preset)."""
    return {k: v for k, v in given_options(args).items() if isinstance(v, dict)}


def resolve(args: argparse.Namespace, cls):
    """defaults < --config YAML < command-line options -> a validated config dataclass."""
    values = _config_file(args)
    source = args.config or "options"
    given = given_options(args)
    if cls is DistillRunConfig:  # defaults < YAML < --preset < options
        return build(cls, apply(values, given), source)
    return build(cls, merge(values, given), source)


def resolve_sections(args: argparse.Namespace) -> dict:
    """--config YAML merged with the section options given: a nested dict for `compare`."""
    return merge(_config_file(args), given_sections(args))


def _config_file(args: argparse.Namespace) -> dict:
    """The values of --config FILE.yaml ({} without one)."""
    return load_yaml(args.config) if args.config else {}


def _data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(**given_sections(args).get("data", {}))


# One function per command. Each imports its module when it runs: `pkd --help`, `pkd presets`
# and argument errors then load neither Accelerate nor the run API (about 2 s on 2 CPU cores).


def _finetune(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import finetune

    _run_or_plan(args, FinetuneRunConfig, finetune)


def _distill(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import distill

    _run_or_plan(args, DistillRunConfig, distill)


def _pretrain(args: argparse.Namespace, quiet: bool) -> None:
    from pkd.api import pretrain

    _run_or_plan(args, PretrainRunConfig, pretrain)


def _run_or_plan(args: argparse.Namespace, cls, command) -> None:
    """`command(cfg)` for the resolved config: its best metrics, or with --dry-run its plan."""
    cfg = resolve(args, cls)
    result = command(cfg, dry_run=args.dry_run)
    if args.dry_run:
        print(result.describe())
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
        options=given_sections(args),
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
    from pkd.deploy.export_embedding import export_model as export

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

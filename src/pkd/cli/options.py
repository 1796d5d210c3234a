"""The options the commands share: one per field of a config section, the run options of
finetune/distill/pretrain, and the data options of evaluate/predict.

Every dataclass field of a section becomes an option (`max_length` -> `--max-length`) whose
help ends with the field's default for the command.
"""

from __future__ import annotations

import argparse
import dataclasses

from pkd.config.files import SECTIONS
from pkd.config.runs import TRAINING_DATA_OPTIONS

NOT_OPTIONS = ("preset_source",)  # recorded in config.yaml by --preset, not set by the user
MODEL_HELP = "a Hub name, a model directory, or a `pkd finetune`/`pkd distill` run directory"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def list_of(kind):
    """An argparse type: comma-separated values of `kind` (`2,4` -> [2, 4])."""

    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None

    return parse


def show(value) -> str:
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
    a flag, or a section option whose default `add_section` wrote into the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} (required)"
        if "default" in text or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: {show(action.default)})"


def section_defaults(config_cls, section: str):
    """The section's defaults as a command sees them (distill's lr differs from finetune's)."""
    if config_cls is None:
        return SECTIONS[section]()
    f = {f.name: f for f in dataclasses.fields(config_cls)}[section]
    return f.default_factory()


def add_section(
    parser: argparse.ArgumentParser, section: str, skip: tuple[str, ...], config_cls
) -> None:
    """One option per field of a config section, defaulting to 'not given' (so --config and
    --preset can supply it); the help shows the field's default for this command
    (`config_cls`: its run config, or None for the section's own defaults)."""
    group = parser.add_argument_group(section)
    defaults = section_defaults(config_cls, section)
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name in skip or f.name in NOT_OPTIONS:
            continue
        text = f.metadata.get("help") or f.name.replace("_", " ")
        if "default" not in text:
            text += f" (default: {show(getattr(defaults, f.name))})"
        kw = {"dest": f"{section}.{f.name}", "default": argparse.SUPPRESS, "help": text}
        t = str(f.type)
        if t != "bool":
            kw["metavar"] = f.name.upper()
        if t == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif t.startswith("list[int]"):
            kw.update(type=list_of(int), metavar="N,N")
        elif t.startswith("list[str]"):
            kw.update(type=list_of(str), metavar="A,B")
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        group.add_argument(flag(f.name), **kw)


def add_sections(
    parser: argparse.ArgumentParser, config_cls, skip: dict[str, tuple[str, ...]] | None = None
) -> None:
    """An option group per section of the run config `config_cls`, in its field order (finetune:
    data, train; distill: data, train, distill; pretrain: text, train, pretrain); `skip`: per
    section, the options the command sets itself."""
    for f in dataclasses.fields(config_cls):
        if f.name in SECTIONS:
            add_section(parser, f.name, (skip or {}).get(f.name, ()), config_cls)


def add_run_options(p: argparse.ArgumentParser, model_flag: str, what: str) -> None:
    """The run options of finetune, distill and pretrain. Unset unless given (SUPPRESS), so
    that --config can supply them."""
    p.add_argument(
        "--config", help="YAML config file; command-line options override it (default: none)"
    )
    unset = {"default": argparse.SUPPRESS}
    store = {"action": "store_true", **unset}
    p.add_argument(
        model_flag,
        dest=model_flag.strip("-"),
        help=f"{what}: {MODEL_HELP} (required, here or in --config)",
        **unset,
    )
    p.add_argument(
        "--output", help="run directory to create (required, here or in --config)", **unset
    )
    p.add_argument("--overwrite", help="replace an existing run directory", **store)
    p.add_argument("--resume", help="continue from the latest checkpoint in --output", **store)
    p.add_argument(
        "--resume-from", help="continue from this checkpoint directory (default: none)", **unset
    )
    p.add_argument(
        "--trust-remote-code", help="allow custom model code from the checkpoint", **store
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check everything, print the plan, train nothing"
    )


def add_data_source(p: argparse.ArgumentParser) -> None:
    """Options to pick a task and data for evaluate/predict (no training options)."""
    add_section(p, "data", skip=TRAINING_DATA_OPTIONS, config_cls=None)
    p.add_argument("--model", required=True, help=f"the fine-tuned model: {MODEL_HELP}")
    p.add_argument("--batch-size", type=int, default=128, help="examples per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_grid_inputs(p: argparse.ArgumentParser, output_help: str) -> None:
    """--config, --teacher and --output of compare and sweep (many runs from one teacher)."""
    p.add_argument(
        "--config",
        help="YAML config file for the shared data/train/distill options (default: none)",
    )
    p.add_argument("--teacher", required=True, help=f"the fine-tuned teacher: {MODEL_HELP}")
    p.add_argument("--output", required=True, help=output_help)

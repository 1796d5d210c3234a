"""`pkd` command line: subcommands -> resolved config -> the Python API. No logic here.

Its options (`pkd.cli.options`: one per field of a config section, `max_length` ->
`--max-length`), the parser (`pkd.cli.parser`) and what each command does (`pkd.cli.commands`).
Errors a user can fix print one line and exit with status 2.

Layer 8: an entry point; imports any room.
"""

from __future__ import annotations

import logging
import os
import sys

from pkd.cli.commands import COMMANDS
from pkd.cli.parser import build_parser
from pkd.errors import PkdError
from pkd.models.encoders import quiet_transformers


def configure_logging(quiet: bool) -> None:
    """How `pkd` shows its progress: pkd's log lines as plain messages (INFO, or WARNING with
    --quiet), transformers' load reports and download bars off, `datasets`' bars off where
    stderr is not a terminal (a log file), accelerate's per-file lines off. Only the CLI (or a
    script, as the host) calls this: the library leaves the host's logging alone."""
    quiet_transformers()
    if not sys.stderr.isatty():  # as pkd's own bars: none in log files
        quiet_datasets()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


def quiet_datasets() -> None:
    """`datasets`' progress bars off, without importing it (about 1 s of every run's start-up:
    pkd imports it only for data from the Hub or --dataset): its environment variable, read
    when it is imported, unless the user set it; its own switch if it is already imported."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


QUIET_COMMANDS = ("evaluate", "predict", "benchmark", "export", "presets")  # warnings only


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

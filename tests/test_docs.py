"""The docs name only options the `pkd` command has, with the defaults it has.

Every `--option` named in README.md, CONTRIBUTING.md and docs/*.md must exist in the `pkd` CLI:
for the command it is named with (`pkd distill ... --beta 100`: distill), or in some command
when the text does not say which. Where the text states a default ("`--beta` (default 100)",
"`--teacher-mode cached` (default)", a table column headed "default ..."), it must equal the
default the CLI shows in `pkd COMMAND --help` (for a prose mention: the default of at least one
command that has the option).

What is not pkd's, and so not checked:
- a command line (a line of a fenced code block, backslash continuations joined, or an inline
  code span) that starts with another tool: pip, pytest, python (`python benchmarks/x.py`,
  `python examples/x.py`, `python -m pytest`), torchrun, accelerate, ruff, hf, git, ...; its
  options are that tool's. `torchrun ... -m pkd.cli distill ...` and `accelerate launch ...
  -m pkd.cli distill ...` are pkd's again from `-m pkd.cli` on;
- `--snake_case` flags: pkd's options are kebab-case, so these are other tools' (torchrun,
  accelerate, the authors' scripts);
- the few options of other tools that the prose names alone (OTHER_TOOLS below);
- text in python and yaml code blocks, and `# comments` in shell code blocks.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import pkd.cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

# The first word of a command line that is not pkd's (`python -m pkd.cli` is pkd's: see below).
OTHER_COMMANDS = {
    "pip", "pip3", "pytest", "python", "python3", "torchrun", "accelerate", "ruff", "hf",
    "huggingface-cli", "git", "gzip", "zcat", "tensorboard", "mlflow", "optuna", "bash", "sh",
}  # fmt: skip
# Options of other tools that the prose names on their own, outside a command line.
OTHER_TOOLS = {"--no-deps": "pip install"}

OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
DEFAULT_IN_HELP = re.compile(r"\bdefault:?\s+([^\s;,()]+)")


# ---------------------------------------------------------------------------------------------
# The CLI: each command's options and the default its --help shows


def build_parser() -> argparse.ArgumentParser:
    """`pkd`'s parser, from `pkd.cli.build_parser` or, once `pkd.cli` is a package, from the
    submodule that defines it."""
    if hasattr(pkd.cli, "build_parser"):
        return pkd.cli.build_parser()
    for info in pkgutil.iter_modules(getattr(pkd.cli, "__path__", []), "pkd.cli."):
        module = importlib.import_module(info.name)
        if hasattr(module, "build_parser"):
            return module.build_parser()
    raise AssertionError("no build_parser in pkd.cli")


def shown(action: argparse.Action) -> str | None:
    """The default `pkd COMMAND --help` shows for an option: the one its help names, or the
    argparse default the help formatter appends."""
    found = DEFAULT_IN_HELP.search(action.help or "")
    if found:
        return found.group(1)
    if action.default is argparse.SUPPRESS or action.nargs == 0:
        return "off" if action.nargs == 0 else None
    value = action.default
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def cli_options() -> dict[str, dict[str, set[str]]]:
    """{command: {option string: the defaults its help shows}}: the option's own, and any that
    another option's help states for it ("--dataset ...; its --text-column (default 'text')").
    argparse has no public way to list a parser's actions, so this reads `_actions`."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    out = {}
    for name, command in sub.choices.items():
        options = {s: {shown(a)} - {None} for a in command._actions for s in a.option_strings}
        for a in command._actions:
            for option, value in re.findall(r"(--[\w-]+) \(default:? '?([^\s';,)]+)", a.help or ""):
                options.setdefault(option, set()).add(value)
        out[name] = options
    return out


# ---------------------------------------------------------------------------------------------
# The docs: each option mentioned, the command it is named with, and any default stated


@dataclass(frozen=True)
class Mention:
    where: str  # file:line
    option: str
    command: str | None  # None: the text does not say which
    default: str | None = None  # the default the text states


def command_of(words: list[str]) -> tuple[str | None, list[str]] | None:
    """A command line's pkd subcommand and the words that are its options; None for a line of
    another tool."""
    while words and (words[0] == "$" or re.fullmatch(r"[A-Z_]+=\S*", words[0])):
        words = words[1:]
    if "pkd.cli" in words:  # python -m pkd.cli, torchrun/accelerate launch ... -m pkd.cli
        words = words[words.index("pkd.cli") :]
    elif not words or words[0] in OTHER_COMMANDS:
        return None
    elif words[0] != "pkd":
        return (None, words)
    rest = words[1:]
    if rest and not rest[0].startswith("-") and re.fullmatch(r"[a-z]+", rest[0]):
        return (rest[0], rest[1:])
    return (None, rest)


def defaults_stated(text: str) -> dict[str, str]:
    """{option: value} for each default the prose states about an option in backticks."""
    found = {}
    patterns = [  # `--x` (default V, `--x` r (default V), `--x`, default V, `--x`, V by default
        r"`(--[\w-]+)(?: [^`]*)?`(?:, | (?:\w+ )?\()default:? `?([^\s`;,)]+)",
        r"`(--[\w-]+)(?: [^`]*)?`,? (?:\w+ )?\(?`?([^\s`;,()]+)`? by default",
        r"`(--[\w-]+)(?: [^`]*)?` defaults to `([^`]+)`",
    ]
    for pattern in patterns:
        for option, value in re.findall(pattern, text):
            found[option] = value
    # `--x V` (default), `--x V` (the default), default `--x V`
    for pattern in (r"`(?:pkd \w+ )?(--[\w-]+) ([^\s`|]+)` \((?:the )?default\)",
                    r"\b[Dd]efault:? `(--[\w-]+) ([^\s`|]+)`"):  # fmt: skip
        for option, value in re.findall(pattern, text):
            found[option] = value
    return found


def table_defaults(rows: list[str]) -> dict[str, str]:
    """In a table with a column headed "default ...", each `--x V` cell of that column."""
    cells = [
        [c.strip() for c in re.split(r"\|(?=(?:[^`]*`[^`]*`)*[^`]*$)", row.strip().strip("|"))]
        for row in rows
    ]  # fmt: skip  (a | inside a code span splits no cell)
    columns = [i for i, head in enumerate(cells[0]) if head.lower().startswith("default")]
    found = {}
    for row in cells[2:]:
        for i in columns:
            m = re.match(r"`(--[\w-]+) ([^`\s]+)`", row[i]) if i < len(row) else None
            if m:
                found[m.group(1)] = m.group(2)
    return found


def line_mentions(where: str, line: str, command: str | None = None) -> list[Mention]:
    return [Mention(where, o, command) for o in OPTION.findall(line)]


def code_mentions(path: str, lines: list[tuple[int, str]]) -> list[Mention]:
    """The options of each command line of a shell code block (comments dropped)."""
    found: list[Mention] = []
    logical, start = "", 0
    for n, raw in lines:
        text = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not logical:
            start = n
        logical += " " + text.rstrip().removesuffix("\\")
        if text.rstrip().endswith("\\"):
            continue
        parsed = command_of(logical.split())
        if parsed:
            found += line_mentions(f"{path}:{start}", " ".join(parsed[1]), parsed[0])
        logical = ""
    return found


def prose_mentions(path: str, lines: list[tuple[int, str]]) -> list[Mention]:
    """A paragraph's options: those in an inline code span belong to the span's command line;
    the rest to some command. Defaults stated in the paragraph or its table are attached."""
    text = " ".join(t for _, t in lines)
    where = f"{path}:{lines[0][0]}"
    stated = defaults_stated(text)
    if lines[0][1].lstrip().startswith("|") and len(lines) > 2:
        stated |= table_defaults([t for _, t in lines])
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        parsed = (
            command_of(span.split())
            if span.startswith(("pkd ", "python", "$")) or (span.split()[0] in OTHER_COMMANDS)
            else (None, span.split())
        )
        if parsed:
            found += line_mentions(where, " ".join(parsed[1]), parsed[0])
    found += line_mentions(where, re.sub(r"`[^`]*`", " ", text))
    return [
        Mention(m.where, m.option, m.command, stated.get(m.option))
        for m in found
        if "_" not in m.option and m.option not in OTHER_TOOLS
    ]


def mentions(path: str, text: str) -> list[Mention]:
    """Every option mention of a markdown text, block by block."""
    found: list[Mention] = []
    block: list[tuple[int, str]] = []
    fence = None  # the language of the fenced block we are in
    for n, line in enumerate([*text.splitlines(), ""], 1):
        if line.startswith("```"):
            if fence is None:
                found += prose_mentions(path, block) if block else []
                block, fence = [], line[3:].strip() or "text"
            else:
                if fence in ("bash", "sh", "shell", "console"):
                    found += code_mentions(path, block)
                elif fence not in ("python", "yaml", "json"):
                    found += [m for n2, t in block for m in line_mentions(f"{path}:{n2}", t)]
                block, fence = [], None
        elif fence is not None:
            block.append((n, line))
        elif not line.strip() or line.startswith("#"):
            found += prose_mentions(path, block) if block else []
            block = []
        elif line.startswith("    ") and not block:  # an indented code line
            found += code_mentions(path, [(n, line)])
        else:
            block.append((n, line))
    return found


# ---------------------------------------------------------------------------------------------
# The check


def same(doc: str, cli: str) -> bool:
    doc, cli = doc.strip("`'\"").lower(), cli.strip("`'\".").lower()
    try:
        return float(doc) == float(cli)
    except ValueError:
        return doc == cli


def problems(found: list[Mention], cli: dict[str, dict[str, set[str]]]) -> list[str]:
    """One line per option the CLI lacks, or per default that is not the CLI's."""
    out = []
    for m in found:
        commands = [m.command] if m.command in cli else list(cli)
        having = [c for c in commands if m.option in cli[c]]
        if not having:
            named = f"pkd {m.command}" if m.command in cli else "any pkd command"
            out.append(f"{m.where}: {m.option} is not an option of {named}")
        elif m.default is not None and not any(
            same(m.default, d) for c in having for d in cli[c][m.option]
        ):
            shown_ = sorted({d for c in having for d in cli[c][m.option]})
            out.append(f"{m.where}: {m.option} default {m.default!r}, the CLI's: {shown_}")
    return out


@pytest.fixture(scope="module")
def cli() -> dict[str, dict[str, set[str]]]:
    return cli_options()


def test_docs_name_only_options_and_defaults_the_cli_has(cli):
    found = [m for p in DOCS for m in mentions(str(p.relative_to(ROOT)), p.read_text())]
    assert len(found) > 300  # the extraction sees the docs (a regex that matches nothing passes)
    assert sum(m.default is not None for m in found) >= 10
    assert not problems(found, cli), "\n".join(problems(found, cli))


def test_other_tools_options_are_not_pkd_options(cli):
    every = {o for options in cli.values() for o in options}
    assert not set(OTHER_TOOLS) & every


def test_a_made_up_option_or_a_wrong_default_is_reported(cli):
    text = (
        "Distill with `pkd distill --no-such-option 3`, or `--beta` (default 7).\n\n"
        "```bash\npkd finetune --teacher runs/t \\\n    --epochs 2\n"
        "pip install --no-such-pip-flag x\n"
        "torchrun --nproc_per_node 2 -m pkd.cli distill --also-made-up\n```\n\n"
        "| term | default weight |\n|---|---|\n| pt | `--top-weight 5` |\n"
    )
    assert problems(mentions("x.md", text), cli) == [
        "x.md:1: --no-such-option is not an option of pkd distill",
        "x.md:1: --beta default '7', the CLI's: ['1.0', '100']",
        "x.md:4: --teacher is not an option of pkd finetune",
        "x.md:7: --also-made-up is not an option of pkd distill",
        "x.md:10: --top-weight default '5', the CLI's: ['1.0']",
    ]
    assert not problems(mentions("y.md", "`--beta` (default 100), `--seed`, 42 by default"), cli)

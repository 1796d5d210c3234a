"""No function in the package is longer than a screen unless its docstring says why (read
with `ast`, nothing is imported): long bodies get split into functions that read top to
bottom, one concept each."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pkd

SRC = Path(pkd.__file__).parent
MAX_LINES = 80  # code lines from `def` to the last line, the docstring not counted
REASON = "Long because"  # a docstring that states why its function may exceed MAX_LINES


def function_lengths(source: str) -> list[tuple[str, int, int, str]]:
    """(qualified name, line, length without the docstring, docstring) of every function."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    doc = ast.get_docstring(child) or ""
                    first = child.body[0]
                    if doc and isinstance(first, ast.Expr):
                        length -= first.end_lineno - first.lineno + 1
                    out.append((name, child.lineno, length, doc))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return out


def too_long(source: str) -> list[str]:
    return [
        f"{name} (line {line}): {length} lines"
        for name, line, length, doc in function_lengths(source)
        if length > MAX_LINES and REASON not in doc
    ]


def test_no_function_in_the_package_is_over_a_screen_without_a_reason():
    found = [
        f"{path.relative_to(SRC)}: {entry}"
        for path in sorted(SRC.rglob("*.py"))
        for entry in too_long(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"over {MAX_LINES} lines, no '{REASON}' in the docstring: {found}"


@pytest.mark.parametrize(
    ("doc", "extra", "found"),
    [
        ("", MAX_LINES, ["f (line 1): 81 lines"]),  # def line + MAX_LINES body lines
        ("", MAX_LINES - 1, []),
        ('"""A docstring\n    over two lines."""', MAX_LINES - 1, []),  # the docstring is free
        (f'"""{REASON} it is one table."""', MAX_LINES + 5, []),
    ],
)
def test_the_check_counts_code_lines_and_reads_the_reason(doc, extra, found):
    body = "".join(f"    x{i} = {i}\n" for i in range(extra))
    source = "def f():\n" + (f"    {doc}\n" if doc else "") + body
    assert too_long(source) == found

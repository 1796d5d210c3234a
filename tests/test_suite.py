"""The test suite's own rules: the default run keeps the slow tests, commands run through the
`pkd_cli` fixture, and faults go in through `pkd.training.hooks.LoopHooks`, never by replacing a
private name (a rename would silently turn such a test into a test of nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def test_the_default_run_keeps_the_slow_tests(request):
    """`python -m pytest -q` (the README's command, `.ci/run`) runs everything; the fast loop
    `-m "not slow"` is asked for, never the default."""
    addopts = request.config.getini("addopts")
    assert not [o for o in addopts if o.startswith("-m") or "slow" in o], addopts
    assert any(m.startswith("slow:") for m in request.config.getini("markers"))


def parsed_tests() -> dict[str, ast.Module]:
    """Every test module but this one (its examples break the rules on purpose), and each
    `python -c` driver kept in a string, parsed."""
    trees = {}
    for path in sorted(set(TESTS.glob("*.py")) - {Path(__file__)}):
        tree = ast.parse(path.read_text(), str(path))
        trees[path.name] = tree
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if "import pkd" in node.value and "\n" in node.value:
                    try:
                        trees[f"{path.name}:{node.lineno}"] = ast.parse(node.value)
                    except SyntaxError:  # text about code, not a driver
                        pass
    return trees


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _private(name: object) -> bool:
    return isinstance(name, str) and name.startswith("_") and not name.startswith("__")


def replaced_private_names(tree: ast.Module) -> list[str]:
    """`M._name = ...` and `monkeypatch.setattr(M, "_name", ...)` (or `"pkd.m._name"`) where
    M is, or is reached from, a name imported from pkd."""
    pkd_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            pkd_names |= {
                a.asname or a.name.split(".")[0]
                for a in node.names
                if a.name == "pkd" or a.name.startswith("pkd.")
            }
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pkd":
            pkd_names |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and _private(t.attr) and _root(t) in pkd_names:
                    found.append(f"line {node.lineno}: {ast.unparse(t)} = ...")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setattr":
            args = node.args
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                target = args[0].value
                hit = target.startswith("pkd.") and _private(target.rsplit(".", 1)[-1])
            elif len(args) > 1 and isinstance(args[1], ast.Constant):
                hit = _private(args[1].value) and _root(args[0]) in pkd_names
            else:
                hit = False
            if hit:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_commands_run_through_the_pkd_cli_fixture():
    """One runner, conftest's `PkdCli`: no test module catches `pkd.cli.main`'s SystemExit."""
    own = [
        name
        for name, tree in parsed_tests().items()
        if not name.startswith("conftest.py")
        and any(isinstance(n, ast.Name) and n.id == "SystemExit" for n in ast.walk(tree))
    ]
    assert own == [], f"run commands with the pkd_cli fixture, not SystemExit, in {own}"


def test_no_test_replaces_a_private_name():
    found = {
        name: hits
        for name, tree in parsed_tests().items()
        if (hits := replaced_private_names(tree))
    }
    assert found == {}, f"inject faults through pkd.training.hooks.LoopHooks: {found}"


def test_the_private_name_check_sees_the_forms_it_forbids():
    code = """
import pkd.training.loop as T
from pkd.deploy import export as X
import pkd.objectives.cache
T._evaluate_and_keep_best = f
pkd.objectives.cache._write = f
monkeypatch.setattr(X, "_check_parity", f)
monkeypatch.setattr("pkd.training.loop._save", f)
monkeypatch.setattr(T, "loss_terms", f)  # public: allowed
setattr(model.config, "_name_or_path", "x")  # not a pkd module: allowed
"""
    found = replaced_private_names(ast.parse(code))
    assert [f.split(":")[0] for f in found] == ["line 5", "line 6", "line 7", "line 8"], found

"""The package's import layers: no module imports one above its layer, and no imports form a
cycle, counting imports inside function bodies (read with `ast`, nothing is imported).

A new module must be given a layer in LAYERS; moving a module means moving its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pkd

SRC = Path(pkd.__file__).parent

# The package's rooms, lowest first: a room imports its own modules and lower rooms only,
# never a higher one (the layer of a module is its room's). `pkd` itself (the package's
# __init__) is the public facade and sits above everything; `from pkd import __version__`
# inside the package is no dependency (the package's __init__ has run before any of its
# modules). Each room's __init__ docstring says what it owns.
LAYERS = {
    # leaves: the error type, atomic files and directories, progress bars, the task registry
    "pkd.errors": 0,
    "pkd.fsio": 0,
    "pkd.progress": 0,
    "pkd.tasks": 0,
    "pkd.config": 1,  # options: dataclasses, YAML, choices, presets
    "pkd.data": 2,  # readers, encoding, multiple choice, text, transfer sets, metrics
    "pkd.models": 3,  # encoders, pooling, students, projections, cards
    "pkd.objectives": 4,  # losses, layer maps, the objectives, teacher signals and cache
    "pkd.training": 5,  # the loop, accelerator, evaluation, checkpoints, run log, run dirs
    "pkd.deploy": 6,  # export, ONNX runner, benchmark, report
    "pkd.recipes": 7,  # finetune, distill, pretrain, inference, dry runs, compare, sweep
    # entry points
    "pkd.api": 8,
    "pkd.hf": 8,
    "pkd.cli": 8,
    "pkd.demo": 8,
    "pkd": 9,
}
ROOMS = [m for m in LAYERS if m.count(".") == 1 and (SRC / m.split(".")[1]).is_dir()]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel).is_dir()


def home(module: str) -> str | None:
    """The LAYERS entry of a module: its own, or its room's (pkd.recipes.sweep.plan ->
    pkd.recipes)."""
    while module not in LAYERS and module.count(".") > 1:
        module = module.rsplit(".", 1)[0]
    return module if module in LAYERS else None


def layer(module: str) -> int:
    return LAYERS[home(module)]


def targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The pkd modules an import statement loads (a name from `pkd` itself: its home)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n if is_module(n) else n.rsplit(".", 1)[0] for n in names if n.startswith("pkd")]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package, level - 1 packages up
        parts = module.split(".") if is_package(module) else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    if not (base == "pkd" or base.startswith("pkd.")):
        return []
    out = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if is_module(full):
            out.append(full)
        elif base == "pkd":  # e.g. `from pkd import distill`: where the name lives
            home = getattr(getattr(pkd, alias.name, None), "__module__", None)
            out.append(home if home and home.startswith("pkd") else "pkd")
        else:
            out.append(base)
    return out


def is_package(module: str) -> bool:
    return (SRC.parent / Path(*module.split("."))).is_dir()


def import_graph(sources: dict[str, str]) -> dict[str, dict[str, int]]:
    """module -> {imported pkd module: line}, every import in the file (also in functions)."""
    graph: dict[str, dict[str, int]] = {}
    for module, text in sources.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in targets(module, node):
                    if target not in (module, "pkd"):  # see LAYERS on the package itself
                        edges.setdefault(target, node.lineno)
    return graph


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(SRC.rglob("*.py"))}


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    return [
        f"{src}:{line} imports {dst} (layer {layer(dst)} > {layer(src)})"
        for src, edges in graph.items()
        for dst, line in edges.items()
        if layer(dst) > layer(src)
    ]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    unlisted = [m for m in package_sources() if home(m) is None]
    assert unlisted == [], f"give these modules a layer in LAYERS: {unlisted}"
    stale = [m for m in LAYERS if m != "pkd" and not is_module(m)]
    assert stale == [], f"LAYERS lists modules that do not exist: {stale}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph(package_sources())) == []


def test_imports_form_no_cycle():
    assert cycles(import_graph(package_sources())) == []


@pytest.mark.parametrize(
    "module, line, expected",
    [
        # an upward import, even inside a function
        (
            "pkd.objectives.losses",
            "def f():\n    from pkd.cli import main\n",
            "pkd.objectives.losses:",
        ),
        (
            "pkd.config.sections",
            "import pkd.training.loop\n",
            "imports pkd.training.loop (layer 5 > 1)",
        ),
        (
            "pkd.data.metrics",
            "from pkd import distill\n",
            "imports pkd.recipes.distill (layer 7 > 2)",
        ),
    ],
)
def test_an_upward_import_is_caught(module, line, expected):
    sources = package_sources()
    sources[module] += "\n" + line
    found = upward_imports(import_graph(sources))
    assert len(found) == 1 and expected in found[0]


def test_a_cycle_within_one_layer_is_caught():
    sources = package_sources()
    sources["pkd.recipes.dryrun"] += "\ndef f():\n    from pkd.recipes.finetune import finetune\n"
    assert upward_imports(import_graph(sources)) == []  # same layer: only a cycle
    assert ["pkd.recipes.dryrun", "pkd.recipes.finetune"] in cycles(import_graph(sources))


TOP_LEVEL_MODULES = 8  # pkd/*.py besides the rooms: entry points, API, errors and the like


def test_the_package_is_rooms_and_a_few_top_level_modules():
    top = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
    assert len(top) <= TOP_LEVEL_MODULES, top
    rooms = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert rooms == sorted(m.split(".")[1] for m in ROOMS)
    for room in rooms:  # each says what it owns and what it may import
        doc = ast.get_docstring(ast.parse((SRC / room / "__init__.py").read_text()))
        assert doc and f"Layer {LAYERS['pkd.' + room]}:" in doc, room

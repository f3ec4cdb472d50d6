"""The codebase's shape, checked: folders are layers, no import cycles, small modules, a CLI
that starts light.

These are the rules docs/architecture.md states; a test keeps them true as the code grows.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
MAX_LINES = 600
ONE_IDEA_LINES = 400
#: Libraries ``shoestring --help`` must not load (seconds of start-up each).
HEAVY = ("torch", "transformers", "matplotlib", "optuna", "peft", "safetensors", "tokenizers")

#: The layers of src/shoestring, lowest first: a package or top-level module may import its own
#: layer and those below it, never one above (docs/architecture.md draws the same table).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations",
        (
            "shoestring",
            "errors",
            "failures",
            "config",
            "cli_options",
            "runtime",
            "distributed",
            "host",
            "util",
        ),
    ),
    ("run directory", ("rundir",)),
    ("data", ("data",)),
    # run_config reads the GPT's shape table (models/shape.py), so it sits with the models
    ("models", ("models", "run_config")),
    ("engine and reports", ("engine", "report")),
    ("scoring", ("scoring",)),
    ("pretraining", ("train",)),
    (
        "commands",
        ("analyze", "bench", "compare", "generate", "prepare", "rl", "search", "quickstart"),
    ),
    ("command line", ("cli", "__main__")),
]


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under src/ (packages by their __init__)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Edges module -> shoestring module it imports, from every import statement (function-local
    ones included: a cycle hidden inside a function is still a cycle)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                dep = resolve(target)
                if dep and dep != mod and dep.startswith("shoestring"):
                    graph[mod].add(dep)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_src() -> None:
    cycles = strongly_connected(import_graph())
    assert not cycles, "modules that import each other (break the cycle): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_modules_are_small_or_name_their_one_idea() -> None:
    too_long, unnamed = [], []
    for mod, path in _modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long.append(f"{mod} ({n} lines)")
        elif n > ONE_IDEA_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if "one idea" not in doc.lower():
                unnamed.append(f"{mod} ({n} lines)")
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
    assert not unnamed, (
        f"modules over {ONE_IDEA_LINES} lines whose docstring does not name their one idea "
        f"('This module is one idea: ...'): {unnamed}"
    )


def layer_of(module: str) -> int:
    """The index in LAYERS of a dotted module's top-level package (KeyError if undeclared)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise KeyError(top)


def test_every_package_has_a_declared_layer() -> None:
    undeclared = set()
    for mod in _modules():
        try:
            layer_of(mod)
        except KeyError as exc:
            undeclared.add(str(exc))
    assert not undeclared, f"packages missing from LAYERS (add them to a layer): {undeclared}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [
        f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for mod, deps in import_graph().items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(mod)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_architecture_page_draws_the_same_layers() -> None:
    """docs/architecture.md's diagram numbers the layers; each names this table's members."""
    page = (TESTS.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = page.split("## The layers", 1)[1].split("```")[1]
    blocks: dict[int, str] = {}
    current = -1
    for line in diagram.splitlines():
        m = re.match(r"\s*(\d+)\s{2}", line)
        if m:
            current = int(m.group(1))
        if current >= 0:
            blocks[current] = blocks.get(current, "") + line + "\n"
    assert sorted(blocks) == list(range(len(LAYERS))), sorted(blocks)
    missing = [
        f"{name} (layer {index}: {title})"
        for index, (title, members) in enumerate(LAYERS)
        for name in members
        if name != "shoestring" and not re.search(rf"\b{name}(/|\.py)", blocks[index])
    ]
    assert not missing, f"docs/architecture.md's diagram does not place: {missing}"


def test_layer_check_catches_an_upward_import() -> None:
    assert layer_of("shoestring.data.gsm8k") < layer_of("shoestring.scoring.protocols")
    assert layer_of("shoestring.rundir.lock") < layer_of("shoestring.compare.run")
    assert layer_of("shoestring.cli") == len(LAYERS) - 1


def _imported_modules(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shoestring", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S.*)$", line)
        if m:
            names.add(m.group(1).strip())
    return names


def test_help_and_version_do_not_import_heavy_libraries() -> None:
    for args in (["--help"], ["--version"]):
        loaded = _imported_modules(*args)
        assert "shoestring.cli" in loaded
        heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
        assert not heavy[:1], f"shoestring {args[0]} imported {heavy[:8]}"


def test_tests_do_not_skip_on_a_broken_shoestring_import() -> None:
    """``importorskip('shoestring...')`` turns a broken module into a skip instead of a failure."""
    offenders = [
        f"{p.name}:{i}"
        for p in sorted(TESTS.glob("test_*.py"))
        if p.name != Path(__file__).name
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"importorskip\(\s*[\"']shoestring", line)
    ]
    assert not offenders, offenders

"""The import graph of `jaxsteer.train`, read statically from the sources (no imports run):
no cycles, the layers point one way (specs <- shared run machinery <- learners <- entry point),
the learners never import each other, and no private name is imported from another module."""

from __future__ import annotations

import ast
import os

import pytest

import tests

ROOT = os.path.join(tests.ROOT, "jaxsteer")


def _modules() -> dict[str, str]:
    """Module name -> file path for every module of the jaxsteer package."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import statement of a module, lazy ones too."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [(m, []) for m in submodules]
            if len(submodules) < len(names):
                out.append((target, [n for n in names if f"{target}.{n}" not in MODULES]))
    return [(m, n) for m, n in out if m in MODULES]


GRAPH = {name: {m for m, _ in _imports(name, path)} - {name} for name, path in MODULES.items()}
TRAIN = sorted(m for m in MODULES if m == "jaxsteer.train" or m.startswith("jaxsteer.train."))


def _cycle_from(start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, trail = stack.pop()
        for nxt in sorted(GRAPH[node]):
            if nxt == start:
                return trail + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, trail + [nxt]))
    return None


@pytest.mark.parametrize("module", TRAIN)
def test_no_import_cycle(module):
    cycle = _cycle_from(module)
    assert cycle is None, " -> ".join(cycle)


# Modules above the learners besides the entry point: tools that inspect a learner's step.
TOOLS = {"jaxsteer.train.plan"}
# The learners, each a subpackage of jaxsteer.train; they never import each other.
LEARNERS = ("rl", "sft", "es", "sae")


def _layer(module: str) -> int:
    """0 specs, 1 shared run machinery (every other module of train/), 2 learners, 3 the entry
    point and tools built on the learners."""
    if module in ("jaxsteer.train.config", "jaxsteer.train.trainable"):
        return 0
    if module.startswith(tuple(f"jaxsteer.train.{learner}" for learner in LEARNERS)):
        return 2
    if module == "jaxsteer.train" or module in TOOLS:
        return 3
    return 1


def test_layers_point_one_way_and_learners_stay_apart():
    bad = []
    for m in TRAIN:
        for dep in GRAPH[m]:
            if dep in TRAIN and _layer(dep) > _layer(m):
                bad.append(f"{m} -> {dep}")
            if _layer(m) == _layer(dep) == 2 and m.split(".")[2] != dep.split(".")[2]:
                bad.append(f"{m} -> {dep} (a learner imports another)")
    assert not bad, bad


def test_no_private_names_across_modules():
    bad = [
        f"{m}: from {target} import {n}"
        for m in TRAIN
        for target, names in _imports(m, MODULES[m])
        for n in names
        if n.startswith("_") and target != m
    ]
    assert not bad, bad


CLI = sorted(m for m in MODULES if m == "jaxsteer.cli" or m.startswith("jaxsteer.cli."))


def test_the_cli_is_the_top_layer():
    """Nothing in jaxsteer imports jaxsteer.cli: the library returns values and raises, the CLI prints."""
    bad = [f"{m} -> {dep}" for m in MODULES if m not in CLI for dep in GRAPH[m] if dep in CLI]
    assert CLI and not bad, bad


def test_train_does_not_import_analysis():
    """The logit lens after `jaxsteer train` is the CLI's (cli/train.py), not the training package's."""
    bad = [f"{m} -> {dep}" for m in TRAIN for dep in GRAPH[m] if dep.split(".")[:2] == ["jaxsteer", "analysis"]]
    assert not bad, bad


def test_only_the_cli_prints():
    """print() is called in jaxsteer/cli/ and in `Run.say` (a run's progress seam) only."""
    allowed = {("jaxsteer.train.run", "say")}
    bad = []
    for m, path in MODULES.items():
        if m in CLI:
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
            name = getattr(fn, "name", "<module>")
            if calls and (m, name) not in allowed and fn is not tree:
                bad.append(f"{m}.{name}")
    assert not bad, sorted(set(bad))


SAE_MODEL = sorted(m for m in MODULES if m == "jaxsteer.sae" or m.startswith("jaxsteer.sae."))


def test_the_sae_model_is_below_training():
    """jaxsteer.sae (the SAE as a model) imports nothing from jaxsteer.train; SAE training
    (jaxsteer.train.sae) builds on it."""
    bad = [f"{m} -> {dep}" for m in SAE_MODEL for dep in GRAPH[m] if dep in TRAIN]
    assert SAE_MODEL and not bad, bad
    assert any(dep in SAE_MODEL for dep in GRAPH["jaxsteer.train.sae.step"])

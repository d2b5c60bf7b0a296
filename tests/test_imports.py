"""The import graph: no circle among the project's modules (every import read from the source, at module level
and inside functions), and the floors never import the wings above them."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("align", "rewards")


def _modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[module.removesuffix(".__init__")] = path
    return found


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its source: ``from pkg import sub`` counts as
    pkg.sub when that is a module, else as pkg; ``import a.b.c`` as the longest project module it names."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = []
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        part.append(member)
                        if member == node:
                            break
                    if len(part) > 1:
                        out.append(sorted(part))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return out


def test_no_import_circles():
    graph = _graph()
    assert (
        len(graph) > 60 and "align.rollout.stages" in graph["align.rollout.phase"]
    )  # the scan reads imports
    assert _circles(graph) == []


def test_the_scan_finds_a_circle_through_a_function_level_import():
    graph = _graph()
    graph["align.sampling.output"] = graph["align.sampling.output"] | {"align.sampling.diffusion"}
    assert any({"align.sampling.diffusion", "align.sampling.output"} <= set(c) for c in _circles(graph))


def test_the_floors_never_import_the_wings_above_them():
    """The model floor never imports the sampler's settings (or anything of sampling, rollout, eval); the
    rollout wing never imports eval; the reward floor never imports the project's trainer side."""
    graph = _graph()
    rules = {
        "align.models.": ("align.sampling", "align.rollout", "align.eval", "align.trainer"),
        "align.rollout.": ("align.eval",),
        "rewards": ("align",),
    }
    broken = [
        (module, target)
        for module, targets in graph.items()
        for prefix, banned in rules.items()
        if module.startswith(prefix)
        for target in targets
        if any(target == b or target.startswith(b + ".") for b in banned)
    ]
    assert broken == []

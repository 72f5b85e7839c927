"""The package's layout: no import cycles, the core never imports the studies,
no module reaches into another's private names, core modules stay short.

Read from the source (``ast``), nothing is imported: every ``import`` and
``from ... import`` of a ``rodent_gbp`` module counts, at module level and
inside functions (a function-level import is still a dependency; it only
hides the cycle until the function runs).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "rodent_gbp"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
MAX_CORE_LINES = 550


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(), filename=str(p)) for name, p in MODULES.items()}


def _is_package(name: str) -> bool:
  return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
  """The absolute module a ``from`` import names (relative imports resolved)."""
  if not node.level:
    return node.module or ""
  base = module.split(".")
  if not _is_package(module):
    base = base[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.AST | None = None):
  """(line, imported rodent_gbp module, name taken from it or None, alias) of ``module``."""
  for node in ast.walk(TREES[module] if tree is None else tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == PACKAGE:
          yield node.lineno, alias.name, None, alias
    elif isinstance(node, ast.ImportFrom):
      source = _resolve(module, node)
      if source.split(".")[0] != PACKAGE:
        continue
      for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in MODULES:       # ``from rodent_gbp import bank``: the module bank
          yield node.lineno, sub, None, alias
        else:                    # ``from rodent_gbp.bank import TemplateBank``
          yield node.lineno, source, alias.name, alias


def _graph() -> dict[str, dict[str, int]]:
  """module -> {imported module: first line}; ``rodent_gbp`` itself left out."""
  graph: dict[str, dict[str, int]] = {m: {} for m in MODULES}
  for m in MODULES:
    for line, target, _, _ in _imports(m):
      if target in MODULES and target != m and target != PACKAGE:
        graph[m].setdefault(target, line)
  return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), each as a cycle."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        components.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph, component: set[str]) -> list[str]:
  """A shortest cycle through the first module of a component (breadth first)."""
  start = min(component)
  paths = {start: [start]}
  queue = [start]
  while queue:
    v = queue.pop(0)
    for w in sorted(graph[v]):
      if w == start:
        return paths[v] + [start]
      if w in component and w not in paths:
        paths[w] = paths[v] + [w]
        queue.append(w)
  return sorted(component)


def _describe(graph, cycle: list[str]) -> str:
  """The cycle, then each edge as ``file:line imports module``."""
  edges = [f"  {MODULES[a].relative_to(ROOT.parent)}:{graph[a][b]} imports {b}"
           for a, b in zip(cycle, cycle[1:])] if all(a in MODULES for a in cycle) else []
  return "\n".join([" -> ".join(cycle), *edges])


def test_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
  assert _cycles(graph) == [["a", "b", "c", "a"]]
  assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
  graph = _graph()
  cycles = _cycles(graph)
  assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def _core() -> list[str]:
  return [m for m in MODULES if not m.startswith(f"{PACKAGE}.studies")]


def _study_imports(module: str, tree: ast.AST | None = None) -> list[str]:
  where = MODULES[module].relative_to(ROOT.parent)
  return [f"{where}:{line}: imports {target}" + (f".{name}" if name else "")
          for line, target, name, _ in _imports(module, tree)
          if target == f"{PACKAGE}.studies" or target.startswith(f"{PACKAGE}.studies.")]


def test_study_import_finder_finds_planted_imports():
  source = """
from rodent_gbp.studies import report
def f():
  import rodent_gbp.studies.figures
  from rodent_gbp.studies.reproduce import make_bundle
  from rodent_gbp import studies
  from rodent_gbp import bank
"""
  found = _study_imports(f"{PACKAGE}.pipeline", ast.parse(source))
  assert [f.split(": ", 1)[1] for f in found] == [
      "imports rodent_gbp.studies.report", "imports rodent_gbp.studies.figures",
      "imports rodent_gbp.studies.reproduce.make_bundle", "imports rodent_gbp.studies"]


def test_core_does_not_import_the_studies():
  bad = [f for m in _core() for f in _study_imports(m)]
  assert not bad, "core modules import rodent_gbp.studies:\n" + "\n".join(bad)


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(module: str, tree: ast.AST | None = None) -> list[str]:
  """Uses of another rodent_gbp module's private names in ``module``.

  ``from rodent_gbp.x import _name``, and ``m._name`` where ``m`` is bound to
  a rodent_gbp module (``from rodent_gbp import x as m``, ``import
  rodent_gbp.x as m``, or the full ``rodent_gbp.x._name``). Names are
  resolved per module, not per scope: a private attribute is rarely shadowed.
  """
  where = MODULES[module].relative_to(ROOT.parent)
  found = []
  bound: dict[str, str] = {}          # local name -> rodent_gbp module it is bound to
  tree = TREES[module] if tree is None else tree
  for line, target, name, alias in _imports(module, tree):
    if name is not None:
      if _private(name) and target != module:
        found.append(f"{where}:{line}: from {target} import {name}")
    elif alias.asname:
      bound[alias.asname] = target
    elif target.startswith(f"{PACKAGE}.") and alias.name == target.rsplit(".", 1)[1]:
      bound[alias.name] = target      # from rodent_gbp(.pkg) import x
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _private(node.attr):
      chain = _dotted(node.value)
      target = bound.get(chain) or (chain if chain in MODULES else None)
      if target is not None and target != module:
        found.append(f"{where}:{node.lineno}: {chain}.{node.attr} ({target})")
  return found


def _dotted(node) -> str | None:
  """``a.b.c`` of a Name / Attribute chain, else None."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  return ".".join([node.id, *reversed(parts)])


def test_private_use_finder_finds_planted_uses():
  source = """
from rodent_gbp import bank
from rodent_gbp import search as search_lib
from rodent_gbp.candidates import _scale_about_centroid, dilate
import rodent_gbp.parallel
import rodent_gbp.metrics as m

def f(x):
  from rodent_gbp import bundle
  bank._gradients(x)
  search_lib._window_offsets(1)
  rodent_gbp.parallel._multi_process(x)
  m._nanmean(x)
  bundle._read_network(x)
  x._private, bank.__doc__, bank.median_animal(x)
  self._ok = dilate
"""
  found = _private_uses(f"{PACKAGE}.pipeline", ast.parse(source))
  got = sorted(f.split(": ", 1)[1] for f in found)
  assert got == sorted([
      "from rodent_gbp.candidates import _scale_about_centroid",
      "bank._gradients (rodent_gbp.bank)",
      "search_lib._window_offsets (rodent_gbp.search)",
      "rodent_gbp.parallel._multi_process (rodent_gbp.parallel)",
      "m._nanmean (rodent_gbp.metrics)",
      "bundle._read_network (rodent_gbp.bundle)"])
  lines = sorted(int(f.split(":")[1]) for f in found)
  assert lines == [4, 10, 11, 12, 13, 14]


def test_no_module_uses_another_modules_private_names():
  found = [f for m in MODULES for f in _private_uses(m)]
  assert not found, "private names used across modules:\n" + "\n".join(found)


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda p: p.name)
def test_core_modules_are_short(path):
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_CORE_LINES, (
      f"{path.relative_to(ROOT.parent)}: {lines} lines (> {MAX_CORE_LINES}); split it by stage")

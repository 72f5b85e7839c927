"""The package's layout: no import cycles, the core never imports the studies, no
study imports another (they share through ``studies/common/``), no module reaches
into another's private names, every module stays short, one epoch loop in the
repository (``trainer.fit``), and the user's path (``import rodent_gbp``, a
``rodent-gbp-segment`` run) loads no training code, optax or orbax.

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
MAX_LINES = 550


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


def _too_long(name: str, text: str) -> str | None:
  lines = len(text.splitlines())
  return (f"{name}: {lines} lines (> {MAX_LINES}); split it by stage"
          if lines > MAX_LINES else None)


def test_length_rule_finds_a_planted_long_module():
  assert _too_long("rodent_gbp/studies/x.py", "x = 1\n" * (MAX_LINES + 1))
  assert _too_long("rodent_gbp/x.py", "x = 1\n" * MAX_LINES) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_short(name):
  """Every module of the package, sub-packages included."""
  path = MODULES[name]
  assert not _too_long(str(path.relative_to(ROOT.parent)), path.read_text())


# --- studies stand alone -------------------------------------------------------------

COMMON = f"{PACKAGE}.studies.common"


def _is_study(module: str) -> bool:
  return (module.startswith(f"{PACKAGE}.studies.") and module != COMMON
          and not module.startswith(COMMON + "."))


def _imported_studies(module: str, tree: ast.AST | None = None) -> list[str]:
  """The study modules (not ``studies.common``) that ``module`` imports."""
  where = MODULES[module].relative_to(ROOT.parent)
  return [f"{where}:{line}: imports {target}"
          for line, target, _, _ in _imports(module, tree)
          if _is_study(target) and target != module]


def test_study_to_study_finder_finds_planted_imports():
  source = """
from rodent_gbp.studies import sanity
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common.randomise import layers_from_top
def f():
  from rodent_gbp.studies.placement_study import layers_from_top
  from rodent_gbp import job
"""
  found = _imported_studies(f"{PACKAGE}.studies.refine_study", ast.parse(source))
  assert [f.split(": ", 1)[1] for f in found] == [
      "imports rodent_gbp.studies.sanity", "imports rodent_gbp.studies.placement_study"]


def test_no_study_imports_another_study():
  studies = [m for m in MODULES if m.startswith(f"{PACKAGE}.studies")]
  bad = [f for m in studies for f in _imported_studies(m)]
  assert not bad, "studies import other studies (share through studies/common/):\n" + "\n".join(bad)


# --- one trainer ----------------------------------------------------------------------

REPO = ROOT.parent
#: Epoch loops allowed besides the trainer's, with the reason.
OTHER_EPOCH_LOOPS = {
    # The same training in PyTorch, the benchmark's speed reference: not a network
    # the project trains.
    ("benchmarks/train_bench.py", "_child_torch"),
}


def _epoch_loops(tree: ast.AST) -> list[tuple[int, str]]:
  """(line, enclosing function) of every ``for`` over a ``range`` that names ``epochs``
  (``range(config.epochs)``, ``range(start, cfg.epochs)``, ``range(n_epochs)``)."""
  found = []

  def visit(node, func):
    for child in ast.iter_child_nodes(node):
      name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
      if (isinstance(child, ast.For) and isinstance(child.iter, ast.Call)
          and isinstance(child.iter.func, ast.Name) and child.iter.func.id == "range"
          and any("epochs" in (getattr(n, "attr", None) or getattr(n, "id", None) or "")
                  for a in child.iter.args for n in ast.walk(a))):
        found.append((child.lineno, func))
      visit(child, name)

  visit(tree, "<module>")
  return found


def test_epoch_loop_finder_finds_planted_loops():
  source = """
def fit(config):
  for epoch in range(config.epochs):
    pass
def train_extractor(cfg, start):
  for e in range(start, cfg.epochs):
    pass
def fine():
  for epoch in (0, 3):
    pass
  for i in range(steps_per_epoch):
    pass
n_epochs = 3
for k in range(n_epochs):
  pass
"""
  assert _epoch_loops(ast.parse(source)) == [(3, "fit"), (6, "train_extractor"),
                                            (14, "<module>")]


def test_exactly_one_epoch_loop_in_the_repository():
  loops = []
  for top in ("rodent_gbp", "experiments", "benchmarks", "tests"):
    for path in sorted((REPO / top).rglob("*.py")):
      rel = str(path.relative_to(REPO))
      for line, func in _epoch_loops(ast.parse(path.read_text())):
        if (rel, func) not in OTHER_EPOCH_LOOPS:
          loops.append(f"{rel}:{line} in {func}")
  assert loops == [loops[0]] and loops[0].startswith("rodent_gbp/training/trainer.py:"), (
      "one epoch loop (trainer.fit) trains every network; found:\n" + "\n".join(loops))


# --- the user's path is free of training code ------------------------------------------

TRAINING = (f"{PACKAGE}.training", "optax", "orbax")

_USER_PATH = """
import json, sys
import rodent_gbp
after_import = sorted(sys.modules)
from rodent_gbp import cli
code = 0
try:
  cli.segment_main(["rodent-gbp-segment", "--input", sys.argv[1], "--out_dir", sys.argv[2]])
except SystemExit as e:
  code = e.code
print(json.dumps({"import": after_import, "run": sorted(sys.modules), "code": code}))
"""


def _training_modules(names) -> list[str]:
  return sorted(n for n in names if any(n == t or n.startswith(t + ".") for t in TRAINING))


def test_training_module_rule_names_planted_modules():
  assert _training_modules(["rodent_gbp.training.trainer", "optax._src.base", "orbax",
                            "rodent_gbp.extractor", "optaxx", "jax"]) == [
                                "optax._src.base", "orbax", "rodent_gbp.training.trainer"]


def test_segment_run_imports_no_training_code(scan, tmp_path):
  """``import rodent_gbp`` and a ``rodent-gbp-segment`` run with the shipped model on a
  small scan load no training module, optax or orbax."""
  import json
  import subprocess
  import sys
  run = subprocess.run([sys.executable, "-c", _USER_PATH, str(scan), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert run.returncode == 0, run.stderr[-2000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert got["code"] in (0, None), run.stdout[-2000:]
  assert (tmp_path / "out" / "image_brainmask.nii.gz").is_file()
  assert "rodent_gbp.extractor" in got["run"] and "rodent_gbp.inference" in got["run"]
  assert _training_modules(got["import"]) == []
  assert _training_modules(got["run"]) == []

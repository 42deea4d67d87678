"""The package's import graph: no cycles (function-local imports included), and only the CLI imports the
training loop."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxtune"


def modules() -> dict[str, Path]:
  out = {}
  for p in PACKAGE.rglob("*.py"):
    parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
  return out


def import_graph() -> dict[str, set[str]]:
  """module -> the jaxtune modules it imports anywhere in its body (`from pkg import sub` counts as sub)."""
  mods = modules()

  def resolve(name: str) -> str:
    while name not in mods:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for name, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps |= {resolve(a.name) for a in node.names if a.name.startswith("jaxtune")}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
          for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
          base = f"{pkg}.{base}" if base else pkg
        if base.startswith("jaxtune"):
          deps |= {resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base) for a in node.names}
    deps.discard(name)
    graph[name] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_the_checker_finds_a_cycle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 40 and "jaxtune.train.loop" in graph
  assert cycles(graph) == []


def test_only_the_cli_imports_the_loop():
  importers = sorted(m for m, deps in import_graph().items() if "jaxtune.train.loop" in deps)
  assert importers == ["jaxtune.cli"], importers

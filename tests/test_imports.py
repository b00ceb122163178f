"""The package's import graph: no cycles, public JAX APIs only. Read from source."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mnist_jax"


def _modules():
  """{dotted module name: path} of every .py file in the package."""
  found = {}
  for folder, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in names:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
        parts = rel.split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        found[".".join(parts)] = os.path.join(folder, name)
  return found


def _imports(path, modules):
  """The package modules a file imports, at any depth (lazy imports too).

  `from pkg import name` imports the submodule pkg.name when there is one,
  else pkg itself.
  """
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in modules:
          out.add(sub)
        elif node.module in modules:
          out.add(node.module)
  return out


def _cycle(graph):
  """One import cycle as a list of modules, or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_graph_is_read_from_every_module():
  modules = _modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  assert {"mnist_jax.training.train", "mnist_jax.results.report",
          "mnist_jax.models"} <= set(graph)
  assert "mnist_jax.results.report" in graph["mnist_jax.training.train"]
  assert "mnist_jax.models.registry" in graph["mnist_jax.models"]


def test_no_import_cycle_among_package_modules():
  modules = _modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  cycle = _cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [
      "a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["mnist_jax.results.report",
                                    "mnist_jax.data.pipeline",
                                    "mnist_jax.training.members"])
def test_outputs_and_data_do_not_import_the_loop(module):
  """Data flows one way: data -> model -> train -> outputs."""
  modules = _modules()
  assert "mnist_jax.training.train" not in _imports(modules[module], modules)


def test_no_private_jax_api_in_the_package():
  offenders = []
  for module, path in _modules().items():
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if "jax._src" in line:
          offenders.append(f"{module}:{number}")
  assert not offenders, offenders

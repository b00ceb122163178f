"""The package's import graph, read from source: the research core
(mnist_jax/data/, models/, training/) stands alone, no cycles among modules
nor among the package's parts, public JAX APIs only.

The core trains a model and returns its state and metrics; the product shell
around it (rundir/: the run folder, its checkpoints, logs and command line;
results/: reports, loading runs back, comparing them; api.py and launch.py)
imports the core, never the other way round.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mnist_jax"
CORE = ("mnist_jax.data", "mnist_jax.models", "mnist_jax.training")
# What the core must not import, at any depth: the shell and the commands.
SHELL = ("mnist_jax.rundir", "mnist_jax.results", "mnist_jax.modes",
         "mnist_jax.api", "launch")


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
      # launch.py is no package module, but the core must not import it.
      out.update(a.name for a in node.names if a.name == "launch")
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
        node.module == "launch"):
      out.add("launch")
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in modules:
          out.add(sub)
        elif node.module in modules:
          out.add(node.module)
  return out


def _graph():
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}


def _reachable(graph, start):
  """Every module `start` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def _in(module, packages):
  return any(module == p or module.startswith(p + ".") for p in packages)


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
  graph = _graph()
  assert {"mnist_jax.training.train", "mnist_jax.results.report",
          "mnist_jax.modes", "mnist_jax.models"} <= set(graph)
  # Edges the shell has, so an empty graph cannot pass the tests below.
  assert "mnist_jax.training.loop" in graph["mnist_jax.modes"]
  assert "mnist_jax.results.report" in graph["mnist_jax.modes"]
  assert "mnist_jax.training.population" in graph["mnist_jax.training.loop"]
  assert "mnist_jax.models.registry" in graph["mnist_jax.models"]
  # A lazy import inside a function counts: the package's own API loader.
  assert "mnist_jax.api" in graph["mnist_jax"]


def test_the_finders_see_what_they_guard(tmp_path):
  """The reader sees `import launch` and lazy imports; reachability follows
  chains."""
  path = tmp_path / "m.py"
  path.write_text("import launch\n"
                  "def f():\n"
                  "  from mnist_jax.rundir import lock\n"
                  "  from mnist_jax.results.report import write\n")
  modules = {"mnist_jax.rundir.lock": "", "mnist_jax.results.report": ""}
  assert _imports(str(path), modules) == {
      "launch", "mnist_jax.rundir.lock", "mnist_jax.results.report"}
  assert _reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}},
                    "a") == {"b", "c"}
  assert _in("mnist_jax.modes", SHELL) and _in("launch", SHELL)
  assert not _in("mnist_jax.rundirs", SHELL)


def test_the_research_core_imports_nothing_of_the_shell():
  """mnist_jax/data/, models/ and training/ (and whatever they import)
  reach no module of rundir/, results/, api.py or launch.py, lazily or not."""
  graph = _graph()
  core = [m for m in graph if _in(m, CORE)]
  assert {"mnist_jax.training.train", "mnist_jax.training.devices",
          "mnist_jax.training.members", "mnist_jax.data.pipeline",
          "mnist_jax.training.metrics"} <= set(core)
  offenders = {m: sorted(x for x in _reachable(graph, m) if _in(x, SHELL))
               for m in core}
  assert not {m: x for m, x in offenders.items() if x}, offenders


def test_importing_the_core_loads_nothing_of_the_shell():
  """At run time too (package __init__ files included): a child Python that
  imports every core module has loaded no shell module."""
  modules = sorted(m for m in _modules() if _in(m, CORE))
  code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
          f"print(sorted(m for m in sys.modules if m.startswith({SHELL})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=False, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"


def test_no_import_cycle_among_package_modules():
  cycle = _cycle(_graph())
  assert cycle is None, " -> ".join(cycle)


def _part(module):
  """The part of the package a module belongs to: its subpackage (data,
  models, training, rundir, results) or its top-level module (config, ...)."""
  return ".".join(module.split(".")[:2])


def test_no_import_cycle_among_the_package_parts():
  """Parts import each other one way only (data -> models -> training ->
  rundir -> results, config and the shared modules below them): a cycle of
  parts, e.g. config importing training while training imports config, is
  refused as a cycle of modules would be. The package's own __init__ (the
  public API it loads lazily) is no part."""
  parts = {}
  for module, imported in _graph().items():
    if module != PACKAGE:
      parts.setdefault(_part(module), set()).update(
          _part(m) for m in imported if m != PACKAGE and _part(m) != _part(
              module))
  assert {"mnist_jax.data", "mnist_jax.training", "mnist_jax.rundir",
          "mnist_jax.results", "mnist_jax.config"} <= set(parts)
  cycle = _cycle(parts)
  assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [
      "a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["mnist_jax.results.report",
                                    "mnist_jax.data.pipeline",
                                    "mnist_jax.models.registry",
                                    "mnist_jax.training.members"])
def test_outputs_data_and_models_do_not_import_the_loop(module):
  """Data flows one way: data -> model -> train -> outputs; the report reads
  what training left, it does not train."""
  modules = _modules()
  assert "mnist_jax.training.loop" not in _imports(modules[module], modules)


SMALL_INIT = 40  # Package __init__ files under this many lines do not count.
MODEL_CHOICE = ("mnist_jax.models.registry", "mnist_jax.models.kernels")


@pytest.mark.parametrize("module,most,lines,banned", [
    # The step: its metrics, optimizer and precision; never the registry,
    # kernels, layout, files.py or the shell.
    ("mnist_jax.training.train", 6, 1000,
     (*MODEL_CHOICE, "mnist_jax.training.devices", "mnist_jax.training.loop",
      "mnist_jax.files", *SHELL)),
    # The loop trains the module it is handed (the module a researcher edits
    # is the one that runs): no registry or kernel, nor the shell.
    ("mnist_jax.training.loop", 12, 2000, (*MODEL_CHOICE, *SHELL)),
])
def test_the_core_stands_alone(module, most, lines, banned):
  """`import MODULE` loads at most `most` other project modules (`lines` in
  all, small __init__ files aside), none of `banned`."""
  code = (f"import sys\nimport {module}\n"
          "print('\\n'.join(f'{m} {sys.modules[m].__file__}' for m in "
          "sorted(sys.modules) if m.startswith('mnist_jax')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=False, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  loaded = dict(line.split(" ", 1) for line in out.stdout.splitlines())
  assert module in loaded
  counted = {}
  for name, path in loaded.items():
    size = sum(1 for _ in open(path))
    if name != module and not (path.endswith("__init__.py") and
                               size < SMALL_INIT):
      counted[name] = size
  assert len(counted) <= most and sum(counted.values()) <= lines, counted
  assert not [m for m in loaded if _in(m, banned)], sorted(loaded)


def test_no_private_jax_api_in_the_package_or_the_scripts():
  """Only JAX's public API (`jax._src` changes without notice), in the package,
  launch.py and experiments/."""
  paths = list(_modules().values()) + [os.path.join(ROOT, "launch.py")]
  folder = os.path.join(ROOT, "experiments")
  paths += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.endswith((".py", ".ipynb"))]
  offenders = []
  for path in paths:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if "jax._src" in line or "jax.lib.xla_bridge" in line:
          offenders.append(f"{os.path.relpath(path, ROOT)}:{number}")
  assert not offenders, offenders

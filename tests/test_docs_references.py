"""The docs name the code as it is: docs/design.md's map lists every package
module where it lives, and each `module.name`, file path or `--flag` the docs
quote in backticks exists (modules read from their source, not imported).
"""

import ast
import functools
import glob
import os
import re

import pytest

import launch
import launch_helpers as lh

ROOT = lh.ROOT
PACKAGE = os.path.join(ROOT, "mnist_jax")
DOCS = lh.DOCS
# `report.md`, `config.json`: files of a run folder, not module attributes.
SUFFIXES = {"md", "py", "json", "jsonl", "png", "csv", "tsv", "txt", "npz",
            "npy", "ipynb", "html", "js", "css", "whl", "lock"}


def _modules() -> dict:
  """{"training/train": path, "models/kernels": its __init__.py, ...}."""
  out = {}
  for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, PACKAGE)[:-len(".py")]
    out[rel.removesuffix("/__init__").removesuffix("__init__") or
        "mnist_jax"] = path
  return out


MODULES = _modules()


@functools.cache
def _top_level_names(path: str) -> frozenset:
  """What a module defines or imports at any depth (defs, classes, names
  assigned, tuple targets included)."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
  return frozenset(names)


def _map_paths() -> set:
  """The .py files docs/design.md's map block names, as paths under
  mnist_jax/ ("data/idx.py"), read by indentation."""
  text = open(os.path.join(ROOT, "docs", "design.md")).read()
  block = text.split("## The map", 1)[1].split("```", 2)[1]
  paths, folders = set(), []  # folders[d]: the folder open at depth d.
  for line in block.splitlines():
    if not line.strip():
      continue
    depth = (len(line) - len(line.lstrip())) // 2
    names = re.split(r"\s{2,}", line.strip())[0].split(", ")
    del folders[depth:]
    if len(names) == 1 and names[0].endswith("/"):
      folders.append(names[0])
    elif folders[:1] == ["mnist_jax/"]:  # Not launch.py, outside it.
      paths.update("".join(folders[1:]) + n for n in names if n.endswith(".py"))
  return paths


def test_the_design_map_lists_every_module_where_it_lives():
  listed = _map_paths()
  modules = {os.path.relpath(p, PACKAGE) for p in MODULES.values()
             if not p.endswith("__init__.py")}
  assert listed - modules == set(), "the map names modules that do not exist"
  # Packages' __init__ files are the folders themselves; kernels/ is listed
  # as a folder, its modules under it.
  unlisted = {m for m in modules - listed if not m.startswith("models/kernels/")}
  assert unlisted == set(), "docs/design.md's map leaves these out"


def _quoted(doc: str):
  """Each backticked span of `doc`."""
  return re.findall(r"`([^`\n]+)`", open(os.path.join(ROOT, doc)).read())


def _module(name: str):
  """The package module `name` ("train", "training/train",
  "mnist_jax.training.train") stands for, if exactly one."""
  name = name.replace(".", "/").removeprefix("mnist_jax/")
  if name in MODULES:
    return MODULES[name]
  found = [p for rel, p in MODULES.items() if rel.split("/")[-1] == name]
  return found[0] if len(found) == 1 else None


@pytest.mark.parametrize("doc", DOCS)
def test_quoted_module_names_exist(doc):
  """`loop.initial_state`, `checkpoints.PARTS`, `rundir/lock.py`: the module
  exists and defines the name."""
  missing = []
  for span in _quoted(doc):
    for m in re.finditer(r"(?<![\w/.-])((?:[a-z_]+[/.])*[a-z_]+)(?:\.py)?\."
                         r"([A-Za-z_]\w*)", span):
      module, name = m.groups()
      if name in SUFFIXES:
        continue
      path = _module(module)
      if "/" in module and path is None and module.split("/")[0] in (
          "data", "models", "training", "rundir", "results", "mnist_jax"):
        missing.append(f"{module} (in `{span}`)")
      elif path and name not in _top_level_names(path):
        missing.append(f"{module}.{name} (in `{span}`)")
  assert missing == []


@pytest.mark.parametrize("doc", DOCS)
def test_quoted_paths_exist(doc):
  """`mnist_jax/models/registry.py`, `tests/test_parallel.py`,
  `experiments/compare.py`, `docs/img/...`: each is in the repository."""
  missing = [
      path for span in _quoted(doc)
      for path in re.findall(r"(?:^|\s)((?:mnist_jax|tests|experiments|docs|"
                             r"\.ci)/[\w/.-]*\w)", span)
      if "*" not in path and not os.path.exists(os.path.join(ROOT, path))]
  assert missing == []


def _script_flags() -> set:
  """The flags experiments/'s scripts declare (argparse, read from source)."""
  names = set()
  for path in glob.glob(os.path.join(ROOT, "experiments", "*.py")):
    with open(path, encoding="utf-8") as f:
      names.update(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", f.read()))
  return {n.replace("-", "_") for n in names}


def test_quoted_flags_exist():
  """Every `--flag` quoted is launch.py's (or its `--no` form, or absl's), an
  experiments/ script's, or XLA's: a renamed flag leaves no prose behind."""
  known = set(launch.FLAGS) | {"help", "helpfull", "helpshort", "flagfile"} | (
      _script_flags())
  quoted = {name.replace("-", "_"): doc for doc in DOCS for span in _quoted(doc)
            for name in re.findall(r"(?<![\w-])--([a-z][\w-]*\w)", span)}
  # "--no" and "--name=value" are the docs' words for the forms themselves.
  is_known = lambda n: n in known or n in ("no", "name") or (
      n.startswith("no") and n[2:].lstrip("_") in known) or n.startswith("xla_")
  unknown = {name: doc for name, doc in quoted.items() if not is_known(name)}
  assert len(quoted) > 50 and unknown == {}

"""The docs name the code as it is: each `module.name`, file path and
`--flag` README.md and docs/ quote in backticks exists (modules read from
their source, not imported), so a rename leaves no prose behind.
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
# `report.md`, `config.json`: files of a run folder, not module attributes.
SUFFIXES = {"md", "py", "json", "jsonl", "png", "csv", "tsv", "txt", "npz",
            "npy", "ipynb", "html", "js", "css", "whl", "lock"}
# {"training/train": path, "models/kernels": its __init__.py, ...}.
MODULES = {
    (os.path.relpath(p, PACKAGE)[:-3].removesuffix("/__init__")
     .removesuffix("__init__") or "mnist_jax"): p
    for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)}


@functools.cache
def _names(path: str) -> frozenset:
  """What a module defines, assigns or imports at any depth."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(n.id for t in targets for n in ast.walk(t)
                   if isinstance(n, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
  return frozenset(names)


def _module(name: str):
  """The package module `name` ("train", "training/train",
  "mnist_jax.training.train") stands for, if exactly one."""
  name = name.replace(".", "/").removeprefix("mnist_jax/")
  found = [p for rel, p in MODULES.items() if rel.split("/")[-1] == name]
  return MODULES.get(name) or (found[0] if len(found) == 1 else None)


def _script_flags() -> set:
  """The flags experiments/'s scripts declare (argparse, read from source)."""
  names = set()
  for path in glob.glob(os.path.join(ROOT, "experiments", "*.py")):
    with open(path, encoding="utf-8") as f:
      names.update(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", f.read()))
  return {n.replace("-", "_") for n in names}


KNOWN_FLAGS = set(launch.FLAGS) | {"help", "helpfull", "helpshort",
                                   "flagfile"} | _script_flags()


def _flag_known(name: str) -> bool:
  """launch.py's (or its --no form), a script's, XLA's; "--no" and
  "--name=value" are the docs' words for the forms themselves."""
  return (name in KNOWN_FLAGS or name in ("no", "name") or
          name.startswith("xla_") or
          (name.startswith("no") and name[2:].lstrip("_") in KNOWN_FLAGS))


@pytest.mark.parametrize("doc", lh.DOCS)
def test_every_quoted_module_name_path_and_flag_exists(doc):
  """`loop.initial_state`, `rundir/lock.py`, `tests/test_parallel.py`,
  `--sweep`: the module defines the name, the file is in the repository,
  the flag is declared."""
  with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
    spans = re.findall(r"`([^`\n]+)`", f.read())
  missing = []
  for span in spans:
    for m in re.finditer(r"(?<![\w/.-])((?:[a-z_]+[/.])*[a-z_]+)(?:\.py)?\."
                         r"([A-Za-z_]\w*)", span):
      module, name = m.groups()
      path = _module(module)
      if name in SUFFIXES:
        continue
      if path is None and "/" in module and module.split("/")[0] in (
          "data", "models", "training", "rundir", "results", "mnist_jax"):
        missing.append(f"module {module} (in `{span}`)")
      elif path and name not in _names(path):
        missing.append(f"{module}.{name} (in `{span}`)")
    missing += [path for path in re.findall(
        r"(?:^|\s)((?:mnist_jax|tests|experiments|docs|\.ci)/[\w/.-]*\w)", span)
                if "*" not in path and not os.path.exists(
                    os.path.join(ROOT, path))]
    missing += [f"--{n}" for n in re.findall(r"(?<![\w-])--([a-z][\w-]*\w)",
                                             span)
                if not _flag_known(n.replace("-", "_"))]
  assert missing == []

"""setup.py's dependency floors are the versions .ci/floors.txt pins (tested)."""

import ast
import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from launch_helpers import ROOT


def _requirements(extra=None):
  """setup.py's requirements (install_requires and extras), or an extra's."""
  with open(os.path.join(ROOT, "setup.py")) as f:
    call = next(n for n in ast.walk(ast.parse(f.read())) if isinstance(
        n, ast.Call) and getattr(n.func, "id", "") == "setup")
  given = {k.arg: ast.literal_eval(k.value) for k in call.keywords
           if k.arg in ("install_requires", "extras_require")}
  extras = given["extras_require"]
  return [Requirement(r) for r in extras[extra]] if extra else [
      Requirement(r) for group in (given["install_requires"], *extras.values())
      for r in group]


def _version(requirement, operator):
  """The version `requirement` names with `operator` (">=", "=="), or None."""
  return next((Version(s.version) for s in requirement.specifier
               if s.operator == operator), None)


def test_every_floor_is_pinned_in_floors_txt():
  with open(os.path.join(ROOT, ".ci", "floors.txt")) as f:
    lines = [l.split("#")[0].strip() for l in f]
  pinned = {canonicalize_name(p.name): _version(p, "==")
            for p in map(Requirement, filter(None, lines))}
  requirements = _requirements()
  assert len(requirements) >= 15
  for requirement in requirements:
    name = canonicalize_name(requirement.name)
    assert name in pinned, f"{name} has no pin in .ci/floors.txt"
    assert pinned[name] == _version(requirement, ">="), requirement


def test_the_stack_and_the_notebooks_jupyter_are_capped():
  """A new minor release broke users before it was tested; the `notebook`
  extra brings the tour's Jupyter (mnist_jax needs none)."""
  capped = {canonicalize_name(r.name) for r in _requirements()
            if "<" in str(r.specifier)}
  assert {"jax", "flax", "orbax-checkpoint"} <= capped
  notebook = {canonicalize_name(r.name) for r in _requirements("notebook")}
  assert "jupyter" in notebook or {"nbclient", "ipykernel"} <= notebook
  assert notebook <= capped

"""setup.py's dependency floors are the versions .ci/floors.txt pins (tested)."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(extra=None):
  """setup.py's requirement strings (install_requires and extras), or an
  extra's."""
  with open(os.path.join(ROOT, "setup.py")) as f:
    call = next(n for n in ast.walk(ast.parse(f.read())) if isinstance(
        n, ast.Call) and getattr(n.func, "id", "") == "setup")
  given = {k.arg: ast.literal_eval(k.value) for k in call.keywords
           if k.arg in ("install_requires", "extras_require")}
  extras = given["extras_require"]
  return extras[extra] if extra else [r for group in (
      given["install_requires"], *extras.values()) for r in group]


def _name(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> tuple:
  parts = [int(p) for p in text.split(".")]
  while parts and parts[-1] == 0:
    parts.pop()
  return tuple(parts)


def test_every_floor_is_pinned_in_floors_txt():
  with open(os.path.join(ROOT, ".ci", "floors.txt")) as f:
    lines = [l.split("#")[0].strip() for l in f]
  pins = {_name(l.split("==")[0]): l.split("==")[1] for l in lines if l}
  requirements = _requirements()
  assert len(requirements) >= 15
  for requirement in requirements:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
    assert _name(name) in pins, f"{name} has no pin in .ci/floors.txt"
    assert _version(pins[_name(name)]) == _version(floor), requirement


def test_the_stack_and_the_notebooks_jupyter_are_capped():
  """A new minor release broke users before it was tested; the `notebook`
  extra brings the tour's Jupyter (mnist_jax needs none)."""
  capped = {_name(r.split(">=")[0]) for r in _requirements() if "<" in r}
  assert {"jax", "flax", "orbax-checkpoint"} <= capped
  notebook = {_name(re.match(r"[A-Za-z0-9_.-]+", r)[0]) for r in
              _requirements("notebook")}
  assert "jupyter" in notebook or {"nbclient", "ipykernel"} <= notebook
  assert notebook <= capped

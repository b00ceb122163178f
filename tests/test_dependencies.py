"""setup.py's dependency floors are the versions .ci/floors.txt pins (tested)."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(extra=None):
  """Every requirement string in setup.py (install_requires and extras), or
  an extra's."""
  with open(os.path.join(ROOT, "setup.py")) as f:
    tree = ast.parse(f.read())
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", "") == "setup")
  found = []
  for keyword in call.keywords:
    value = keyword.value
    if extra and keyword.arg == "extras_require":
      value = value.values[[k.value for k in value.keys].index(extra)]
    if keyword.arg in (("extras_require",) if extra else (
        "install_requires", "extras_require")):
      found += [n.value for n in ast.walk(value)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and re.search("[<>=]", n.value)]
  return found


def _name(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> tuple:
  parts = [int(p) for p in text.split(".")]
  while parts and parts[-1] == 0:
    parts.pop()
  return tuple(parts)


def _pins():
  with open(os.path.join(ROOT, ".ci", "floors.txt")) as f:
    lines = [l.split("#")[0].strip() for l in f]
  return {_name(l.split("==")[0]): l.split("==")[1] for l in lines if l}


def test_every_floor_is_pinned_in_floors_txt():
  pins = _pins()
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

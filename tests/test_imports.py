"""The research core stands alone (docs/design.md): a researcher copies or
edits it without the product shell."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL = ("mnist_jax.rundir", "mnist_jax.results", "mnist_jax.modes",
         "mnist_jax.api", "launch")
MODEL_CHOICE = ("mnist_jax.models.registry", "mnist_jax.models.kernels")
CORE = sorted(
    os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
    .removesuffix(".__init__")
    for part in ("data", "models", "training")
    for folder, _, names in os.walk(os.path.join(ROOT, "mnist_jax", part))
    for name in names if name.endswith(".py"))


def test_the_core_loads_nothing_of_the_shell():
  """docs/design.md's promise: the train step loads its metrics and
  precision.py only; the loop, no model registry or kernel; the core (data/,
  models/, training/), nothing of the shell."""
  steps = [(["mnist_jax.training.train"], SHELL + MODEL_CHOICE),
           (["mnist_jax.training.loop"], SHELL + MODEL_CHOICE), (CORE, SHELL)]
  code = "import sys\n" + "".join(
      "".join(f"import {m}\n" for m in imported) +
      "print(' '.join(m + '/' * hasattr(sys.modules[m], '__path__') for m in "
      "sys.modules if m.startswith(('mnist_jax', 'launch'))))\n"
      for imported, _ in steps)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  for (imported, banned), line in zip(steps, out.stdout.splitlines()):
    loaded = {m.rstrip("/") for m in line.split()}  # Adds to the last line's.
    assert set(imported) <= loaded
    assert not {m for m in loaded if m.startswith(banned)}, sorted(loaded)
  modules = {m for m in out.stdout.split("\n")[0].split() if m[-1] != "/"}
  assert modules == {"mnist_jax.training.train", "mnist_jax.training.metrics",
                   "mnist_jax.training.precision"}, modules

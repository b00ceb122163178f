"""What a process loads: the research core stands alone (docs/design.md), so
a researcher copies or edits it without the product shell; a run starts
training without the slow imports."""

import os
import subprocess
import sys

import pytest

from launch_helpers import ROOT
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


# Over a second together: tfds, orbax, matplotlib and scipy.ndimage come in
# when needed; tensorboardX would import an installed PyTorch (0.9 s).
HEAVY = ("tensorflow_datasets", "orbax.checkpoint", "matplotlib",
         "scipy.ndimage", "torch")
# launch.py, stopped as it traces the first chunk of train steps.
PROBE = f"""
import os, sys
from mnist_jax.training import train
def first_step(*args, **kwargs):
  print("LOADED", *sorted(m for m in {HEAVY!r} if m in sys.modules))
  os._exit(0)
train.train_chunk = first_step
import launch
launch.FLAGS(sys.argv)
launch.main(sys.argv[:1])
"""


@pytest.mark.parametrize("data", ["prepared", "idx_files"])
def test_the_first_step_needs_none_of_the_slow_imports(prepared, tmp_path,
                                                       data):
  """README's data section, performance.md's start-up: data prepared or from
  IDX files; an installed PyTorch (a stand-in) is not imported either."""
  mnist_dir, data_dir = prepared
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("Tensor = object\n")
  if data == "idx_files":
    data_dir = str(tmp_path / "fresh")
  out = subprocess.run(
      [sys.executable, "-c", PROBE, "--model=mlp", "--preset=seed",
       "--mlp_hidden=8", "--epochs=1", "--batch_size=50",
       f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
       f"--workdir={tmp_path}/run"], capture_output=True, text=True, cwd=ROOT,
      timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
          [str(fake.parent), ROOT])})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines()[-1] == "LOADED", out.stdout
  assert (data == "idx_files") == (
      "from the IDX files" in out.stdout + out.stderr)

"""experiments/tour.ipynb: kept without outputs and run end to end on tiny data
(Jupyter, the `notebook` extra: test_dependencies.py).

The slow test runs the notebook's code cells as one script in a child Python
(no Jupyter needed), from experiments/ as Jupyter would, with a cell of its own
after the parameters cell that points it at the synthetic data and shrinks
the model.
"""

import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "tour.ipynb")


def _code_cells():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def _is_parameters(cell) -> bool:
  return "parameters" in cell["metadata"].get("tags", [])


def _script(overrides: str) -> str:
  """The code cells in order, `overrides` run right after the parameters."""
  parts = []
  for cell in _code_cells():
    parts.append("".join(cell["source"]))
    if _is_parameters(cell):
      parts.append(overrides)
  return "\n\n".join(parts)


def test_the_notebook_is_stored_without_outputs_and_parameters_first():
  cells = _code_cells()
  assert all(c["outputs"] == [] and c["execution_count"] is None for c in cells)
  assert [c for c in cells if _is_parameters(c)] == cells[:1]
  # The API, not launch.py in a shell; no IPython magics (the slow test runs
  # the cells as plain Python).
  source = _script("")
  assert "subprocess" not in source and "os.system" not in source
  assert not [l for l in source.splitlines() if l.lstrip().startswith(("!", "%"))]


@pytest.mark.slow
def test_the_notebook_runs_on_tiny_data(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  overrides = (f"MNIST_DIR = {mnist_dir!r}\nDATA_DIR = {data_dir!r}\n"
               "OVERRIDES = dict(epochs=2, cnn_features=(4, 8), cnn_dense=16, "
               "batch_size=32)\n"
               f"WORKDIR = {str(tmp_path / 'tour')!r}\n")
  source = _script(overrides) + "\nprint('figures', len(plt.get_fignums()))\n"
  env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-c", source], capture_output=True,
                       text=True, cwd=os.path.join(ROOT, "experiments"),
                       env=env, check=False, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[-1] == "figures 4"  # Curves, confusion matrix, mistakes, picture.
  assert any(l.startswith("test accuracy ") for l in lines)
  assert os.path.exists(tmp_path / "tour" / "report.md")


@pytest.mark.parametrize("backend,kept", [("", "agg"),
                                          ("module://my_inline", "module://my_inline")])
def test_the_report_keeps_a_notebooks_inline_backend(backend, kept):
  """Training in a notebook must not switch its figures off (plots.py)."""
  code = ("import matplotlib; from mnist_jax.results import plots; "
          "print(matplotlib.get_backend().lower())")
  env = {**os.environ, "MPLBACKEND": backend}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, env=env, check=True, timeout=120)
  assert out.stdout.strip() == kept

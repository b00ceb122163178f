"""experiments/tour.ipynb: kept without outputs, Jupyter named where it says how
to run it, and run end to end on tiny data.

The slow test runs the notebook's code cells as one script in a child Python
(no Jupyter needed), from experiments/ as Jupyter would, with a cell of its own
after the parameters cell that points it at the synthetic data and shrinks
the model.
"""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import extra

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


def _extras():
  """setup.py's extras_require, read from its source."""
  with open(os.path.join(ROOT, "setup.py")) as f:
    tree = ast.parse(f.read())
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", "") == "setup")
  [extras] = [k.value for k in call.keywords if k.arg == "extras_require"]
  return ast.literal_eval(extras)


def test_jupyter_is_the_notebook_extra_and_named_where_the_tour_is():
  """The tour needs Jupyter, which mnist_jax itself does not: the `notebook`
  extra brings it (a notebook server, or nbclient, with the Python kernel),
  within version ranges, and the README and the notebook say to install it."""
  names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-"): r
           for r in _extras()["notebook"]}
  assert "jupyter" in names or {"nbclient", "ipykernel"} <= set(names), names
  for requirement in names.values():
    assert re.search(r">=[0-9.]+,<[0-9.]+$", requirement), requirement
  install = 'pip install ".[notebook]"'
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = " ".join(f.read().split())
  assert f"tour.ipynb) is a notebook tour (Jupyter is the `notebook` extra: `{install}`" in readme
  with open(NOTEBOOK) as f:
    intro = "".join(json.load(f)["cells"][0]["source"])
  assert install in intro and "jupyter lab experiments/tour.ipynb" in intro


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


@pytest.mark.slow
def test_the_notebook_runs_in_jupyter(prepared, tmp_path):
  """With the `notebook` extra installed: the notebook as Jupyter runs it
  (nbclient, the Python kernel, its inline figures), the same overrides in
  a cell after the parameters, as papermill would put them."""
  nbformat, nbclient = extra("nbformat"), extra("nbclient")
  extra("ipykernel")
  mnist_dir, data_dir = prepared
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  at = next(i for i, c in enumerate(notebook.cells)
            if c.cell_type == "code" and _is_parameters(c))
  notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(
      f"MNIST_DIR = {mnist_dir!r}\nDATA_DIR = {data_dir!r}\n"
      "OVERRIDES = dict(epochs=1, cnn_features=(4, 8), cnn_dense=16, "
      f"batch_size=32)\nWORKDIR = {str(tmp_path / 'tour')!r}\n"))
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": os.path.join(ROOT, "experiments")}}
  ).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code"
             for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) == 4  # Curves, confusion matrix, mistakes, picture.
  printed = "".join(o.get("text", "") for o in outputs
                    if o.output_type == "stream")
  assert "test accuracy " in printed
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

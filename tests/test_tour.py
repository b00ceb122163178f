"""experiments/tour.ipynb: kept without outputs and run end to end on tiny data
(Jupyter, the `notebook` extra: test_dependencies.py).

The slow test runs it in Jupyter (nbclient; skipped without the extra, failed
where CI names it in MNIST_JAX_EXTRAS), with a cell of its own after the
parameters cell that points it at the synthetic data and shrinks the model.
"""

import json
import os

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


@pytest.mark.slow
def test_the_notebook_runs_in_jupyter(prepared, tmp_path):
  """With the `notebook` extra installed: the notebook as Jupyter runs it
  (nbclient, the Python kernel, its inline figures: training did not switch
  them off), the same overrides in a cell after the parameters, as
  papermill would put them."""
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

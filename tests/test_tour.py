"""experiments/tour.ipynb runs end to end in Jupyter on tiny data (the
`notebook` extra: test_dependencies.py)."""

import os

import pytest

from conftest import extra
from launch_helpers import ROOT

NOTEBOOK = os.path.join(ROOT, "experiments", "tour.ipynb")


@pytest.mark.slow
def test_the_notebook_runs_in_jupyter(prepared, tmp_path):
  """nbclient with the Python kernel, its inline figures kept, the overrides
  in a cell after the parameters (as papermill puts them)."""
  nbformat, nbclient = extra("nbformat"), extra("nbclient")
  extra("ipykernel")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  at = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code"
            and "parameters" in c.metadata.get("tags", []))
  notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(
      f"MNIST_DIR = {prepared.mnist_dir!r}\n"
      f"DATA_DIR = {prepared.data_dir!r}\n"
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

"""experiments/compare.py: table and plots over finished runs, seeds grouped."""

import csv
import io
import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from experiments import compare
from mnist_jax import files
from mnist_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_trains_and_compares_with_mean_over_seeds(tiny_run, prepared, tmp_path):
  mnist_dir, data_dir = prepared
  root = str(tmp_path / "runs")
  logs = []
  folders = compare.train_runs(["linear"], [0, 1], root, preset="seed",
                               log=logs.append, stream=io.StringIO(), epochs=1,
                               mnist_dir=mnist_dir, data_dir=data_dir)
  assert [os.path.basename(f) for f in folders] == ["linear-seed0", "linear-seed1"]
  again = compare.train_runs(["linear"], [0], root, preset="seed",
                             log=logs.append, stream=io.StringIO(), epochs=1,
                             mnist_dir=mnist_dir, data_dir=data_dir)
  assert again == folders[:1] and logs[-1].endswith("finished before, reused")

  out = str(tmp_path / "out")
  groups = compare.compare([root, tiny_run], out, log=logs.append)
  assert [g["label"] for g in groups] == ["linear", "mlp"]  # Registry order.
  with open(os.path.join(out, "comparison.csv")) as f:
    rows = list(csv.DictReader(f))
  linear = rows[0]
  accuracies = [workdir_lib.final_metrics(d)["test_accuracy"] for d in folders]
  assert linear["runs"] == "2" and linear["seeds"] == "0 1"
  assert float(linear["test_accuracy_mean"]) == pytest.approx(
      sum(accuracies) / 2, abs=1e-6)
  assert linear["parameters"] == str(784 * 10 + 10)
  with open(os.path.join(out, "runs.csv")) as f:
    assert len(list(csv.DictReader(f))) == 3
  table = open(os.path.join(out, "comparison.md")).read()
  assert "| linear | seed | 2 | 7,850 |" in table and " ± " in table
  for name in compare.PLOTS:
    with Image.open(os.path.join(out, name)) as image:
      assert image.format == "PNG", name


def test_same_model_groups_are_told_apart(tiny_run, tmp_path):
  other = str(tmp_path / "mlp-lr")
  subprocess.run(["cp", "-r", tiny_run, other], check=True)
  path = os.path.join(other, workdir_lib.CONFIG_FILE)
  record = workdir_lib.read_config(other).replace(learning_rate=0.01)
  with open(path) as f:
    data = json.load(f)
  data["config"] = record.to_dict()
  files.write_json(path, data)
  groups = compare.group([compare.summarize(tiny_run), compare.summarize(other)])
  assert sorted(g["label"] for g in groups) == ["mlp (learning_rate=0.001)",
                                                "mlp (learning_rate=0.01)"]


@pytest.mark.slow
def test_command_line_errors(tmp_path):
  script = os.path.join(ROOT, "experiments", "compare.py")
  for args, words in (([str(tmp_path / "nope")], "does not exist"),
                      ([str(tmp_path)], "neither a run folder"),
                      ([], "pass run folders")):
    result = subprocess.run([sys.executable, script, *args], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_num_seeds_run_gives_one_run_per_seed(prepared, tmp_path):
  """A --num_seeds=3 run is grouped as three seeds, with their spread."""
  from mnist_jax import models, train  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  folder = str(tmp_path / "linear-3seeds")
  config = models.get_config("linear", "seed", num_seeds=3, seed=5, epochs=2,
                             val_fraction=0.1, mnist_dir=mnist_dir,
                             data_dir=data_dir)
  train.train_and_evaluate(config, folder, stream=io.StringIO())
  final = workdir_lib.final_metrics(folder)
  groups = compare.compare([folder], str(tmp_path / "out"), log=lambda _: None)
  assert len(groups) == 1
  g = groups[0]
  assert g["seeds"] == [5, 6, 7]
  assert g["test_accuracy"] == [r["test_accuracy"] for r in final["members"]]
  assert len(set(g["test_loss"])) == 3
  for curve, replica in zip(g["curves"], range(3)):
    assert [r["epoch"] for r in curve] == [1, 2]
    rows = list(workdir_lib.read_metrics(
        os.path.join(folder, workdir_lib.METRICS_FILE)))
    assert curve[1]["val_loss"] == rows[1]["members"][replica]["val_loss"]
    assert "members" not in curve[1] and "val_loss_std" not in curve[1]
  with open(os.path.join(str(tmp_path / "out"), "comparison.csv")) as f:
    row = next(csv.DictReader(f))
  assert row["runs"] == "3" and row["seeds"] == "5 6 7"
  assert float(row["test_accuracy_mean"]) == pytest.approx(
      final["test_accuracy_mean"], abs=1e-6)
  assert float(row["test_accuracy_std"]) == pytest.approx(
      final["test_accuracy_std"], abs=1e-6)
  assert float(row["test_loss_mean"]) == pytest.approx(
      final["test_loss_mean"], abs=1e-6)


def test_final_row_records_data_time(tiny_run):
  final = workdir_lib.final_metrics(tiny_run)
  assert 0 < final["data_time_s"] < final["wall_time_s"]

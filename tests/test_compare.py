"""experiments/compare.py: table and plots over finished runs, seeds grouped."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
from PIL import Image
import pytest

from mnist_jax.results import compare
from mnist_jax.results import plots
from mnist_jax.rundir import files
from mnist_jax.rundir import folder as folder_lib

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
  accuracies = [folder_lib.final_metrics(d)["test_accuracy"] for d in folders]
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
  path = os.path.join(other, folder_lib.CONFIG_FILE)
  record = folder_lib.read_config(other).replace(learning_rate=0.01)
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
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax.training import train  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  folder = str(tmp_path / "linear-3seeds")
  config = models.get_config("linear", "seed", num_seeds=3, seed=5, epochs=2,
                             val_fraction=0.1, mnist_dir=mnist_dir,
                             data_dir=data_dir)
  train.train_and_evaluate(config, folder, stream=io.StringIO())
  final = folder_lib.final_metrics(folder)
  groups = compare.compare([folder], str(tmp_path / "out"), log=lambda _: None)
  assert len(groups) == 1
  g = groups[0]
  assert g["seeds"] == [5, 6, 7]
  assert g["test_accuracy"] == [r["test_accuracy"] for r in final["members"]]
  assert len(set(g["test_loss"])) == 3
  for curve, replica in zip(g["curves"], range(3)):
    assert [r["epoch"] for r in curve] == [1, 2]
    rows = list(folder_lib.read_metrics(
        os.path.join(folder, folder_lib.METRICS_FILE)))
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


# Times without the data, numeric order, honest axes, whole figures.


def test_final_row_records_data_time_and_compare_leaves_it_out(tiny_run):
  final = folder_lib.final_metrics(tiny_run)
  assert 0 < final["data_time_s"] < final["wall_time_s"]
  summary = compare.summarize(tiny_run)
  assert summary["train_time_s"] == pytest.approx(
      final["wall_time_s"] - final["data_time_s"])


def test_a_run_without_data_time_still_loads_and_is_named(tiny_run, tmp_path):
  old = str(tmp_path / "old")
  shutil.copytree(tiny_run, old)
  path = os.path.join(old, folder_lib.METRICS_FILE)
  rows = list(folder_lib.read_metrics(path))
  del rows[-1]["data_time_s"]
  files.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
  summary = compare.summarize(old)
  assert summary["data_time_s"] is None
  assert summary["train_time_s"] == rows[-1]["wall_time_s"]
  compare.write_tables(compare.group([summary]), str(tmp_path))
  with open(tmp_path / "comparison.md") as f:
    assert f"1 run(s) predate the record of data loading time; their time " \
        f"includes it: {old}" in f.read()


def test_sort_key_orders_numbers_as_numbers_across_types():
  values = ["adam", 128, (512, 256), 64, None, "3e-4", (256,), 1e-3, True]
  assert sorted(values, key=compare.sort_key) == [
      None, "3e-4", 1e-3, True, 64, 128, (256,), (512, 256), "adam"]


def _copy_with(run, folder, **changes):
  subprocess.run(["cp", "-r", run, folder], check=True)
  path = os.path.join(folder, folder_lib.CONFIG_FILE)
  with open(path) as f:
    data = json.load(f)
  data["config"] = folder_lib.read_config(folder).replace(**changes).to_dict()
  files.write_json(path, data)
  return compare.summarize(folder)


def test_configurations_of_a_model_are_ordered_by_value(tiny_run, tmp_path):
  summaries = [_copy_with(tiny_run, str(tmp_path / str(b)), batch_size=b)
               for b in (128, 64, 1000)]
  assert [g["label"] for g in compare.group(summaries)] == [
      "mlp (batch_size=64)", "mlp (batch_size=128)", "mlp (batch_size=1000)"]


def _group(label, accuracies, times=None, val=True, epochs=3):
  times = times or [10.0] * len(accuracies)
  curves = [[{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": a - 0.01 / e,
              "val_loss": 1.2 / e if val else None,
              "val_accuracy": a - 0.02 / e if val else None}
             for e in range(1, epochs + 1)] for a in accuracies]
  return {"label": label, "test_accuracy": accuracies, "train_time_s": times,
          "wall_time_s": [t + 5 for t in times], "curves": curves}


def test_accuracy_axes_start_a_point_below_the_lowest_run():
  assert plots.accuracy_floor([99.2, 99.23]) == 98.0
  assert plots.accuracy_floor([92.65, 99.3]) == 91.0
  assert plots.accuracy_floor([99.0]) == 98.0
  assert plots.accuracy_floor([0.4, 50.0]) == 0.0
  groups = [_group("cnn", [0.9920]), _group("gru", [0.9923], [30.0])]
  fig = plots.accuracy_time_figure(groups)
  assert fig.axes[0].get_ylim() == (98.0, 100.0)  # 0.03 points of 2.
  assert plots.accuracy_figure(groups).axes[0].get_xlim() == (98.0, 100.0)
  panels = {ax.get_title(): ax for ax in plots.curves_figure(groups).axes}
  low = plots.accuracy_floor([100 * (0.992 - 0.02)])
  assert panels["Validation accuracy (%)"].get_ylim() == (low, 100.0)
  assert panels["Validation loss"].get_ylim()[0] == 0.0
  plt.close("all")


def test_no_panel_without_data():
  without = plots.curves_figure([_group("linear", [0.92], val=False)])
  assert [ax.get_title() for ax in without.axes] == [
      "Train loss (cross entropy)", "Train accuracy (%)"]
  mixed = plots.curves_figure([_group("linear", [0.92], val=False),
                               _group("mlp", [0.98])])
  assert len(mixed.axes) == 4 and all(ax.lines for ax in mixed.axes)
  plt.close("all")


def _titles(fig):
  return [t.get_text() for t in fig.texts + [ax.title for ax in fig.axes]
          if t.get_text()]  # fig.texts holds the suptitle.


@pytest.mark.parametrize("figure", [plots.accuracy_figure,
                                    plots.accuracy_time_figure,
                                    plots.curves_figure])
def test_titles_speak_of_seeds_only_where_a_group_has_several(figure):
  single = " ".join(_titles(figure([_group("cnn", [0.99]),
                                     _group("gru", [0.98], [30.0])])))
  seeds = " ".join(_titles(figure([_group("cnn", [0.99, 0.991]),
                                    _group("gru", [0.98], [30.0])])))
  assert single and "seeds" not in single, single
  assert "over seeds" in seeds
  plt.close("all")


@pytest.mark.parametrize("seeds", [1, 2])
def test_sweep_title_speaks_of_seeds_only_with_several(seeds):
  table = [{"member": seeds * i + s, "values": {"learning_rate": lr}, "seed": s,
            "final_val_accuracy": 0.97 + 0.001 * s, "test_accuracy": 0.96,
            "chosen": i == 0 and s == 0}
           for i, lr in enumerate((1e-3, 3e-3)) for s in range(seeds)]
  [title] = [t.get_text() for t in
             plots.sweep_figure(table, ["learning_rate"], "mlp").texts]
  assert title.startswith("mlp\nfinal validation and test accuracy"), title
  assert ("over seeds" in title) == (seeds > 1)
  plt.close("all")


def test_titles_fit_and_legends_clear_the_axes():
  groups = [_group(f"mlp (learning_rate={lr}, dropout=0.25, grad_clip=1.0)",
                   [0.98, 0.981], [20.0 * (i + 1), 21.0 * (i + 1)])
            for i, lr in enumerate((1e-4, 3e-4, 1e-3, 3e-3, 1e-2))]
  for figure in (plots.accuracy_figure, plots.accuracy_time_figure,
                 plots.curves_figure):
    fig = figure(groups)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    titles = [t for t in fig.texts + [ax.title for ax in fig.axes]
              if t.get_text()]  # fig.texts holds the suptitle.
    assert titles
    for title in titles:
      box = title.get_window_extent(renderer)
      assert page.x0 <= box.x0 and box.x1 <= page.x1, title.get_text()
    legends = [ax.get_legend() for ax in fig.axes] + fig.legends
    for legend in filter(None, legends):
      box = legend.get_window_extent(renderer)
      assert not any(box.overlaps(ax.get_window_extent(renderer))
                     for ax in fig.axes), figure.__name__
  plt.close("all")

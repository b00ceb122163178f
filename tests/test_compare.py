"""experiments/compare.py: table and plots over finished runs, seeds grouped."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
import pytest

from experiments import compare
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.results import plots
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib

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
  accuracies = [metrics_log.final_metrics(d)["test_accuracy"] for d in folders]
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
  path = os.path.join(other, record_lib.CONFIG_FILE)
  record = record_lib.read_config(other).replace(learning_rate=0.01)
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
  from mnist_jax import modes  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  folder = str(tmp_path / "linear-3seeds")
  config = models.get_config("linear", "seed", num_seeds=3, seed=5, epochs=2,
                             val_fraction=0.1, mnist_dir=mnist_dir,
                             data_dir=data_dir)
  modes.train_and_evaluate(config, folder, stream=io.StringIO())
  final = metrics_log.final_metrics(folder)
  groups = compare.compare([folder], str(tmp_path / "out"), log=lambda _: None)
  assert len(groups) == 1
  g = groups[0]
  assert g["seeds"] == [5, 6, 7]
  assert g["test_accuracy"] == [r["test_accuracy"] for r in final["members"]]
  assert len(set(g["test_loss"])) == 3
  for curve, replica in zip(g["curves"], range(3)):
    assert [r["epoch"] for r in curve] == [1, 2]
    rows = list(metrics_log.read_metrics(
        os.path.join(folder, metrics_log.METRICS_FILE)))
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
  # Each seed is charged a third of the program's time.
  assert g["wall_time_s"] == pytest.approx([final["wall_time_s"] / 3] * 3)
  assert g["program_members"] == [3, 3, 3]


# Honest numbers (issue 29): a program's time shared by its members, each
# model counted once, the sample standard deviation.


def _write_run(folder, accuracies, *, seed=0, wall=40.0, data=4.0,
               epoch_time=10.0, examples_per_s=5000.0, model="linear",
               **overrides):
  """A finished run folder as launch.py leaves it: one member per accuracy
  (several: a --num_seeds run of seeds seed, seed+1, ...)."""
  m = len(accuracies)
  config = models.get_config(model, "seed", epochs=2, seed=seed,
                             num_seeds=m, val_fraction=0.1,
                             workdir=str(folder), **overrides)
  os.makedirs(folder)
  files.write_json(os.path.join(folder, record_lib.CONFIG_FILE),
                   {"config": config.to_dict()})
  entries = lambda **k: [{"index": i, "seed": seed + i, "values": {}, **k}
                         for i in range(m)]
  rows = []
  for e in (1, 2):
    row = {"epoch": e, "step": 10 * e, "train_loss": 1.0 / e,
           "train_accuracy": 0.8, "val_loss": 1.1 / e, "val_accuracy": 0.8,
           "learning_rate": 1e-3, "epoch_time_s": epoch_time,
           "examples_per_s": examples_per_s}
    if m > 1:
      row["members"] = entries(train_loss=1.0 / e, train_accuracy=0.8,
                               val_loss=1.1 / e, val_accuracy=0.8)
    rows.append(row)
  final = {"test_accuracy": accuracies[0], "test_loss": 0.3,
           "test_examples": 200, "epochs_run": 2, "compile_time_s": 2.0,
           "num_params": 7850, "wall_time_s": wall, "data_time_s": data}
  if m > 1:
    final["members"] = [dict(e, test_accuracy=a, test_loss=0.3)
                        for e, a in zip(entries(), accuracies)]
    final["chosen"] = {"index": 0, "seed": seed, "values": {}}
    final["test_accuracy_mean"] = float(np.mean(accuracies))
    final["test_accuracy_std"] = float(np.std(accuracies, ddof=1))
  rows.append(final)
  files.write_text(os.path.join(folder, metrics_log.METRICS_FILE),
                   "".join(json.dumps(r) + "\n" for r in rows))
  return str(folder)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_members_of_a_program_share_its_time(tmp_path):
  """Four seeds trained in one program of 36 s (less data) are charged 9 s
  each, not 36 s each; a standalone run of another seed its own time."""
  program = _write_run(tmp_path / "four", [0.91, 0.92, 0.93, 0.94], seed=10,
                       wall=40.0, data=4.0, epoch_time=8.0,
                       examples_per_s=1000.0)
  single = _write_run(tmp_path / "one", [0.95], seed=0, wall=12.0, data=2.0)
  out = str(tmp_path / "out")
  [g] = compare.compare([program, single], out, log=lambda _: None)
  by_seed = dict(zip(g["seeds"], g["runs"]))
  assert g["seeds"] == [0, 10, 11, 12, 13]
  assert by_seed[0]["wall_time_s"] == pytest.approx(10.0)
  for seed in (10, 11, 12, 13):
    member = by_seed[seed]
    assert member["wall_time_s"] == pytest.approx(36.0 / 4)
    assert member["compile_time_s"] == pytest.approx(2.0 / 4)
    assert member["epoch_time_s"] == pytest.approx(8.0 / 4)
    assert member["examples_per_s"] == pytest.approx(4 * 1000.0)
  # The table's mean time is over the five models' shares: 46 s in all.
  [row] = _csv(os.path.join(out, "comparison.csv"))
  assert float(row["wall_time_s_mean"]) == pytest.approx(46.0 / 5, abs=0.01)
  runs = {r["seed"]: r for r in _csv(os.path.join(out, "runs.csv"))}
  assert runs["11"]["program_members"] == "4" and runs["11"]["member"] == "1"
  assert runs["11"]["run"] == program and runs["0"]["member"] == ""
  assert float(runs["11"]["wall_time_s"]) == pytest.approx(9.0)
  text = open(os.path.join(out, "comparison.md")).read()
  assert f"{program} (4 members)" in text and "divided by its members" in text


def test_a_model_trained_twice_is_counted_once(tmp_path):
  """A standalone run with the settings and seed of a program's member is
  one model: the standalone run is kept (its times are its own), and both
  the log and comparison.md say which was left out."""
  program = _write_run(tmp_path / "three", [0.90, 0.91, 0.92], seed=0)
  twin = _write_run(tmp_path / "seed1", [0.97], seed=1, wall=7.0, data=1.0)
  other = _write_run(tmp_path / "seed5", [0.93], seed=5)
  logs = []
  out = str(tmp_path / "out")
  # The program's folder also reached twice: given, and inside tmp_path.
  [g] = compare.compare([program, twin, str(tmp_path)], out, log=logs.append)
  assert g["seeds"] == [0, 1, 2, 5]
  kept = g["runs"][g["seeds"].index(1)]
  assert kept["run"] == twin and kept["member"] is None
  assert g["test_accuracy"][1] == 0.97 and kept["wall_time_s"] == 6.0
  said = f"member 1 of {program} left out for {twin}"
  assert (f"counting one run once: member 1 of {program} has the settings and "
          f"seed of {twin}; left out for it") in logs, logs
  assert said in open(os.path.join(out, "comparison.md")).read()
  assert len(_csv(os.path.join(out, "runs.csv"))) == 4
  assert logs[-1].startswith("compared 4 runs in 1 configurations (1 counted "
                             "once)")
  # Given first, the member still gives way to the standalone run.
  summaries = (compare.split_members(compare.summarize(program)) +
               [compare.summarize(twin), compare.summarize(other)])
  kept_runs, dropped = compare.deduplicate(summaries[::-1])
  assert len(kept_runs) == 4 and [(d["member"], k["run"]) for d, k in dropped
                                  ] == [(1, twin)]
  # Another setting (here the batch size) is another model.
  third = _write_run(tmp_path / "b64", [0.9], seed=1, batch_size=64)
  assert not compare.deduplicate([compare.summarize(twin),
                                  compare.summarize(third)])[1]


def test_spread_is_the_sample_standard_deviation_as_in_report_md(tmp_path):
  accuracies = [0.90, 0.92, 0.97]
  program = _write_run(tmp_path / "three", accuracies)
  out = str(tmp_path / "out")
  [g] = compare.compare([program], out, log=lambda _: None)
  [row] = _csv(os.path.join(out, "comparison.csv"))
  sample = float(np.std(accuracies, ddof=1))
  assert float(row["test_accuracy_std"]) == pytest.approx(sample, abs=1e-6)
  # What the run's own final row (report.md's numbers) holds.
  final = metrics_log.final_metrics(program)
  assert float(row["test_accuracy_std"]) == pytest.approx(
      final["test_accuracy_std"], abs=1e-6)
  text = open(os.path.join(out, "comparison.md")).read()
  assert f"{100 * np.mean(accuracies):.2f}% ± {100 * sample:.2f}%" in text
  # The figures' whiskers and labels too.
  fig = compare.accuracy_figure(compare.group(
      compare.split_members(compare.summarize(program))))
  labels = [t.get_text() for t in fig.axes[0].texts]
  assert f"± {100 * sample:.2f} (n=3)" in labels[0], labels
  plt.close("all")
  assert compare._mean_std([0.5]) == (0.5, 0.0)  # pylint: disable=protected-access


# Times without the data, numeric order, honest axes, whole figures.


def test_compare_reads_the_one_wall_time_of_the_final_row(tiny_run):
  """The final row's wall_time_s is the wall time (the data's preparation
  apart, in data_ready_s); compare.py read a third figure. A row of an
  earlier version held the data's time in wall_time_s, as data_time_s."""
  final = metrics_log.final_metrics(tiny_run)
  assert final["data_ready_s"] > 0 and "data_time_s" not in final
  summary = compare.summarize(tiny_run)
  assert summary["wall_time_s"] == final["wall_time_s"]
  assert summary["data_time_s"] == final["data_ready_s"]
  older = {**final, "wall_time_s": 10.0, "data_time_s": 4.0}
  assert metrics_log.wall_time(older) == 6.0


def test_a_run_without_data_time_still_loads_and_is_named(tiny_run, tmp_path):
  old = str(tmp_path / "old")
  shutil.copytree(tiny_run, old)
  path = os.path.join(old, metrics_log.METRICS_FILE)
  rows = list(metrics_log.read_metrics(path))
  del rows[-1]["data_ready_s"]
  files.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
  summary = compare.summarize(old)
  assert summary["data_time_s"] is None
  assert summary["wall_time_s"] == rows[-1]["wall_time_s"]
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
  path = os.path.join(folder, record_lib.CONFIG_FILE)
  with open(path) as f:
    data = json.load(f)
  data["config"] = record_lib.read_config(folder).replace(**changes).to_dict()
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
  return {"label": label, "test_accuracy": accuracies, "wall_time_s": times,
          "curves": curves}


def test_accuracy_axes_start_a_point_below_the_lowest_run():
  assert compare.accuracy_floor([99.2, 99.23]) == 98.0
  assert compare.accuracy_floor([92.65, 99.3]) == 91.0
  assert compare.accuracy_floor([99.0]) == 98.0
  assert compare.accuracy_floor([0.4, 50.0]) == 0.0
  groups = [_group("cnn", [0.9920]), _group("gru", [0.9923], [30.0])]
  fig = compare.accuracy_time_figure(groups)
  assert fig.axes[0].get_ylim() == (98.0, 100.0)  # 0.03 points of 2.
  assert compare.accuracy_figure(groups).axes[0].get_xlim() == (98.0, 100.0)
  panels = {ax.get_title(): ax for ax in compare.curves_figure(groups).axes}
  low = compare.accuracy_floor([100 * (0.992 - 0.02)])
  assert panels["Validation accuracy (%)"].get_ylim() == (low, 100.0)
  assert panels["Validation loss"].get_ylim()[0] == 0.0
  plt.close("all")


def test_a_time_whisker_never_reaches_zero(tmp_path):
  """Two runs of 1 s and 20 s: mean 10.5 s, sample std 13.4 s; on the log
  time axis (another group at 200 s) the whisker stops at the fastest run
  rather than at -inf (which drew a figure of 250 million pixels)."""
  groups = [_group("cnn", [0.99, 0.991], [1.0, 20.0]),
            _group("gru", [0.98], [200.0])]
  fig = compare.accuracy_time_figure(groups)
  ax = fig.axes[0]
  assert ax.get_xscale() == "log" and ax.get_xlim()[0] > 0
  path = compare.plot_accuracy_time(groups, str(tmp_path / "t.png"))
  with Image.open(path) as image:
    assert max(image.size) < 3000, image.size
  plt.close("all")


def test_no_panel_without_data():
  without = compare.curves_figure([_group("linear", [0.92], val=False)])
  assert [ax.get_title() for ax in without.axes] == [
      "Train loss (cross entropy)", "Train accuracy (%)"]
  mixed = compare.curves_figure([_group("linear", [0.92], val=False),
                               _group("mlp", [0.98])])
  assert len(mixed.axes) == 4 and all(ax.lines for ax in mixed.axes)
  plt.close("all")


def _titles(fig):
  return [t.get_text() for t in fig.texts + [ax.title for ax in fig.axes]
          if t.get_text()]  # fig.texts holds the suptitle.


@pytest.mark.parametrize("figure", [compare.accuracy_figure,
                                    compare.accuracy_time_figure,
                                    compare.curves_figure])
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
  for figure in (compare.accuracy_figure, compare.accuracy_time_figure,
                 compare.curves_figure):
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


def test_every_figure_label_names_the_model_and_preset(tiny_run, tmp_path):
  """The tables' labels name a model's only configuration by its model
  ("cnn") and same-preset ones by what differs; the figures' name each
  preset too, and two groups alike also their folders."""
  groups = compare.group([
      compare.summarize(tiny_run),
      _copy_with(tiny_run, str(tmp_path / "a"), learning_rate=0.01),
      _copy_with(tiny_run, str(tmp_path / "b"), model="cnn", preset="tuned")])
  assert sorted(g["label"] for g in groups) == [
      "cnn", "mlp (learning_rate=0.001)", "mlp (learning_rate=0.01)"]
  accuracy = compare.accuracy_figure(groups).axes[0].get_yticklabels()
  time = compare.accuracy_time_figure(groups).axes[0].get_legend().texts
  curves = compare.curves_figure(groups).legends[0].texts
  for texts in (accuracy, time, curves):
    labels = [t.get_text() for t in texts]
    assert sorted(labels) == ["cnn (tuned)", "mlp (seed, learning_rate=0.001)",
                              "mlp (seed, learning_rate=0.01)"]
  mlp = next(g for g in groups if g["label"] == "mlp (learning_rate=0.001)")
  twins = [{**mlp, "runs": [{"run": str(tmp_path / name)}]} for name in "xy"]
  assert compare.group_labels(twins) == [
      f"mlp (seed, learning_rate=0.001) [{name}]" for name in "xy"]
  assert compare.run_label("cnn (fast, lr=0.1) [run2]", "cnn", "fast") == (
      "cnn (fast, lr=0.1) [run2]")
  assert compare.run_label("cnn (lr=0.1) [run2]", "cnn", "fast") == (
      "cnn (fast, lr=0.1) [run2]")
  plt.close("all")


@pytest.mark.parametrize("width", [2, 2.5, 3.5])
def test_wrapped_titles_break_between_words(width):
  """textwrap broke "equal-width" after its hyphen (at each width here)."""
  fig, ax = plt.subplots(figsize=(width, 2))
  compare.fit_title(fig, ax.set_title(
      "well-calibrated equal-width bins, run-to-run and step-by-step"))
  assert "\n" in ax.get_title() and "-\n" not in ax.get_title()
  plt.close(fig)


# One bad folder, diverged runs, a program's time, what the README names, the
# default output folder (issue tracker).


def _edit_metrics(folder, edit):
  """Rewrites a run folder's metrics.jsonl rows through `edit(rows)`."""
  path = os.path.join(folder, metrics_log.METRICS_FILE)
  rows = edit(metrics_log.read_metrics(path))
  files.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _bad_folders(tmp_path):
  """(a run folder whose config.json is not JSON, one without config.json)."""
  broken = _write_run(tmp_path / "broken", [0.9], seed=1)
  files.write_text(os.path.join(broken, record_lib.CONFIG_FILE), '{"config": ')
  lost = _write_run(tmp_path / "lost", [0.9], seed=2)
  os.remove(os.path.join(lost, record_lib.CONFIG_FILE))
  return broken, lost


@pytest.mark.parametrize("given", ["each", "their folder"])
def test_a_folder_that_cannot_be_read_is_skipped_with_one_line(tmp_path, given,
                                                               capsys):
  """A run folder with invalid JSON in config.json, or none, stopped the
  whole comparison (advising --workdir, which compare.py has not): it is
  skipped with one line on stderr naming it and why, and the others are
  compared."""
  good = _write_run(tmp_path / "good", [0.95], seed=0)
  broken, lost = _bad_folders(tmp_path)
  paths = [good, broken, lost] if given == "each" else [str(tmp_path)]
  logs = []
  [g] = compare.compare(paths, str(tmp_path / "out"), log=logs.append)
  assert g["seeds"] == [0] and g["runs"][0]["run"] == good
  warnings = capsys.readouterr().err.splitlines()
  assert warnings == [
      f"skipping {broken}: it has a config.json that is not valid JSON at "
      "line 1; restore it from a copy, or compare other run folders",
      f"skipping {lost}: it has no config.json, so its settings are unknown; "
      "restore it from a copy, or compare other run folders"], warnings
  assert not any("--workdir" in w for w in warnings)
  assert logs[-1].startswith("compared 1 runs in 1 configurations")


def test_a_final_row_missing_a_number_is_skipped_with_one_line(tmp_path,
                                                              capsys):
  """A final row without wall_time_s (another program's, or edited) ended
  the comparison in a KeyError."""
  good = _write_run(tmp_path / "good", [0.95], seed=0)
  edited = _write_run(tmp_path / "edited", [0.9], seed=1)
  _edit_metrics(edited, lambda rows: rows[:-1] + [
      {k: v for k, v in rows[-1].items() if k != "wall_time_s"}])
  [g] = compare.compare([good, edited], str(tmp_path / "out"),
                        log=lambda _: None)
  assert [r["run"] for r in g["runs"]] == [good]
  assert capsys.readouterr().err.splitlines() == [
      f"skipping {edited}: it has a final metrics row without wall_time_s; "
      "compare run folders launch.py wrote"]


def test_with_no_usable_run_left_it_says_so_in_one_line(tmp_path, capsys):
  broken, lost = _bad_folders(tmp_path)
  with pytest.raises(UserError) as e:
    compare.main([broken, lost, "--out", str(tmp_path / "out")])
  said = str(e.value)
  assert "\n" not in said and "--workdir" not in said
  assert said == (
      f"no run to compare: {broken} has a config.json that is not valid JSON "
      "at line 1 (restore it from a copy, or compare other run folders); "
      f"{lost} has no config.json, so its settings are unknown (restore it "
      "from a copy, or compare other run folders)")
  assert capsys.readouterr().err == ""  # The one line is the error's.
  with pytest.raises(UserError, match=r"^\S+broken has a config.json that is "
                     r"not valid JSON at line 1; restore it from a copy"):
    compare.main([broken, "--out", str(tmp_path / "out")])
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_command_line_skips_a_bad_folder_and_stops_with_none_left(tmp_path):
  script = os.path.join(ROOT, "experiments", "compare.py")
  good = _write_run(tmp_path / "good", [0.95], seed=0)
  broken, lost = _bad_folders(tmp_path)
  run = lambda *paths: subprocess.run(
      [sys.executable, script, *paths, f"--out={tmp_path / 'out'}",
       "--no-analyses"], capture_output=True, text=True, check=False)
  result = run(good, broken)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == [
      f"skipping {broken}: it has a config.json that is not valid JSON at "
      "line 1; restore it from a copy, or compare other run folders"]
  result = run(broken, lost)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  [line] = result.stderr.splitlines()
  assert line.startswith("error: no run to compare: ") and broken in line


def _diverged_runs(tmp_path):
  """(healthy runs, [(diverged run or program, why)]): a run whose last row
  says it diverged (after an earlier final row), one whose test loss is
  null, one whose last training loss is NaN, and a program of three of
  which member 1 diverged."""
  healthy = [_write_run(tmp_path / "good", [0.90], seed=0)]
  stale = _write_run(tmp_path / "stale", [0.99], seed=1)
  _edit_metrics(stale, lambda rows: rows + [
      {"epoch": 3, "step": 30, "diverged": True,
       "message": "training diverged: the loss became non-finite"}])
  null = _write_run(tmp_path / "null", [0.98], seed=2)
  _edit_metrics(null, lambda rows: rows[:-1] + [{**rows[-1],
                                                 "test_loss": None}])
  nan = _write_run(tmp_path / "nan", [0.97], seed=3)
  _edit_metrics(nan, lambda rows: [rows[0], {**rows[1], "train_loss": np.nan},
                                   rows[2]])
  program = _write_run(tmp_path / "program", [0.91, 0.99, 0.93], seed=10)

  def member_1_diverged(rows):
    for r in rows:
      r["members"][1].update(diverged=True, train_loss=None, test_loss=None)
    return rows
  _edit_metrics(program, lambda rows: member_1_diverged(rows[:2]) + [
      {**rows[2], "members": [rows[2]["members"][0],
                              {**rows[2]["members"][1], "diverged": True,
                               "test_loss": None},
                              rows[2]["members"][2]]}])
  healthy.append(program)
  return healthy, [(stale, "diverged at epoch 3"),
                   (null, "test loss not finite"),
                   (nan, "training loss not finite at epoch 2"),
                   (f"member 1 of {program}", "diverged")]


def test_a_diverged_run_is_named_and_left_out_of_the_means(tmp_path):
  """A diverged run (its last row says so, or a loss is not finite) was
  listed and averaged as if healthy: it is named in comparison.md, marked in
  runs.csv, and out of the table's means and the plots."""
  healthy, gone = _diverged_runs(tmp_path)
  out, logs = str(tmp_path / "out"), []
  [g] = compare.compare([str(tmp_path)], out, log=logs.append)
  assert g["seeds"] == [0, 10, 12]
  assert g["test_accuracy"] == [0.90, 0.91, 0.93]
  [row] = _csv(os.path.join(out, "comparison.csv"))
  assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(
      [0.90, 0.91, 0.93]), abs=1e-6)
  assert row["runs"] == "3"
  text = open(os.path.join(out, "comparison.md")).read()
  assert "Diverged, left out of the table, means and plots" in text
  for name, why in gone:
    assert f"{name} ({why})" in text, (name, text)
    assert f"{name} {why}: named in comparison.md, left out of the means " \
        "and plots" in logs
  runs = _csv(os.path.join(out, "runs.csv"))
  marked = {(r["run"], r["member"]): r["diverged"] for r in runs}
  assert marked[(healthy[0], "")] == "" and marked[(healthy[1], "0")] == ""
  assert marked[(healthy[1], "1")] == "diverged"
  assert {marked[(run, "")] for run, _ in gone[:3]} == {
      why for _, why in gone[:3]}
  assert logs[-1].startswith("compared 3 runs in 1 configurations")
  # The figures show only the healthy runs' accuracy.
  [label] = [t.get_text() for t in compare.accuracy_figure([g]).axes[0].texts]
  assert label.startswith("91.33%") and label.endswith("(n=3)"), label
  plt.close("all")


def test_every_folder_not_compared_is_named_with_why_in_the_tables(tmp_path):
  """A run that diverged before its final row, an unfinished one and an
  unreadable folder were only a console line: comparison.md and runs.csv
  name each, and why."""
  good = _write_run(tmp_path / "good", [0.95], seed=0)
  broken, _ = _bad_folders(tmp_path)
  early = _write_run(tmp_path / "early", [0.9], seed=3)
  _edit_metrics(early, lambda rows: rows[:1] + [
      {"epoch": 2, "step": 20, "diverged": True, "message": "diverged"}])
  cut = _write_run(tmp_path / "cut", [0.9], seed=4)
  _edit_metrics(cut, lambda rows: rows[:1])
  out = str(tmp_path / "out")
  compare.compare([good, broken, early, cut], out, log=lambda _: None,
                  warn=lambda _: None)
  why = {broken: "has a config.json that is not valid JSON at line 1",
         early: "has no final test metrics: it diverged at step 20, epoch 2",
         cut: "has no final test metrics: it is unfinished"}
  text = open(os.path.join(out, "comparison.md")).read()
  for folder, what in why.items():
    assert f"{folder} ({what})" in text, text
  runs = {r["run"]: r["skipped"] for r in _csv(os.path.join(out, "runs.csv"))}
  assert runs == {good: "", **why}


def test_an_epoch_resumed_mid_way_is_left_out_of_the_medians(tmp_path):
  """The first epoch after a resume mid-epoch timed only its rest (2 s of
  10): compare.py's medians held it."""
  run = _write_run(tmp_path / "run", [0.9], epoch_time=10.0)
  _edit_metrics(run, lambda rows: [rows[0], {
      **rows[1], "epoch_time_s": 2.0, "examples_per_s": 99.0,
      "partial_steps": 2}, rows[2]])
  summary = compare.summarize(run)
  assert summary["epoch_time_s"] == 10.0 and summary["examples_per_s"] == 5000.0


def test_with_every_run_diverged_nothing_is_compared(tmp_path):
  _, gone = _diverged_runs(tmp_path)
  with pytest.raises(UserError) as e:
    compare.compare([run for run, _ in gone[:3]], str(tmp_path / "out"),
                    log=lambda _: None)
  assert str(e.value) == "no run to compare: " + "; ".join(
      f"{run} {why}" for run, why in gone[:3])


def _table_row(text, label):
  """comparison.md's table row of `label`, as {column: cell}."""
  lines = text.splitlines()
  header = next(l for l in lines if l.startswith("| model |"))
  cells = lambda l: [c.strip() for c in l.strip("|").split("|")]
  row = next(l for l in lines if l.startswith(f"| {label} |"))
  return dict(zip(cells(header), cells(row)))


def test_members_of_one_program_show_its_time_once_without_spread(tmp_path):
  """Two members of one --num_seeds=2 program of 66 s (less data) read
  "33.0 ± 0.0": each its share, a spread of one measurement. The table
  gives the program's time once, with its members, and no ±."""
  program = _write_run(tmp_path / "two", [0.91, 0.92], seed=0, wall=70.0,
                       data=4.0, epoch_time=8.0)
  out = str(tmp_path / "out")
  compare.compare([program], out, log=lambda _: None)
  text = open(os.path.join(out, "comparison.md")).read()
  row = _table_row(text, "linear")
  assert row["time s"] == "66.0 (2 members, one program)", row
  assert row["epoch time s"] == "8.00 (2 members, one program)", row
  assert row["test accuracy"] == "91.50% ± 0.71%"  # Two seeds: a spread.
  assert "the table gives that program's time once" in text
  [csv_row] = _csv(os.path.join(out, "comparison.csv"))
  assert csv_row["wall_time_s_std"] == ""  # No spread of one measurement.
  assert float(csv_row["wall_time_s_mean"]) == pytest.approx(33.0)


def test_a_program_and_standalone_runs_each_show_their_own_time(tmp_path):
  """Standalone runs are separate measurements (mean ± std); a program
  among them is shown once, at its whole time."""
  program = _write_run(tmp_path / "four", [0.91, 0.92, 0.93, 0.94], seed=10,
                       wall=40.0, data=4.0)
  one = _write_run(tmp_path / "one", [0.95], seed=0, wall=12.0, data=2.0)
  two = _write_run(tmp_path / "two", [0.95], seed=1, wall=16.0, data=2.0)
  out = str(tmp_path / "out")
  compare.compare([program, one, two], out, log=lambda _: None)
  row = _table_row(open(os.path.join(out, "comparison.md")).read(), "linear")
  assert row["time s"] == "12.0 ± 2.8; 36.0 (4 members, one program)", row
  [csv_row] = _csv(os.path.join(out, "comparison.csv"))
  assert csv_row["wall_time_s_std"] == ""
  compare.compare([one, two], out, log=lambda _: None)
  [csv_row] = _csv(os.path.join(out, "comparison.csv"))
  assert float(csv_row["wall_time_s_std"]) == pytest.approx(2.83, abs=0.01)
  assert _table_row(open(os.path.join(out, "comparison.md")).read(),
                    "linear")["time s"] == "12.0 ± 2.8"


def _readme_outputs():
  """The file names README's paragraph on compare.py gives in backquotes."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  start = text.index("To compare models")
  paragraph = text[start:text.find("\n## ", start)]
  return set(re.findall(r"`([\w-]+\.(?:md|csv|png))`", paragraph))


ANALYSIS_FILES = {"analysis.md", "analysis_reading.png",
                  "analysis_robustness.png", "analysis_reliability.png",
                  "analysis_pca.png", "analysis_attributions.png"}


def test_the_readme_names_the_files_a_comparison_writes(tmp_path):
  """README said "comparison.md and .csv ... and three plots"; a comparison
  writes runs.csv, eight figures and analysis.md too."""
  out = tmp_path / "out"
  compare.compare([_write_run(tmp_path / "run", [0.9])], str(out),
                  log=lambda _: None)
  written = set(os.listdir(out))
  named = _readme_outputs()
  assert written == named - ANALYSIS_FILES, (written, named)
  assert ANALYSIS_FILES <= named, named
  # What the analyses write is analysis_page's figures and page.
  assert {compare.ANALYSIS_PAGE} | {
      name for _, name, *_ in compare.ANALYSIS_FIGURES} == ANALYSIS_FILES


def _analysed_run(folder, model, **settings):
  """A finished run folder of an untrained `model` with its analysis/."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import synthetic_digits  # pylint: disable=g-import-not-at-top
  from mnist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mnist_jax.results import analysis  # pylint: disable=g-import-not-at-top
  from mnist_jax.results import run as run_lib  # pylint: disable=g-import-not-at-top
  _write_run(folder, [0.5], model=model, **settings)
  config = models.get_config(model, "seed", **settings)
  module = models.get(model).stock(config)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
      jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 28, 28, 1))))
  run = run_lib.Run(config, module, variables, 0, seed_variables=jax.tree.map(
      lambda v: np.asarray(v)[None], variables))
  images, labels = synthetic_digits(60, seed=1)
  analysis.write(str(folder), run, pipeline.Split(images[20:], labels[20:]),
                 pipeline.Split(images[:20], labels[:20]), maps=False)
  return str(folder)


@pytest.mark.slow
def test_a_comparison_with_analyses_writes_what_the_readme_names(tmp_path):
  runs = [_analysed_run(tmp_path / "rnn", "rnn", hidden=4),
          _analysed_run(tmp_path / "linear", "linear")]
  out = tmp_path / "out"
  compare.compare(runs, str(out), log=lambda _: None, analyses=True)
  assert set(os.listdir(out)) == _readme_outputs()
  plt.close("all")


def test_the_default_output_folder_is_git_ignored():
  default = compare._parser().get_default("out")  # pylint: disable=protected-access
  if shutil.which("git") is None or not os.path.exists(
      os.path.join(ROOT, ".git")):
    pytest.skip("not a git checkout")
  result = subprocess.run(
      ["git", "check-ignore", "--no-index", "-q",
       os.path.join(default, "comparison.md")], cwd=ROOT, check=False)
  assert result.returncode == 0, f"{default}/ is not in .gitignore"

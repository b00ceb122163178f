"""experiments/compare.py: configurations (settings and code) compared over
their seeds, each run counted once, what is left out named with why and
what to do, the figures true to the definitions beside them."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments import compare
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(folder, accuracies, *, seed=0, wall=40.0, data=4.0,
               epoch_time=10.0, examples_per_s=5000.0, model="linear",
               code=None, finished=True, final_row=True, **overrides):
  """A finished run folder as launch.py leaves it: one member per accuracy
  (several: a --num_seeds run of seeds seed, seed+1, ...); `code`: its
  record's environment.code."""
  m = len(accuracies)
  config = models.get_config(model, "seed", seed=seed, num_seeds=m,
                             workdir=str(folder), **{
                                 "epochs": 2, "val_fraction": 0.1,
                                 **overrides})
  os.makedirs(folder)
  files.write_json(os.path.join(folder, record_lib.CONFIG_FILE), {
      "config": config.to_dict(), "environment": {"code": code or {}},
      "finished": finished})
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
  final = {"test_accuracy": accuracies[0], "test_loss": 0.3, "test_ece": 0.01,
           "test_examples": 200, "epochs_run": 2, "compile_time_s": 2.0,
           "num_params": 7850, "wall_time_s": wall - data,
           "data_ready_s": data}
  if m > 1:
    final["members"] = [dict(e, test_accuracy=a, test_loss=0.3, test_ece=0.01)
                        for e, a in zip(entries(), accuracies)]
    final["chosen"] = {"index": 0, "seed": seed, "values": {}}
    final["test_accuracy_mean"] = float(np.mean(accuracies))
    final["test_accuracy_std"] = float(np.std(accuracies, ddof=1))
  rows += [final] if final_row else []
  files.write_text(os.path.join(folder, metrics_log.METRICS_FILE),
                   "".join(json.dumps(r) + "\n" for r in rows))
  return str(folder)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _compare(paths, out, **kwargs):
  logs = []
  groups = compare.compare(paths, str(out), log=logs.append,
                           warn=logs.append, **kwargs)
  return groups, logs, open(os.path.join(out, "comparison.md")).read()


@pytest.mark.slow
def test_trains_then_compares_each_configuration_over_its_seeds(
    tiny_run, prepared, tmp_path):
  mnist_dir, data_dir = prepared
  root = str(tmp_path / "runs")
  logs = []
  train = lambda seeds: compare.train_runs(
      ["linear"], seeds, root, preset="seed", log=logs.append,
      stream=io.StringIO(), epochs=1, mnist_dir=mnist_dir, data_dir=data_dir)
  folders = train([0, 1])
  assert [os.path.basename(f) for f in folders] == ["linear-seed0",
                                                    "linear-seed1"]
  assert train([0]) == folders[:1] and logs[-1].endswith("finished before, "
                                                         "reused")
  groups, _, table = _compare([root, tiny_run], tmp_path / "out")
  assert [g["label"] for g in groups] == ["linear (seed, --epochs=1)",
                                          "mlp (seed, --epochs=1, "
                                          "--batch_size=32, --mlp_hidden=16)"]
  [linear, _] = _csv(tmp_path / "out" / "comparison.csv")
  accuracies = [metrics_log.final_metrics(d)["test_accuracy"] for d in folders]
  assert (linear["runs"], linear["seeds"]) == ("2", "0 1")
  assert float(linear["test_accuracy_mean"]) == pytest.approx(
      np.mean(accuracies), abs=1e-6)
  assert "| linear (seed, --epochs=1) | seed | 2 | 7,850 |" in table
  for name in compare.PLOTS:
    with Image.open(tmp_path / "out" / name) as image:
      assert image.format == "PNG", name


def test_a_label_names_every_setting_off_its_preset(tmp_path):
  a = _write_run(tmp_path / "a", [0.9])
  b = _write_run(tmp_path / "b", [0.9], learning_rate=0.01, seed=1)
  groups = compare.group(compare.read_runs([a, b])[0])
  assert [g["label"] for g in groups] == [
      "linear (seed, --val_fraction=0.1, --epochs=2)",
      "linear (seed, --val_fraction=0.1, --epochs=2, --learning_rate=0.01)"]


def test_runs_of_other_code_are_other_configurations(tmp_path):
  """A run of edited code and one of the clean code, settings and seed
  alike: two configurations, the edited one labelled by the core's files
  that differ; a record of no code (an older run) is no difference."""
  clean = {"commit": "a" * 40, "dirty": False, "edited": [],
           "files": {"models/dense.py": "1", "optim.py": "2"}}
  edited = {**clean, "dirty": True, "edited": ["mnist_jax/models/dense.py"],
            "files": {"models/dense.py": "3", "optim.py": "2"}}
  runs = [_write_run(tmp_path / name, [0.9], code=code)
          for name, code in (("clean", clean), ("edited", edited))]
  groups, _, table = _compare(runs, tmp_path / "out")
  assert [g["label"] for g in groups] == [
      "linear (seed, --val_fraction=0.1, --epochs=2)",
      "linear (seed, --val_fraction=0.1, --epochs=2, code edited: "
      "models/dense.py)"]
  assert "code edited: models/dense.py" in table
  old = _write_run(tmp_path / "old", [0.9], seed=3)
  assert len(compare.group(compare.read_runs(runs[:1] + [old])[0])) == 1
  assert code_lib.summary(edited) == (
      "code: aaaaaaa, edited: mnist_jax/models/dense.py")


def test_members_of_a_program_share_its_time(tmp_path):
  """Four seeds trained in one program of 36 s are charged 9 s each; the
  table gives the program's time once, without a spread."""
  program = _write_run(tmp_path / "four", [0.91, 0.92, 0.93, 0.94], seed=10,
                       wall=40.0, data=4.0, epoch_time=8.0,
                       examples_per_s=1000.0)
  single = _write_run(tmp_path / "one", [0.95], seed=0, wall=12.0, data=2.0)
  [g], _, table = _compare([program, single], tmp_path / "out")
  by_seed = dict(zip(g["seeds"], g["runs"]))
  assert g["seeds"] == [0, 10, 11, 12, 13]
  assert by_seed[0]["wall_time_s"] == pytest.approx(10.0)
  for seed in (10, 11, 12, 13):
    assert by_seed[seed]["wall_time_s"] == pytest.approx(36.0 / 4)
    assert by_seed[seed]["examples_per_s"] == pytest.approx(4 * 1000.0)
  [row] = _csv(tmp_path / "out" / "comparison.csv")
  assert float(row["wall_time_s_mean"]) == pytest.approx(46.0 / 5, abs=0.01)
  assert row["wall_time_s_std"] == ""
  runs = {r["seed"]: r for r in _csv(tmp_path / "out" / "runs.csv")}
  assert runs["11"]["program_members"] == "4" and runs["11"]["member"] == "1"
  assert "10.0; 36.0 (4 members, one program)" in table
  assert f"{program} (4 members)" in table


def test_a_run_trained_twice_is_counted_once(tmp_path):
  """A run folder with the configuration and seed of a program's member is
  one run: the folder is kept (its times are its own); both the log and
  comparison.md say which was left out."""
  program = _write_run(tmp_path / "three", [0.90, 0.91, 0.92], seed=0)
  twin = _write_run(tmp_path / "seed1", [0.97], seed=1, wall=7.0, data=1.0)
  # The program's folder reached twice: given, and inside tmp_path.
  [g], logs, table = _compare([program, twin, str(tmp_path)],
                              tmp_path / "out")
  assert g["seeds"] == [0, 1, 2]
  kept = g["runs"][1]
  assert kept["run"] == twin and g["test_accuracy"][1] == 0.97
  assert (f"counting one run once: member 1 of {program} has the "
          f"configuration and seed of {twin}; left out for it") in logs
  assert f"member 1 of {program} left out for {twin}" in table


def test_the_spread_is_the_sample_standard_deviation_as_in_report_md(
    tmp_path):
  accuracies = [0.90, 0.92, 0.97]
  program = _write_run(tmp_path / "three", accuracies)
  _, _, table = _compare([program], tmp_path / "out")
  [row] = _csv(tmp_path / "out" / "comparison.csv")
  sample = float(np.std(accuracies, ddof=1))
  assert float(row["test_accuracy_std"]) == pytest.approx(sample, abs=1e-6)
  assert float(row["test_accuracy_std"]) == pytest.approx(
      metrics_log.final_metrics(program)["test_accuracy_std"], abs=1e-6)
  assert f"{100 * np.mean(accuracies):.2f}% ± {100 * sample:.2f}%" in table


def test_what_configurations_differ_in_is_said_above_the_table(tmp_path):
  """Epochs and seeds that differ, and a ranking on one seed, with the
  spread of the configurations of several seeds."""
  short = _write_run(tmp_path / "short", [0.90], epochs=2)
  long = _write_run(tmp_path / "long", [0.95, 0.96, 0.94], epochs=12)
  _, _, table = _compare([short, long], tmp_path / "out")
  above = table.split("| model |")[0]
  assert ("differ in epochs: linear (seed, --val_fraction=0.1, --epochs=2) 2, "
          "linear (seed, --val_fraction=0.1, --epochs=12) 12") in above
  assert "differ in seeds:" in above
  assert ("Ranked on one seed: linear (seed, --val_fraction=0.1, "
          "--epochs=2). The seed-to-seed spread of the others is 1.00 points"
          ) in above


def test_the_figures_say_what_their_axes_measure(tmp_path):
  """The time axis is the README's wall time; the accuracy axis starts a
  point below the lowest run; a time whisker never reaches zero."""
  runs = [_write_run(tmp_path / "a", [0.95, 0.97], wall=5.0, data=1.0),
          _write_run(tmp_path / "b", [0.9], wall=40.0, mlp_hidden=(8,),
                     model="mlp")]
  groups = compare.group(compare.read_runs(runs)[0])
  fig = compare.accuracy_time_figure(groups)
  ax = fig.axes[0]
  assert ax.get_xlabel().startswith("Wall time (s; data ready to test "
                                    "metrics, as the README's)")
  assert "report" not in ax.get_xlabel()
  assert ax.get_ylim() == (89.0, 100.0) and ax.get_xlim()[0] > 0
  fig = compare.accuracy_figure(groups)
  assert fig.axes[0].get_xlim() == (89.0, 100.0)


def _skipped(tmp_path):
  """Folders not compared, each its way: {folder: what comparison.md says}."""
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text("{not json")
  cut = _write_run(tmp_path / "cut", [0.9], final_row=False)
  running = _write_run(tmp_path / "running", [0.9], final_row=False,
                       finished=False)
  return {str(bad): "has a config.json that is not valid JSON at line 1",
          cut: f"finished, but metrics.jsonl lost its final row (a write cut "
               f"short); python launch.py --mode=report --workdir={cut} "
               "writes it again",
          running: f"is unfinished; python launch.py --mode=report "
                   f"--workdir={running} completes a run trained to its end"}


def test_each_folder_not_compared_is_named_with_why_and_what_to_do(tmp_path):
  skipped = _skipped(tmp_path)
  good = _write_run(tmp_path / "good", [0.9])
  _, logs, table = _compare([*skipped, good], tmp_path / "out")
  for said in skipped.values():
    assert said in table and any(said in line for line in logs), said
  runs = _csv(tmp_path / "out" / "runs.csv")
  assert sorted(r["run"] for r in runs if r["skipped"]) == sorted(skipped)


def test_with_no_run_left_the_command_says_so_in_one_line(tmp_path):
  skipped = _skipped(tmp_path)
  with pytest.raises(UserError, match="^no run to compare: "):
    compare.compare(list(skipped), str(tmp_path / "out"), log=print,
                    warn=print)
  proc = subprocess.run(
      [sys.executable, "experiments/compare.py", str(tmp_path / "nope")],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
  assert proc.returncode == 1 and proc.stderr == (
      f"error: {tmp_path / 'nope'} does not exist; pass run folders written "
      "by launch.py\n")


def test_a_diverged_run_is_named_and_left_out_of_the_means(tmp_path):
  good = _write_run(tmp_path / "good", [0.9])
  bad = _write_run(tmp_path / "bad", [float("nan")], seed=1)
  rows = [json.loads(l) for l in open(os.path.join(bad, "metrics.jsonl"))]
  rows[-1]["test_loss"] = None
  files.write_text(os.path.join(bad, "metrics.jsonl"),
                   "".join(json.dumps(r) + "\n" for r in rows))
  [g], logs, table = _compare([good, bad], tmp_path / "out")
  assert g["seeds"] == [0]
  assert f"{bad} (test loss not finite)" in table
  assert any(line.startswith(f"{bad} test loss not finite") for line in logs)


def test_the_readme_names_the_files_a_comparison_writes(tmp_path):
  run = _write_run(tmp_path / "a", [0.9])
  out = tmp_path / "out"
  _compare([run], out)
  written = set(os.listdir(out))
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  for name in written:
    assert name in readme, name
  assert written == {*compare.PLOTS, "comparison.md", "comparison.csv",
                     "runs.csv"}
  assert "comparison/" in open(os.path.join(ROOT, ".gitignore")).read()

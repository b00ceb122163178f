"""experiments/compare.py: configurations (settings and code) compared over
their seeds, each run counted once, what is left out named with why."""

import csv
import io
import os

import numpy as np
from PIL import Image
import pytest

import launch_helpers as lh
from experiments import compare
from experiments import compare_figures
from experiments import tables
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import metrics_log


def _write_run(folder, accuracies, *, seed=0, wall=36.0, model="linear",
               code=None, finished=True, final_row=True, test_loss=0.3,
               **overrides):
  """A finished run folder of `wall` seconds, a member per accuracy (seeds
  seed, seed+1, ...); `code`: its record's environment.code."""
  m = len(accuracies)
  config = models.get_config(model, "seed", seed=seed, num_seeds=m,
                             workdir=str(folder), **{
                                 "epochs": 2, "val_fraction": 0.1,
                                 **overrides})
  member = lambda i, **k: {"index": i, "seed": seed + i, "values": {}, **k}
  rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e,
           "epoch_time_s": 8.0, "examples_per_s": 1000.0, **({"members": [
               member(i, train_loss=1 / e, val_loss=1 / e) for i in range(m)]}
                                                          if m > 1 else {})}
          for e in (1, 2)] + [{
              "test_accuracy": accuracies[0], "test_loss": test_loss,
              "test_ece": 0.01, "epochs_run": 2, "compile_time_s": 2.0,
              "num_params": 7850, "wall_time_s": wall, "data_ready_s": 1.0,
              **({"members": [member(i, test_accuracy=a, test_loss=test_loss,
                                     test_ece=0.01)
                              for i, a in enumerate(accuracies)]}
                 if m > 1 else {})}][:final_row]
  return lh.run_folder(folder, config, rows=rows, finished=finished,
                       environment={"code": code or {}})


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
  root, logs = str(tmp_path / "runs"), []
  train = lambda seeds: compare.train_runs(
      ["linear"], seeds, root, preset="seed", log=logs.append,
      stream=io.StringIO(), epochs=1, **prepared.settings)
  folders = train([0, 1])
  assert folders == [f"{root}/linear-seed0", f"{root}/linear-seed1"]
  assert train([0]) == folders[:1] and logs[-1].endswith("reused")
  _, _, table = _compare([root, tiny_run], tmp_path / "out")
  [linear, _] = _csv(tmp_path / "out" / "comparison.csv")
  accuracies = [metrics_log.final_metrics(d)["test_accuracy"] for d in folders]
  assert (linear["runs"], linear["seeds"]) == ("2", "0 1")
  assert float(linear["test_accuracy_mean"]) == pytest.approx(
      np.mean(accuracies), abs=1e-6)
  assert "| linear (seed, --epochs=1) | seed | 2 | 7,850 |" in table
  for name in compare_figures.PLOTS:
    with Image.open(tmp_path / "out" / name) as image:
      assert image.format == "PNG", name


def test_a_label_names_the_settings_off_its_preset_and_the_code_edited(
    tmp_path):
  """Other settings or edited code make other configurations, labelled by
  what differs; a record of no code (an older run) is no difference."""
  clean = {"dirty": False, "files": {"models/dense.py": "1", "optim.py": "2"}}
  edited = {"dirty": True, "files": {"models/dense.py": "3", "optim.py": "2"}}
  runs = [_write_run(tmp_path / "clean", [0.9], code=clean),
          _write_run(tmp_path / "edited", [0.9], code=edited),
          _write_run(tmp_path / "old", [0.9], seed=3),
          _write_run(tmp_path / "lr", [0.9], learning_rate=0.01, seed=1)]
  groups, _, table = _compare(runs, tmp_path / "out")
  base = "linear (seed, --val_fraction=0.1, --epochs=2"
  assert [(g["label"], g["seeds"]) for g in groups] == [
      (f"{base})", [0, 3]), (f"{base}, code edited: models/dense.py)", [0]),
      (f"{base}, --learning_rate=0.01)", [1])]
  assert f"| {base}, code edited: models/dense.py) |" in table


def test_members_are_runs_charged_their_share_of_the_program(tmp_path):
  """Four seeds of one 36 s program: 9 s each, the program's time once with
  no spread; the metrics' spread is the sample std (n-1, as report.md); the
  tables and figures are written, nothing else."""
  accuracies = [0.95, 0.91, 0.92, 0.93, 0.94]
  program = _write_run(tmp_path / "four", accuracies[1:], seed=10)
  single = _write_run(tmp_path / "one", accuracies[:1], wall=10.0)
  [g], _, table = _compare([program, single], tmp_path / "out")
  assert g["seeds"] == [0, 10, 11, 12, 13]
  assert g["wall_time_s"] == pytest.approx([10.0] + [36.0 / 4] * 4)
  assert g["examples_per_s"][1:] == pytest.approx([4 * 1000.0] * 4)
  [row] = _csv(tmp_path / "out" / "comparison.csv")
  assert float(row["wall_time_s_mean"]) == pytest.approx(46.0 / 5, abs=0.01)
  assert row["wall_time_s_std"] == ""
  sample = float(np.std(accuracies, ddof=1))
  assert float(row["test_accuracy_std"]) == pytest.approx(sample, abs=1e-6)
  assert f"{100 * np.mean(accuracies):.2f}% ± {100 * sample:.2f}%" in table
  runs = {r["seed"]: r for r in _csv(tmp_path / "out" / "runs.csv")}
  assert (runs["11"]["program_members"], runs["11"]["member"]) == ("4", "1")
  assert "10.0; 36.0 (4 members, one program)" in table
  assert f"{program} (4 members)" in table
  assert set(os.listdir(tmp_path / "out")) == {
      *compare_figures.PLOTS, "comparison.md", "comparison.csv", "runs.csv"}


def test_a_run_trained_twice_is_counted_once(tmp_path):
  """A folder of a program member's configuration and seed is kept (its
  times are its own); the log and comparison.md say which was left out."""
  program = _write_run(tmp_path / "three", [0.90, 0.91, 0.92], seed=0)
  twin = _write_run(tmp_path / "seed1", [0.97], seed=1, wall=7.0)
  # The program's folder reached twice: given, and inside tmp_path.
  [g], logs, table = _compare([program, twin, str(tmp_path)],
                              tmp_path / "out")
  assert g["seeds"] == [0, 1, 2]
  assert g["runs"][1]["run"] == twin and g["test_accuracy"][1] == 0.97
  assert (f"counting one run once: member 1 of {program} has the "
          f"configuration and seed of {twin}; left out for it") in logs
  assert f"member 1 of {program} left out for {twin}" in table


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
  assert ("One seed each: linear (seed, --val_fraction=0.1, --epochs=2) (a "
          "ranking of these rests on one seed). The seed-to-seed spread of "
          "the others is 1.00 points") in above


def test_the_figures_say_what_their_axes_measure(tmp_path):
  """The time axis is the README's wall time; the accuracy axis starts a
  point below the lowest run; a time whisker never reaches zero."""
  runs = [_write_run(tmp_path / "a", [0.95], wall=1.0),
          _write_run(tmp_path / "a1", [0.97], wall=20.0, seed=1),
          _write_run(tmp_path / "b", [0.9], wall=40.0, mlp_hidden=(8,),
                     model="mlp")]
  groups = compare.group(compare.read_runs(runs)[0])
  ax = compare_figures.accuracy_time_figure(groups).axes[0]
  assert ax.get_xlabel().startswith("Wall time (s; data ready to test "
                                    "metrics, as the README's)")
  assert ax.get_ylim() == (89.0, 100.0)
  assert min(x for c in ax.collections for seg in c.get_segments()
             for x, _ in seg) > 0  # The whisker of 1 s and 20 s.
  assert compare_figures.accuracy_figure(groups).axes[0].get_xlim() == (89.0, 100.0)


def test_each_run_left_out_is_named_with_why_and_what_to_do(tmp_path):
  """Named in comparison.md, runs.csv and the log, left out of the means;
  with none left, the refusal's one line names each."""
  (bad := tmp_path / "bad").mkdir()
  (bad / "config.json").write_text("{not json")
  cut = _write_run(tmp_path / "cut", [0.9], final_row=False)
  running = _write_run(tmp_path / "running", [0.9], final_row=False,
                       finished=False)
  nan = _write_run(tmp_path / "nan", [0.9], seed=1, test_loss=None)
  left_out = {  # {folder: what comparison.md says}
      str(bad): "has a config.json that is not valid JSON at line 1",
      cut: f"finished, but metrics.jsonl lost its final row (a write cut "
           f"short); python launch.py --mode=report --workdir={cut} "
           "writes it again",
      running: f"is unfinished; python launch.py --mode=report "
               f"--workdir={running} completes a run trained to its end",
      nan: "test loss not finite"}
  good = _write_run(tmp_path / "good", [0.9])
  [g], logs, table = _compare([*left_out, good], tmp_path / "out")
  assert g["runs"][0]["run"] == good and len(g["runs"]) == 1
  for said in left_out.values():
    assert said in table and any(said in line for line in logs), said
  runs = {r["run"]: r for r in _csv(tmp_path / "out" / "runs.csv")}
  *skipped, nan = left_out
  assert sorted(r for r in runs if runs[r]["skipped"]) == sorted(skipped)
  assert runs[nan]["diverged"] == "test loss not finite"
  with pytest.raises(UserError, match="^no run to compare: ") as e:
    compare.compare(list(left_out), str(tmp_path / "none"))
  assert all(f"{folder} {said.split(';')[0]}" in str(e.value)
             for folder, said in left_out.items())
  with pytest.raises(UserError, match="^none of the runs has finished; "):
    compare.compare([], str(tmp_path / "none"))


@pytest.mark.parametrize("argv,said", [
    (["{tmp}/nope"], "{tmp}/nope does not exist; pass run folders written "
     "by launch.py"),
    (["{tmp}"], "{tmp} is neither a run folder nor a folder of run folders "
     "(no config.json); pass run folders"),
    ([], "pass run folders to compare, or --train=MODEL[,MODEL...]"),
    (["--vary=dropout=0/0.2"], "--vary needs --train=MODEL: it trains a run "
     "per value")])
def test_a_refusal_is_one_line_and_exits_1(argv, said, tmp_path):
  """As the script runs its main (tables.script): sys.exit's one line."""
  with pytest.raises(SystemExit) as e:
    tables.script(lambda: compare.main([a.format(tmp=tmp_path) for a in argv]))
  assert e.value.code == f"error: {said.format(tmp=tmp_path)}"

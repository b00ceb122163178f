"""launch.py end to end on tiny synthetic data, and its one-line errors."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch_helpers import snapshot as lh_snapshot
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.rundir import cli
from mnist_jax.rundir import dry_run
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, cwd=ROOT, env=None):
  env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                        cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=env)


@pytest.mark.slow
def test_launch_trains_and_writes_the_run_folder(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  work = tmp_path / "run"
  # At the tuned 2e-3 two epochs of so small a GRU learn next to nothing.
  # The analyses' own end-to-end test: test_analysis.py.
  result = launch("--noanalyses", "--model=gru", "--hidden=16", "--epochs=2",
                  "--batch_size=32",
                  "--learning_rate=1e-2", f"--mnist_dir={mnist_dir}",
                  f"--data_dir={data_dir}", f"--workdir={work}")
  assert result.returncode == 0, result.stderr
  assert "test accuracy" in result.stdout
  for name in ("config.json", "metrics.jsonl", "learning_curves.png"):
    assert (work / name).stat().st_size > 0, name
  assert os.listdir(work / "checkpoints")
  record = json.loads((work / "config.json").read_text())
  assert record["config"]["model"] == "gru" and record["config"]["hidden"] == 16
  assert record["environment"]["packages"]["jax"]
  assert record["environment"]["devices"]
  assert record["environment"]["cpu"].endswith(  # The results table names it.
      f", {len(os.sched_getaffinity(0))} cores")
  # Asked of XLA for GPUs (a CPU ignores it), and recorded.
  assert "--xla_gpu_deterministic_ops=true" in (
      record["environment"]["env"]["XLA_FLAGS"].split())
  # The CPU runs the GRU as written, its nn.RNN by the fused recurrence,
  # under --impl=auto, once checked against the stock layers, and says so.
  implementation = record["environment"]["implementation"]
  assert implementation["impl"] == "auto"
  assert implementation["module"] == "mnist_jax/models/recurrent.py's Recurrent"
  assert implementation["layers"]["passed"]
  assert implementation["layers"]["lowered"] == {
      "gru_0": "mnist_jax/models/kernels/fused_rnn.py"}
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  epoch_keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "epoch_time_s", "examples_per_s"}
  assert [r["epoch"] for r in rows[:-1]] == [1, 2]
  assert all(epoch_keys <= set(r) for r in rows[:-1])
  assert {"test_loss", "test_accuracy", "wall_time_s"} <= set(rows[-1])
  assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0


def test_batch_larger_than_training_set(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  result = launch("--model=linear", "--batch_size=100000", f"--data_dir={data_dir}",
                  f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert "larger than the 600 training examples" in result.stderr
  assert not (tmp_path / "run").exists()


# The line a command ends with, and --dry_run.


LINEAR = registry.get_config("linear", epochs=4)


def _unfinished_run(path, config=LINEAR, started="2026-01-01T10:00:00+0000"):
  os.makedirs(path)
  files.write_json(os.path.join(path, "config.json"),
                   {"config": config.to_dict(), "started": started})
  metrics_log.MetricsLog(path).write({"epoch": 1})


def test_ctrl_c_outside_the_loop_says_to_run_the_same_command(tmp_path):
  again = "run the same command again"
  assert cli.Command().interrupted(again) == (
      "interrupted (Ctrl-C); run the same command again to start")
  work = str(tmp_path / "linear-a")
  command = cli.Command(LINEAR, work)
  assert command.interrupted(again).endswith(" to start")
  _unfinished_run(work)
  assert command.interrupted(again).endswith(" to resume")
  command.signum = signal.SIGTERM
  assert command.interrupted(again).startswith("interrupted (SIGTERM); ")


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_the_machine_stopped_before_its_first_checkpoint_is_removed(
    tmp_path, existed):
  """Nothing half-written passes for a run: a folder that was there before
  stays (empty); a run this command did not begin is kept."""
  work = str(tmp_path / "run")
  _unfinished_run(work)
  cli.Command(LINEAR, work, fresh=False).discard_unstarted()
  assert os.listdir(work)
  cli.Command(LINEAR, work, fresh=True, existed=existed).discard_unstarted()
  assert (os.listdir(work) == [] if existed else not os.path.exists(work))


def test_dry_run_marks_where_each_setting_comes_from():
  config = registry.get_config("cnn", "best", epochs=3, learning_rate=3e-3)
  given = {"model": "cnn", "preset": "best", "epochs": 3,
           "learning_rate": 3e-3}
  origin = lambda config, given, name: re.search(
      rf"^    --{name}=\S* +(.*)$", "\n".join(
          dry_run.settings_lines(config, given)), re.M).group(1)
  assert origin(config, given, "epochs") == "flag; preset: 18"
  assert origin(config, given, "model") == origin(config, given,
                                                  "preset") == "flag"
  # The preset's value, given again:
  assert origin(config, given, "learning_rate") == "flag"
  assert origin(config, given, "cnn_dense") == "preset"
  assert origin(config, given, "momentum") == "default"
  assert origin(config, given, "workdir") == "chosen (see run folder)"
  assert origin(config.replace(momentum=0.5), {"momentum"},
                "momentum") == "flag; default: 0.9"
  text = dry_run.text(config.replace(workdir="W"), {*given, "workdir"},
                      "W, a new run folder", (None,))
  assert "validation: none: it trains on all 60,000 training images" in text
  assert "--sweep is refused" in text
  assert ("model:      cnn (best preset): Conv32 3x3 SAME, max-pool, Conv64 "
          "3x3 SAME, max-pool, Conv128 3x3 SAME, max-pool, Dense256, Dense10, "
          "dropout 0.25; 390,410 parameters") in text
  assert re.search(r"    --epochs=3 +flag; preset: 18\n", text)


@pytest.mark.parametrize("model,preset", [("mlp", "seed"), ("cnn", "best"),
                                          ("lstm", "permuted")])
def test_dry_run_counts_the_parameters_init_makes(model, preset):
  config = registry.get_config(model, preset)
  module = registry.get(model).stock(config)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          np.zeros((1, 28, 28, 1), np.uint8))["params"]
  assert resources.parameter_count(config) == sum(
      p.size for p in jax.tree.leaves(params))


def test_dry_run_says_which_split_is_held_out():
  config = registry.get_config("mlp")  # The last 10%.
  n = datasets.get("mnist").train_size
  split = pipeline.split({"train_images": np.zeros(n), "train_labels": np.zeros(n),
                          "test_images": np.zeros(1), "test_labels": np.zeros(1)},
                         config.val_fraction)
  assert dry_run.validation_line(config, 2) == (
      f"the last 10% of the training split ({len(split.val):,} of its 60,000 "
      f"images; it trains on the other {len(split.train):,}), for the "
      "validation curve and the member choice")


def test_dry_run_writes_nothing_and_names_the_run_it_would_resume(tmp_path):
  work = tmp_path / "runs" / "mlp-a"
  _unfinished_run(str(work), registry.get_config("mlp", epochs=3))
  before = lh_snapshot(tmp_path)
  result = launch("--epochs=3", "--dry_run", cwd=tmp_path,
                  env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("dry run: nothing is trained")
  assert (f"run folder: resuming {os.path.join('runs', 'mlp-a')}, the newest "
          "unfinished run of these settings under runs/ (1 of 3 epochs "
          "logged)") in result.stdout
  assert ("model:      mlp (tuned preset): 784-1024-1024-10, ReLU, dropout "
          "0.3") in result.stdout
  assert lh_snapshot(tmp_path) == before


def test_output_into_a_closed_pipe_stops_without_a_traceback(tmp_path):
  """`python launch.py ... | head -1`: the reader is gone before the
  output is flushed; the command stops as a pipe's writer does (SIGPIPE's
  status), with nothing on stderr."""
  read, write = os.pipe()
  os.close(read)  # As head, having read its line.
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--dry_run",
       f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, stdout=write,
      stderr=subprocess.PIPE, text=True, timeout=300, check=False)
  os.close(write)
  assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
  assert proc.stderr == ""


def test_a_home_folder_in_a_path_flag_is_expanded(tmp_path):
  """A shell leaves `~` alone after `--workdir=`: launch.py expands it, as
  it does in --data_dir and --mnist_dir, instead of making a folder `~`."""
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  cwd.mkdir()
  result = launch("--model=linear", "--workdir=~/runs/lin", "--data_dir=~/tfds",
                  "--dry_run", cwd=cwd, env={**os.environ, "HOME": str(home)})
  assert result.returncode == 0, result.stderr
  assert f"run folder: {home / 'runs' / 'lin'}, a new run folder" in (
      result.stdout)
  assert f"--data_dir={home / 'tfds'}" in result.stdout
  assert os.listdir(cwd) == []


def test_dry_run_refuses_bad_flags_as_a_run_does(tmp_path):
  result = launch("--model=cnn", "--preset=best", "--sweep=learning_rate=1,2",
                  "--dry_run", cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: --sweep chooses its member by validation accuracy, and "
      "--val_fraction=0 holds out none; pass e.g. --val_fraction=0.1"]
  assert os.listdir(tmp_path) == []

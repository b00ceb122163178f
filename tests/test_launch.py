"""launch.py end to end on tiny synthetic data, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, cwd=ROOT, env=None):
  env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                        cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=env)


def test_launch_trains_and_writes_the_run_folder(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  work = tmp_path / "run"
  result = launch("--model=gru", "--hidden=16", "--epochs=2", "--batch_size=32",
                  f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
                  f"--workdir={work}")
  assert result.returncode == 0, result.stderr
  assert "test accuracy" in result.stdout
  for name in ("config.json", "metrics.jsonl", "learning_curves.png"):
    assert (work / name).stat().st_size > 0, name
  assert os.listdir(work / "checkpoints")
  record = json.loads((work / "config.json").read_text())
  assert record["config"]["model"] == "gru" and record["config"]["hidden"] == 16
  assert record["environment"]["packages"]["jax"]
  assert record["environment"]["devices"]
  # The CPU runs the GRU's fused kernel under --impl=auto, and says so.
  assert record["environment"]["implementation"] == {
      "impl": "auto", "resolved": "fast",
      "module": "mnist_jax.kernels.fused_rnn.Recurrent"}
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  epoch_keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "epoch_time_s", "examples_per_s"}
  assert [r["epoch"] for r in rows[:-1]] == [1, 2]
  assert all(epoch_keys <= set(r) for r in rows[:-1])
  assert {"test_loss", "test_accuracy", "wall_time_s"} <= set(rows[-1])
  assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0


@pytest.mark.slow  # test_bad_input.py checks the same in the fast suite
@pytest.mark.parametrize("args,message", [
    (["--model=transformer"], "unknown model 'transformer'"),
    (["--preset=huge"], "has no preset 'huge'"),
    (["--epochs=0"], "--epochs must be positive"),
    (["--batch_size=-3"], "--batch_size must be positive"),
    (["--learning_rate=0"], "--learning_rate must be positive"),
    (["--val_fraction=1.0"], "--val_fraction must be in [0, 1)"),
    (["--optimizer=adagrad"], "--optimizer must be one of"),
    (["--epochs=many"], "error: "),
    (["--no_such_flag=1"], "no_such_flag"),
    (["stray"], "unexpected arguments"),
])
def test_bad_flags_give_one_line_and_write_nothing(tmp_path, args, message):
  result = launch(*args, f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert message in lines[0]
  assert "Traceback" not in result.stderr + result.stdout
  assert os.listdir(tmp_path) == []


def test_batch_larger_than_training_set(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  result = launch("--model=linear", "--batch_size=100000", f"--data_dir={data_dir}",
                  f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert "larger than the 600 training examples" in result.stderr
  assert not (tmp_path / "run").exists()

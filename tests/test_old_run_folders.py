"""Run folders of the previous mnist_jax (checkpoint format 2) still work.

tests/data/format2 (see its README) holds run folders the previous version
wrote, trained on conftest.py's synthetic `idx_dir` data: an MLP, a CNN, an
LSTM, an MLP sweep of two rates x two seeds, and an MLP stopped by SIGTERM
after 2 of its 30 epochs. With this version, each reports the test metrics its
own run recorded (metrics.jsonl's final row), predicts, loads through the
Python API, and the unfinished one resumes to the end with the command its
report prints; a damaged copy is called damaged in one line. Every test works
on copies: the folders under tests/data are never written.

The fast tests evaluate with the stock layers (--impl=stock): the start-up
check of the CNN's and LSTM's CPU kernels takes tens of seconds. The slow
ones run launch.py as a user would, with --impl=auto.
"""

import io
import json
import os
import shutil

from PIL import Image
from PIL import ImageDraw
import numpy as np
import pytest

import launch_helpers as lh
import mnist_jax
from mnist_jax.results import run as results
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import folder
from mnist_jax.rundir import run

DATA = os.path.join(lh.ROOT, "tests", "data", "format2")
FINISHED = ("mlp", "cnn", "lstm", "mlp_sweep")
NAMES = (*FINISHED, "mlp_unfinished")


@pytest.fixture(scope="module")
def old(tmp_path_factory):
  """A copy of tests/data/format2: its folder."""
  root = str(tmp_path_factory.mktemp("format2"))
  for name in NAMES:
    shutil.copytree(os.path.join(DATA, name), os.path.join(root, name))
  return root


@pytest.fixture(scope="module")
def data(prepared):
  """Where the synthetic data is (the folders' data paths were cleared)."""
  mnist_dir, data_dir = prepared
  return {"mnist_dir": mnist_dir, "data_dir": data_dir}


STOCK = {"impl": "stock"}


@pytest.fixture(scope="module")
def test_split(old, data):
  return mnist_jax.load_data(folder.read_config(os.path.join(old, "mlp")),
                             **data).test


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
  """A PNG of a black 1 on white paper."""
  path = str(tmp_path_factory.mktemp("images") / "one.png")
  picture = Image.new("L", (56, 56), 255)
  ImageDraw.Draw(picture).line([(28, 8), (28, 48)], fill=0, width=6)
  picture.save(path)
  return path


def _final(workdir):
  return folder.final_metrics(workdir)


def _checkpoints(workdir):
  return lh.snapshot(os.path.join(workdir, "checkpoints"))


def _flip_array_byte(workdir):
  """Flips a byte in the middle of the largest array data file of the
  latest checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(os.listdir(directory), key=int)
  data_dir = os.path.join(directory, step, "state", "ocdbt.process_0", "d")
  path = max((os.path.join(data_dir, f) for f in os.listdir(data_dir)),
             key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x5A]))
  return os.path.join(directory, step)


def test_the_folders_are_of_the_previous_format():
  for name in NAMES:
    with open(os.path.join(DATA, name, "checkpoints", "32" if name != "cnn"
                           else "36", "meta", "metadata")) as f:
      assert json.load(f)["format"] == 2, name
  assert checkpoints.FORMAT == 3


@pytest.mark.parametrize("name", [FINISHED[0], *(
    pytest.param(n, marks=pytest.mark.slow) for n in FINISHED[1:])])
def test_report_reproduces_the_recorded_test_metrics(old, data, name, capsys):
  """--mode=report (run.rewrite_report, as launch.py calls it) evaluates the
  old checkpoint to the test accuracy and loss its run recorded, and leaves
  the checkpoints as they were."""
  workdir = os.path.join(old, name)
  final = _final(workdir)
  before = _checkpoints(workdir)
  result = run.rewrite_report(workdir, **data, **STOCK)
  out = capsys.readouterr().out
  assert result["accuracy"] == final["test_accuracy"], out
  assert abs(result["loss"] - final["test_loss"]) <= 1e-6, out
  assert f"test accuracy {100 * final['test_accuracy']:.2f}%" in out
  assert "note:" not in out  # The finished run's own checkpoint.
  assert os.path.getsize(os.path.join(workdir, "report.md")) > 0
  assert _checkpoints(workdir) == before
  assert _final(workdir) == final  # metrics.jsonl is kept as it was.


def test_report_on_the_unfinished_run_says_how_to_train_it_on(old, data,
                                                              capsys):
  workdir = os.path.join(old, "mlp_unfinished")
  assert _final(workdir) is None
  run.rewrite_report(workdir, **data, **STOCK)
  out = capsys.readouterr().out
  assert f"note: {workdir} is unfinished (epoch 2 of 30)" in out
  command = lh.printed_command(out, "to train it on, run: ")
  assert command.endswith(f"--workdir={workdir}")
  assert "--overwrite" not in command and "--epochs=30" in command


@pytest.mark.parametrize("name", NAMES)
def test_load_run_gives_the_recorded_model(old, test_split, name):
  workdir = os.path.join(old, name)
  loaded = mnist_jax.load_run(workdir, **STOCK)
  assert loaded.epoch == 2 and loaded.config.model == name.split("_")[0]
  metrics = loaded.evaluate(test_split.images, test_split.labels)
  final = _final(workdir)
  if final is None:  # Unfinished: its report's numbers (the same checkpoint).
    final = _final(os.path.join(old, "mlp"))
  assert metrics["accuracy"] == final["test_accuracy"]
  assert abs(metrics["loss"] - final["test_loss"]) <= 1e-6
  assert loaded.predict(test_split.images[:5]).shape == (5,)


def test_load_run_of_the_sweep_is_its_chosen_member_and_seeds(old, test_split):
  workdir = os.path.join(old, "mlp_sweep")
  final = _final(workdir)
  loaded = mnist_jax.load_run(workdir, **STOCK)
  assert loaded.member == final["chosen"]["index"] == 3
  assert loaded.seeds == (2, 3)  # learning_rate=0.003's two seeds.
  assert loaded.seed_logits(test_split.images).shape == (
      2, len(test_split.labels), 10)
  ensemble = loaded.evaluate(test_split.images, test_split.labels,
                             ensemble=True)
  assert ensemble["accuracy"] == final["ensemble_test_accuracy"]
  assert abs(ensemble["loss"] - final["ensemble_test_loss"]) <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_predict_works(old, digit, name):
  workdir = os.path.join(old, name)
  out, err = io.StringIO(), io.StringIO()
  assert results.print_predictions(workdir, [digit], as_json=True, out=out,
                                   err=err, **STOCK) == 0, err.getvalue()
  [record] = [json.loads(line) for line in out.getvalue().splitlines()]
  expected = mnist_jax.load_run(workdir, **STOCK).probabilities(
      mnist_jax.load_image(digit))
  np.testing.assert_allclose(record["probabilities"], expected, atol=1e-6)
  assert record["digit"] == int(np.argmax(expected))
  assert ("is unfinished" in err.getvalue()) == (name == "mlp_unfinished")


def test_a_damaged_copy_is_called_damaged_in_one_line(old, data, tmp_path):
  workdir = str(tmp_path / "mlp")
  shutil.copytree(os.path.join(old, "mlp"), workdir)
  step = _flip_array_byte(workdir)
  for attempt in (lambda: mnist_jax.load_run(workdir, **STOCK),
                  lambda: run.rewrite_report(workdir, **data, **STOCK)):
    with pytest.raises(checkpoints.CheckpointError) as e:
      attempt()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"the checkpoint {step} is damaged or truncated "
                              "(its arrays do not match the checksum saved "
                              "with them)"), message


@pytest.mark.slow
def test_the_unfinished_run_resumes_with_the_command_its_report_prints(
    data, tmp_path):
  """launch.py --mode=report prints the command that trains it on; with the
  data's flags (its paths were cleared), that command resumes the old
  checkpoint to the end of its 30 epochs, keeping its 2 logged epochs."""
  workdir = str(tmp_path / "mlp_unfinished")
  shutil.copytree(os.path.join(DATA, "mlp_unfinished"), workdir)
  logged = lh.metrics(workdir)
  flags = [f"--{k}={v}" for k, v in data.items()]
  rc, out, err = lh.run(["--mode=report", f"--workdir={workdir}", *flags])
  assert rc == 0, err
  command = lh.printed_command(out, "to train it on, run: ")
  rc, out, err = lh.follow(f"{command} {' '.join(flags)}", timeout=300)
  assert rc == 0, err
  assert f"resuming {workdir} at step 32 (epoch 3, step 0 of 16)" in out, out
  assert "its checkpoint is of an older mnist_jax" in out
  rows = lh.metrics(workdir)
  assert rows[:2] == logged
  assert [r.get("epoch") for r in rows[:-1]] == list(range(1, 31))
  assert rows[-1]["epochs_run"] == 30 and "test_accuracy" in rows[-1]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["finished"]
  _, meta = lh.restore_latest(workdir)
  assert meta["format"] == checkpoints.FORMAT and meta["epoch"] == 30


@pytest.mark.slow
def test_launch_reports_predicts_and_refuses_a_damaged_copy(data, digit,
                                                             tmp_path):
  """The same through launch.py: report (the CNN's, through its checked CPU
  kernel) and predict exit 0; a damaged copy is one line, exit 1, nothing
  written."""
  flags = [f"--{k}={v}" for k, v in data.items()]
  for name in ("cnn", "mlp"):
    workdir = str(tmp_path / name)
    shutil.copytree(os.path.join(DATA, name), workdir)
    final = _final(workdir)
    rc, out, err = lh.run(["--mode=report", f"--workdir={workdir}", *flags],
                          timeout=300)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith(  # After what it was doing.
        f"test accuracy {100 * final['test_accuracy']:.2f}% (loss "
        f"{final['test_loss']:.4f}, 200 examples, checkpoint of epoch 2)"), out
  rc, out, err = lh.run(["--mode=predict", f"--workdir={workdir}",
                         f"--image={digit}"])
  assert rc == 0, err
  assert out.startswith(f"{digit}: ") and not err.strip(), (out, err)
  damaged = str(tmp_path / "damaged")
  shutil.copytree(os.path.join(DATA, "mlp"), damaged)
  _flip_array_byte(damaged)
  before = lh.snapshot(damaged)
  for mode in ("report", "predict"):
    rc, out, err = lh.run([f"--mode={mode}", f"--workdir={damaged}",
                           f"--image={digit}", *flags])
    assert rc == 1, (out, err)
    [line] = err.strip().splitlines()
    assert line.startswith("error: the checkpoint ") and (
        "is damaged or truncated" in line), line
    assert lh.snapshot(damaged) == before

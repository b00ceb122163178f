"""The loop (training/loop.py): --target_accuracy stops once validation
accuracy reaches it (test accuracy never decides, so without a validation
split it is refused); console progress, escape codes only on a terminal."""

import io

import numpy as np
import pytest

from conftest import steps_only, train_core
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.training import loop
from parallel_worker import Recorder, dataset


def _config(**overrides):
  values = dict(mlp_hidden=(16,), dropout=0.0, batch_size=64, chunk_steps=3,
                learning_rate=3e-3, val_fraction=0.1, epochs=20,
                target_accuracy=0.3)
  return models.get_config("mlp", "seed", **{**values, **overrides})


def test_stops_once_validation_accuracy_reaches_it():
  """(Without a validation split it is refused: test_refusals.py.)"""
  hooks = Recorder()
  _, final = train_core(_config(), dataset(), hooks)
  epochs = [r["epoch"] for r in hooks.rows]
  assert final["epochs_run"] == epochs[-1] < 20
  assert epochs == list(range(1, epochs[-1] + 1))
  assert hooks.rows[-1]["val_accuracy"] >= 0.3
  assert all(r["val_accuracy"] < 0.3 for r in hooks.rows[:-1])
  assert hooks.lasts == [False] * (len(epochs) - 1) + [True]  # Saved there.
  assert final["time_to_target_s"] == hooks.rows[-1]["elapsed_s"]
  reached = [m for m in hooks.messages if m.startswith("reached")]
  assert len(reached) == 1 and reached[0].startswith(
      f"reached validation accuracy "
      f"{100 * hooks.rows[-1]['val_accuracy']:.2f}% >= 30.00% after epoch "
      f"{epochs[-1]} in ")
  assert final["test_examples"] == 203


def test_test_accuracy_never_stops_a_run():
  """Validation labels shuffled, the test split learnable: the run trains
  every epoch, however high its test accuracy."""
  data = dataset()
  labels = np.random.default_rng(0).permutation(np.asarray(data.val.labels))
  labels = (labels + 1) % 10  # No validation example keeps its class.
  data = pipeline.Dataset(data.train, pipeline.Split(data.val.images, labels),
                          data.test, data.class_names)
  hooks = Recorder()
  _, final = train_core(_config(epochs=3, target_accuracy=0.5), data, hooks)
  assert [r["epoch"] for r in hooks.rows] == [1, 2, 3]
  assert final["epochs_run"] == 3 and final["test_accuracy"] > 0.5
  assert all(r["val_accuracy"] < 0.5 for r in hooks.rows)
  assert "time_to_target_s" not in final
  assert not any(m.startswith("reached") for m in hooks.messages)


# Console progress (loop.Hooks): one line per report in a log, and a line
# drawn in place on a terminal ended before what follows.

ROW = {"epoch": 1, "epoch_time_s": 2.0, "examples_per_s": 1000.0,
       "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4,
       "val_accuracy": 0.91}
EPOCH = ("epoch 1/2: train loss 0.5000 acc 90.00%, val loss 0.4000 acc "
         "91.00%; 2.0s, 1,000 examples/s")


class Terminal(io.StringIO):

  def isatty(self):
    return True


def _hooks(stream, progress_s=0.0):
  hooks = loop.Hooks()
  hooks.stream, hooks.epochs, hooks.PROGRESS_S = stream, 2, progress_s
  hooks.start(None, steps_only(10))
  return hooks


@pytest.mark.parametrize("stream,term", [
    (io.StringIO, "xterm"), (Terminal, "dumb"), (Terminal, "xterm")])
def test_progress_in_a_log_and_on_a_terminal(monkeypatch, stream, term):
  """A report, a message, the epoch's line (its leader), a message: plain lines
  in a log or a dumb terminal, PROGRESS_S apart; on a terminal drawn in place,
  each chunk, then replaced."""
  monkeypatch.setenv("TERM", term)
  quiet = _hooks(stream(), progress_s=60.0)
  for done in (0, 5):
    quiet.chunk(None, 1, done, None)
  assert bool(quiet.stream.getvalue()) == (stream is Terminal and term != "dumb")
  hooks = _hooks(stream())
  hooks.end_line()
  assert hooks.stream.getvalue() == ""  # Nothing drawn: nothing to end.
  for done in (0, 5):
    hooks.chunk(None, 1, done, None)
  hooks.message("a member diverged")
  leader = {"index": 1, "seed": 4, "values": {"learning_rate": 0.003}}
  hooks.epoch(None, dict(ROW, leader=leader), last=False)
  hooks.chunk(None, 2, 0, None)
  hooks.chunk(None, 2, 5, None)
  hooks.end_line()
  hooks.end_line()
  text = hooks.stream.getvalue()
  epoch = EPOCH.replace(";", " (leading: learning_rate=0.003, seed=4);", 1)
  if stream is io.StringIO or term == "dumb":
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("epoch 1/2: 5/10 steps, ")
    assert lines[0].endswith(" left") and lines[3].endswith(" left")
    assert lines[1:3] == ["a member diverged", epoch] and len(lines) == 4
  else:  # The message clears the progress line instead of joining it.
    assert " left\r\x1b[Ka member diverged\n" in text
    assert f"{epoch}\n" in text and text.endswith(" left\n")

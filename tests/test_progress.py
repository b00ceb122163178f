"""Console progress (loop.Hooks): escape codes only on a terminal, one line
per report in a log, and a line drawn in place ended before what follows."""

import io

import pytest

from conftest import steps_only
from mnist_jax.training import loop

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
  """An epoch with a report inside it, a message, the epoch's line (naming
  the leading member), a message: plain lines in a log or a dumb terminal;
  on a terminal the report is drawn in place, and a message or a stop's
  line replaces it or starts a line of its own."""
  monkeypatch.setenv("TERM", term)
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


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_no_report_inside_the_interval_in_a_log(stream, monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  hooks = _hooks(stream, progress_s=60.0)
  for done in (0, 1):
    hooks.chunk(None, 1, done, None)
  assert (stream.getvalue() == "") == (not isinstance(stream, Terminal))

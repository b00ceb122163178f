"""Console progress (loop.Hooks): escape codes only on a terminal, one line
per report in a log, and a line drawn in place ended before a stop's."""

import io

import pytest

from conftest import steps_only
from mnist_jax.training import loop

ROW = {"epoch": 1, "epoch_time_s": 2.0, "examples_per_s": 1000.0,
       "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4,
       "val_accuracy": 0.91}


class Terminal(io.StringIO):

  def isatty(self):
    return True


def _hooks(stream, epochs=2):
  hooks = loop.Hooks()
  hooks.stream, hooks.epochs, hooks.PROGRESS_S = stream, epochs, 0.0
  hooks.start(None, steps_only(10))
  return hooks


def _session(stream):
  """An epoch with a report inside it, a message, the epoch's line, a
  message."""
  hooks = _hooks(stream)
  for done in (0, 5):
    hooks.chunk(None, 1, done, None)
  hooks.message("a member diverged")
  hooks.epoch(None, ROW, last=False)
  hooks.message("done")
  return stream.getvalue()


def test_a_log_gets_plain_lines():
  text = _session(io.StringIO())
  assert "\x1b" not in text and "\r" not in text
  lines = text.splitlines()
  assert len(lines) == 4
  assert lines[0].startswith("epoch 1/2: 5/10 steps, ")
  assert lines[0].endswith(" left")
  assert lines[1] == "a member diverged" and lines[3] == "done"
  assert lines[2] == ("epoch 1/2: train loss 0.5000 acc 90.00%, val loss "
                      "0.4000 acc 91.00%; 2.0s, 1,000 examples/s")


def test_a_dumb_terminal_gets_plain_lines(monkeypatch):
  monkeypatch.setenv("TERM", "dumb")
  text = _session(Terminal())
  assert "\x1b" not in text and "\r" not in text


def test_a_terminal_message_replaces_the_line_drawn_in_place(monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  text = _session(Terminal())
  # The message clears the progress line instead of being appended to it.
  assert " left\r\x1b[Ka member diverged\n" in text
  assert text.endswith("examples/s\ndone\n")


def test_a_line_drawn_in_place_ends_before_what_follows(monkeypatch):
  """A stop's or an error's line starts a line of its own (not "...about 26s
  left)stopped by SIGINT")."""
  monkeypatch.setenv("TERM", "xterm")
  stream = Terminal()
  hooks = _hooks(stream)
  hooks.end_line()
  assert stream.getvalue() == ""  # Nothing drawn: nothing to end.
  for done in (0, 5):
    hooks.chunk(None, 1, done, None)
  assert not stream.getvalue().endswith("\n")
  hooks.end_line()
  hooks.end_line()
  assert stream.getvalue().endswith(" left\n")


def test_the_leading_member_is_named():
  stream = io.StringIO()
  leader = {"index": 1, "seed": 4, "values": {"learning_rate": 0.003}}
  _hooks(stream).epoch(None, dict(ROW, leader=leader), last=False)
  assert "(leading: learning_rate=0.003, seed=4);" in stream.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_no_report_inside_the_interval_in_a_log(stream, monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  hooks = _hooks(stream)
  hooks.PROGRESS_S = 60.0
  for done in (0, 1):
    hooks.chunk(None, 1, done, None)
  assert (stream.getvalue() == "") == (not isinstance(stream, Terminal))

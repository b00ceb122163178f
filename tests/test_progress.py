"""Console progress: escape codes only on a terminal, one line per report in a log."""

import io

import pytest

from mnist_jax.rundir import log

ROW = {"epoch_time_s": 2.0, "examples_per_s": 1000.0, "train_loss": 0.5,
       "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.91}


class Terminal(io.StringIO):

  def isatty(self):
    return True


def _session(stream):
  """An epoch with an in-place report, a message inside it, and its end."""
  p = log.Progress(2, stream=stream)
  p._last = -log.REPORT_EVERY_S  # pylint: disable=protected-access
  p.update(1, 5, 10, 1.0)
  p.message("a member diverged")
  p.epoch_done(1, ROW)
  p.message("done")
  return stream.getvalue()


def test_a_log_gets_plain_lines():
  text = _session(io.StringIO())
  assert "\x1b" not in text and "\r" not in text
  lines = text.splitlines()
  assert len(lines) == 4
  assert lines[0].startswith("epoch 1/2  50% (5/10 steps")
  assert lines[1] == "a member diverged" and lines[3] == "done"


def test_a_dumb_terminal_gets_plain_lines(monkeypatch):
  monkeypatch.setenv("TERM", "dumb")
  text = _session(Terminal())
  assert "\x1b" not in text and "\r" not in text


def test_a_terminal_message_replaces_the_line_drawn_in_place(monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  text = _session(Terminal())
  assert "\x1b[K" in text
  # The message clears the progress line instead of being appended to it.
  assert "left)\x1b[K\r\x1b[Ka member diverged\n" in text
  assert text.endswith("left\x1b[K\ndone\n")


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_no_report_inside_the_interval_in_a_log(stream):
  p = log.Progress(1, stream=stream)
  p.update(1, 1, 10, 0.1)
  assert (stream.getvalue() == "") == (not p.tty)

"""When a run stops besides finishing: a signal, or a run that did not learn.

Stopping cleanly (`StopRequest`): SIGTERM or Ctrl-C ask for a checkpoint, then
an exit. The run folder's hooks check `StopRequest.signum` between jitted
chunks (the safe points) and at each epoch's end, save a checkpoint there and
raise `Preempted`; launch.py prints how to resume and exits with 128 + the
signal number. A second Ctrl-C exits at once, even while the main thread is
blocked inside a long XLA call: a watcher thread reads the signal numbers the
C-level handler writes to a wake-up pipe (`signal.set_wakeup_fd`).

A run that stays finite may still not learn (a learning rate far too high
makes Adam's loss climb to 1e15 without overflowing): `learning_verdict`
tells, from the final row; launch.py then warns and exits with
NOT_LEARNED_EXIT_CODE.
"""

import math
import os
import signal
import sys
import threading
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np


# A run that did not learn.

NOT_LEARNED = "did_not_learn"  # The final row's key for learning_verdict's.
NOT_LEARNED_EXIT_CODE = 4
# A final training loss this many times a uniform guess's, log(classes), is
# one that grew by orders of magnitude: no model that learned ends there.
LOSS_GROWTH = 100
# Standard errors of the test accuracy of a constant answer, on a test set
# this size, by which a run must beat always answering the commonest class.
CHANCE_MARGIN_SE = 2


def learning_verdict(final: dict, last_row: Optional[dict],
                     test_labels) -> dict:
  """{NOT_LEARNED: {"cause", "message"}} for a run that did not learn, else {}.

  Args:
    final: the final metrics row (the chosen member's test_accuracy).
    last_row: the last epoch's row (its train_loss), None if none was run.
    test_labels: the test split's labels [N] int.

  cause "loss": the last epoch's training loss is LOSS_GROWTH times that of a
  uniform guess or more. cause "chance": the test accuracy is no better than
  answering the most frequent test class every time, beyond CHANCE_MARGIN_SE
  standard errors of a test set of this size (on MNIST's 10,000 images,
  11.35% + 0.63%).
  """
  labels = np.asarray(test_labels).astype(np.int64).reshape(-1)
  if not len(labels) or final.get("test_accuracy") is None:
    return {}
  counts = np.bincount(labels)
  classes = max(len(counts), 2)
  accuracy = final["test_accuracy"]
  train_loss = (last_row or {}).get("train_loss")
  uniform = math.log(classes)
  if train_loss is not None and math.isfinite(train_loss) and (
      train_loss >= LOSS_GROWTH * uniform):
    return {NOT_LEARNED: {"cause": "loss", "message": (
        f"the run did not learn: its training loss ended at {train_loss:.3g}, "
        f"over {LOSS_GROWTH} times a uniform guess's {uniform:.2f}, and test "
        f"accuracy is {100 * accuracy:.2f}%; lower --learning_rate or set "
        "--grad_clip")}}
  common = counts.max() / len(labels)
  floor = common + CHANCE_MARGIN_SE * math.sqrt(
      common * (1 - common) / len(labels))
  if accuracy <= floor:
    return {NOT_LEARNED: {"cause": "chance", "message": (
        f"the run did not learn: test accuracy {100 * accuracy:.2f}% is no "
        "better than always answering the most frequent class "
        f"({100 * common:.2f}% of the test images); check --learning_rate "
        "(too high or too low) and the data, or train longer")}}
  return {}


# Stop requests: SIGTERM and Ctrl-C.

SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_CODE = 128 + signal.SIGINT
# fn() -> the command that resumes this process's run (launch.py sets it), for
# the line a second Ctrl-C prints as it quits.
_resume_command: Optional[Callable[[], str]] = None


def set_resume_command(fn: Optional[Callable[[], str]]) -> None:
  global _resume_command
  _resume_command = fn


def _how_to_resume() -> str:
  """". To resume, run: ..." where the command is known, else ""."""
  try:
    return f". To resume, run: {_resume_command()}" if _resume_command else ""
  except Exception:  # pylint: disable=broad-except
    return ""  # Quitting now matters more than the hint.


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def agreed(signum: Optional[int]) -> Optional[int]:
  """The stop request of any process: all must stop at the same chunk.

  With one process, `signum` itself; with several, one small all-gather.
  """
  if jax.process_count() == 1:
    return signum
  votes = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(np.max(votes)) or None


def stopped_message(signum: int, step: int, epoch: int, epoch_step: int,
                    steps_per_epoch: int, directory: Optional[str]) -> str:
  """What a stopped run says, in one line.

  Args:
    signum: the signal that asked for the stop.
    step: the global step the run stopped at.
    epoch: the epoch it stopped in (1-based).
    epoch_step: the steps of that epoch done.
    steps_per_epoch: the run's steps per epoch.
    directory: the checkpoint folder, or None when nothing was saved (the
      run stopped before its first step).
  """
  name = signal_name(signum)
  if directory is None:
    return f"stopped by {name} before the first step; nothing to save"
  where = (f"at the end of epoch {epoch - 1} (step {step})" if not epoch_step
           else f"at step {step} (epoch {epoch}, step {epoch_step} of "
           f"{steps_per_epoch})")
  return f"stopped by {name} {where}; the checkpoint is in {directory}"


class Preempted(Exception):
  """A requested stop after its checkpoint is safely on disk."""

  def __init__(self, signum: int, message: str, workdir: str):
    super().__init__(message)
    self.signum = signum
    self.workdir = workdir

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopRequest:
  """While active, SIGTERM and SIGINT set `signum` instead of ending the process.

  Use as a context manager around the training loop. Outside the main thread
  (where signal handlers cannot be installed) it is inactive.
  """

  def __init__(self, stream=None, kept: Optional[Callable[[], str]] = None):
    """kept: fn() -> which checkpoint a run quit now goes back to, in words
    (checkpoints.Saver.on_disk), for the line a second Ctrl-C prints."""
    self.signum: Optional[int] = None
    self._stream = stream or sys.stderr
    self._kept = kept
    self._old = {}
    self._pipe = None
    self._old_fd = -1
    self._thread = None

  def _notice(self, text: str) -> None:
    try:
      self._stream.write(text + "\n")
      self._stream.flush()
    except (OSError, ValueError):
      pass

  def _watch(self, fd: int) -> None:
    while True:
      try:
        data = os.read(fd, 64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum not in SIGNALS:
          continue
        if self.signum is None:
          self.signum = signum
          hint = " (Ctrl-C again to quit at once, without saving)" if (
              signum == signal.SIGINT) else ""
          self._notice(f"{signal_name(signum)} received: saving a checkpoint at "
                       f"the next safe point, then stopping{hint}")
        elif signum == signal.SIGINT:
          self._notice("second Ctrl-C: quitting now without saving; "
                       f"{self._what_is_kept()}{_how_to_resume()}")
          try:
            sys.stdout.flush()
          except (OSError, ValueError):
            pass
          os._exit(FORCED_EXIT_CODE)  # pylint: disable=protected-access

  def _what_is_kept(self) -> str:
    if self._kept is None:
      return "the last complete checkpoint, if any, is kept"
    try:
      return self._kept()
    except Exception:  # pylint: disable=broad-except
      return "the last complete checkpoint, if any, is kept"

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is not threading.main_thread():
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    self._old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in SIGNALS:
      # The watcher thread does the work; this only stops the default action.
      self._old[signum] = signal.signal(signum, lambda *_: None)
    self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                    name="stop-request", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    if self._pipe is None:
      return
    for signum, handler in self._old.items():
      signal.signal(signum, handler)
    signal.set_wakeup_fd(self._old_fd)
    read_fd, write_fd = self._pipe
    os.close(write_fd)
    self._thread.join(timeout=5)
    os.close(read_fd)
    self._pipe = None

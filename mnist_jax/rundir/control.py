"""When a run stops besides finishing: a signal, or a run that did not learn.

SIGTERM or Ctrl-C ask for a stop (`StopRequest`): the hooks save at the next
safe point and raise `Preempted` (exit 128 + the signal). A second Ctrl-C
quits at once, even inside a long XLA call: a thread reads the signals from
a wake-up pipe (`signal.set_wakeup_fd`). A finite run may still not learn
(`learning_verdict`: exit NOT_LEARNED_EXIT_CODE).
"""

import contextlib
import math
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np

NOT_LEARNED = "did_not_learn"  # The final row's key for learning_verdict's.
NOT_LEARNED_EXIT_CODE = 4
LOSS_GROWTH = 100  # A final loss this many times a uniform guess's: diverged.
CHANCE_MARGIN_SE = 2  # Standard errors by which to beat the commonest class.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_CODE = 128 + signal.SIGINT
# fn() -> the command that resumes this run, for a second Ctrl-C's line.
_resume_command: Optional[Callable[[], str]] = None


def learning_verdict(final: dict, last_row: Optional[dict],
                     test_labels) -> dict:
  """{NOT_LEARNED: {"cause", "message"}} for a run that did not learn, else {}.

  test_labels: [N]. cause "loss": the last training loss is LOSS_GROWTH times
  a uniform guess's or more; "chance": test accuracy within CHANCE_MARGIN_SE
  standard errors of always answering the commonest test class.
  """
  labels = np.asarray(test_labels).astype(np.int64).reshape(-1)
  if not len(labels) or final.get("test_accuracy") is None:
    return {}
  counts = np.bincount(labels)
  accuracy = final["test_accuracy"]
  train_loss = (last_row or {}).get("train_loss")
  uniform = math.log(max(len(counts), 2))
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


def set_resume_command(fn: Optional[Callable[[], str]]) -> None:
  global _resume_command
  _resume_command = fn


def agreed(signum: Optional[int]) -> Optional[int]:
  """The stop request of any process (all stop at the same chunk)."""
  if jax.process_count() == 1:
    return signum
  votes = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(np.max(votes)) or None


def stopped_message(signum: int, step: int, epoch: int, epoch_step: int,
                    steps_per_epoch: int, directory: Optional[str]) -> str:
  """What a run stopped by `signum` at `step` (1-based `epoch`, `epoch_step`
  into it) says; `directory`: the checkpoint folder, None if none."""
  name = signal.Signals(signum).name
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
    self.signum, self.workdir = signum, workdir

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopRequest:
  """While active (in the main thread), SIGTERM and SIGINT set `signum`
  instead of ending the process. kept: fn() -> (which checkpoint is kept,
  what to do), in words, for a second Ctrl-C's line."""

  def __init__(self, stream=None,
               kept: Optional[Callable[[], Tuple[str, str]]] = None):
    self.signum: Optional[int] = None
    self._stream = stream or sys.stderr
    self._kept = kept
    self._pipe = None  # While active: the wake-up pipe (read fd, write fd).

  def _notice(self, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
      self._stream.write(text + "\n")
      self._stream.flush()

  def _watch(self, fd: int) -> None:
    with contextlib.suppress(OSError):  # The pipe is closed: the end.
      while data := os.read(fd, 64):
        for signum in data:
          if signum not in SIGNALS:
            continue
          if self.signum is None:
            self.signum = signum
            hint = " (Ctrl-C again to quit at once, without saving)" if (
                signum == signal.SIGINT) else ""
            self._notice(f"{signal.Signals(signum).name} received: saving a "
                         "checkpoint at the next safe point, then stopping"
                         f"{hint}")
          elif signum == signal.SIGINT:
            kept, verb = _call(self._kept, (
                "the last complete checkpoint, if any, is kept", "To resume"))
            resume = _call(_resume_command, "")
            self._notice("second Ctrl-C: quitting now without saving; "
                         f"{kept}{f'. {verb}, run: {resume}' if resume else ''}")
            with contextlib.suppress(OSError, ValueError):
              sys.stdout.flush()
            os._exit(FORCED_EXIT_CODE)  # pylint: disable=protected-access

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is not threading.main_thread():
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    self._old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._old = {s: signal.signal(s, lambda *_: None) for s in SIGNALS}
    self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                    name="stop-request", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Restores the signals' handlers; `signum` keeps any request."""
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


def _call(fn: Optional[Callable[[], Any]], otherwise: Any) -> Any:
  """fn(), or `otherwise` without fn or if it fails (quitting matters
  more)."""
  try:
    return fn() if fn else otherwise
  except Exception:  # pylint: disable=broad-except
    return otherwise

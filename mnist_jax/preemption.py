"""Stopping a run cleanly: SIGTERM or Ctrl-C ask for a checkpoint, then an exit.

Training checks `StopRequest.signum` between jitted chunks (the safe points),
saves a checkpoint there and raises `Preempted`; launch.py prints how to resume
and exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), the
status a shell reports for a process stopped by that signal.

A second Ctrl-C exits at once, even while the main thread is blocked inside a
long XLA call: Python runs signal handlers only in the main thread between
bytecodes, so a watcher thread reads the signal numbers the C-level handler
writes to a wake-up pipe (`signal.set_wakeup_fd`) and acts immediately.
"""

import os
import signal
import sys
import threading
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

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


def message(signum: int, step: int, epoch: int, epoch_step: int,
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
  return (f"stopped by {name} at step {step} (epoch {epoch}, step {epoch_step} "
          f"of {steps_per_epoch}); the checkpoint is in {directory}")


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
    (resume.Saver.on_disk), for the line a second Ctrl-C prints."""
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

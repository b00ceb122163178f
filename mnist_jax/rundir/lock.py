"""One writer per run folder: an exclusive flock on the folder, held by the
process training or reporting in it until it ends (even by kill -9).
LOCK_FILE names the holder for people; a refusal points there.
"""

import contextlib
import fcntl
import os
import socket
import sys
import tempfile
import time
from typing import Dict, Iterator, Optional, Tuple

from mnist_jax.errors import UserError
from mnist_jax import files

LOCK_FILE = ".lock"

# In `locking()`: real path -> (the fd holding its flock, or None where the
# file system has no locks; the outermost folder `claim` created, or None).
_HELD: Optional[Dict[str, Tuple[Optional[int], Optional[str]]]] = None


class InUse(UserError):
  """Another process holds the run folder (it is training or reporting)."""

  def __init__(self, workdir: str, mode: str = "train"):
    super().__init__(
        f"{workdir} is in use: another process holds its lock "
        f"({os.path.join(workdir, LOCK_FILE)} names it); wait for it to end, "
        + ("or pass another --workdir" if mode == "train" else
           "then run this again"))


def check_writable(workdir: str) -> None:
  """Refuses, before anything is written, a folder that cannot be written
  (probing it or its nearest existing parent: permission bits miss read-only
  file systems)."""
  target = os.path.abspath(workdir)
  while not os.path.exists(target):
    target = os.path.dirname(target)
  if not os.path.isdir(target):
    raise UserError(f"--workdir={workdir} cannot be a run folder: {target} is "
                    "a file, not a folder; pass a folder path")
  try:
    tempfile.TemporaryFile(dir=target).close()  # Creates and removes a file.
  except OSError as e:
    raise UserError(f"--workdir={workdir} is not writable ({target}: "
                    f"{e.strerror or e}); pass a folder you can write to"
                    ) from None


@contextlib.contextmanager
def locking() -> Iterator[Dict[str, tuple]]:
  """Within, the run folders this process `claim`s stay locked (elsewhere
  nothing is locked); on leaving, each lock ends and a folder its claim
  created goes if still empty. Yields {real path: lock} of those claimed."""
  global _HELD
  outer, _HELD = _HELD, {}
  held = _HELD
  try:
    yield held
  finally:
    _HELD = outer
    for folder in list(held):
      fd, created = held.pop(folder)
      with contextlib.suppress(OSError):
        os.remove(os.path.join(folder, LOCK_FILE))
      with contextlib.suppress(OSError):  # The run wrote something: it stays.
        while created:
          os.rmdir(folder)
          created = None if folder == created else created
          folder = os.path.dirname(folder)
      if fd is not None:
        os.close(fd)


def claim(workdir: str, mode: str = "train", create: bool = True) -> None:
  """In `locking()`, makes this process the one writer of `workdir`: creates
  it (if `create`), takes the flock and writes LOCK_FILE (`mode`: "train" or
  "report"). InUse if another holds it."""
  key = os.path.realpath(workdir)
  if _HELD is None or key in _HELD or not (create or os.path.isdir(key)):
    return
  created = None  # The outermost folder this claim makes, if any.
  if not os.path.isdir(key):
    check_writable(workdir)
    created = key
    while not os.path.exists(os.path.dirname(created)):
      created = os.path.dirname(created)
    os.makedirs(key, exist_ok=True)  # Made by another meanwhile: the lock
  fd = os.open(key, os.O_RDONLY)     # decides who removes it.
  held: Optional[int] = fd
  for attempt in range(5):  # `in_use` probes hold the lock for an instant.
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      break
    except BlockingIOError:
      time.sleep(0.1 * (attempt + 1))
    except OSError:  # No locks on this file system: the run goes unlocked.
      os.close(fd)
      held = None
      break
  else:
    os.close(fd)
    raise InUse(workdir, mode)
  _HELD[key] = (held, created)
  with contextlib.suppress(OSError):  # A read-only folder: no note.
    files.write_json(os.path.join(key, LOCK_FILE), {
        "pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
        "command": ["python", *sys.argv], "since": files.now()})


def in_use(workdir: str) -> bool:
  """Whether another process holds run folder `workdir` now."""
  if os.path.realpath(workdir) in (_HELD or {}):
    return False
  try:
    fd = os.open(workdir, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  except OSError:
    pass
  finally:
    os.close(fd)
  return False

"""What the machine can hold, and the one line said when it runs out: a full
disk, memory or a read-only folder reaches launch.py as an exception from
anywhere; `machine_error` says it, `lower_advice` says what makes a run fit.
"""

import errno
import math
import os
import re
from typing import Optional

import jax
import jax.numpy as jnp

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.errors import OutOfResources, UserError, first_line

_FULL = "no space left on the disk of {path}; free some space there"
# What each refusal of the system says: exit 5 for the first three.
OS_ERRORS = {
    errno.ENOSPC: _FULL, errno.EDQUOT: _FULL,
    errno.EFBIG: "{path} reached this process's file size limit (ulimit -f); "
                 "free some space there",
    errno.EROFS: "cannot write {path} ({reason}); make it writable",
    **dict.fromkeys((errno.EACCES, errno.EPERM), "cannot read or write {path} "
                    "({reason}); give this user access to it"),
    errno.EIO: "reading or writing {path} failed ({reason}); check that disk"}
# A full disk or a file past the size limit (exit 5), as libraries' errors say.
NO_SPACE_TEXT = {
    errno.ENOSPC: ("No space left on device", "os_error_code='28'"),
    errno.EDQUOT: ("Disk quota exceeded", "os_error_code='122'"),
    errno.EFBIG: ("File too large", "os_error_code='27'")}
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory allocating")
# In a job of several processes: a collective's error (Gloo, on CPUs) or the
# coordination service's, when another process of the job is gone.
PEER_LOST = ("closed by peer", "reset by peer", "heartbeat timeout", "Gloo ",
             "UNAVAILABLE: ")


def parameter_count(config: config_lib.Config) -> int:
  """Parameters of one member of `config`'s model, from shapes alone."""
  image = datasets.get(config.dataset).image_shape
  params = jax.eval_shape(models.get(config.model).stock(config).init,
                          jax.random.key(0), jnp.zeros((1, *image), jnp.uint8))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params["params"])
             if jnp.issubdtype(leaf.dtype, jnp.floating))


def lower_advice(config: Optional[config_lib.Config]) -> str:
  """"lower --batch_size, ...": the settings that make a run smaller (the
  model's own whole numbers size it, seeds apart)."""
  names = ["--batch_size", "--eval_batch_size"]
  if config is not None:
    if config.num_seeds > 1 or config.sweep:
      names.append("--num_seeds" if not config.sweep else
                   "--num_seeds or the --sweep values")
    names += [f"--{name}" for name, value in config.to_dict().items()
              if config_lib.SETTINGS[name].group == config_lib.MODEL
              and type(value) in (int, tuple) and not name.endswith("seed")]
  return "lower " + ", ".join(names)


def check_steps(config: config_lib.Config, steps_per_epoch: int) -> None:
  """Refuses a run of more steps than JAX's int32 step counter holds."""
  total = config.epochs * steps_per_epoch
  if total > config_lib.INT32_MAX:
    raise UserError(
        f"--epochs={config.epochs} of {steps_per_epoch} steps each is {total} "
        f"steps, past the 2**31 - 1 a run can count; pass at most --epochs="
        f"{config_lib.INT32_MAX // steps_per_epoch} or a larger --batch_size")


def _os_error(exc: BaseException) -> Optional[int]:
  """The errno of OS_ERRORS that `exc` carries, or names in its text (as
  tensorstore does of a full disk in orbax's errors); None for another."""
  if isinstance(exc, OSError) and exc.errno in OS_ERRORS:
    return exc.errno
  return next((code for code, texts in NO_SPACE_TEXT.items()
               if any(text in str(exc) for text in texts)), None)


def machine_error(exc: Optional[BaseException], where: Optional[str],
                  config: Optional[config_lib.Config] = None
                  ) -> Optional[UserError]:
  """The one-line error of a full disk, memory, a refused write or a lost peer
  found in `exc` or the exceptions it came from (OutOfResources: exit 5);
  None for any other (a bug keeps its traceback). where: the folder to name
  if the error names none; config: a training run's (its settings shrink it)."""
  seen = []
  while exc is not None and exc not in seen:
    seen.append(exc)
    code = _os_error(exc)
    if code is not None:
      path = getattr(exc, "filename", None) or where or "the run folder"
      kind = OutOfResources if code in NO_SPACE_TEXT else UserError
      return kind(OS_ERRORS[code].format(path=path, reason=os.strerror(code))
                  + ", then run the same command again")
    if isinstance(exc, MemoryError):
      memory = f"host memory ({first_line(exc, 160)})"
    elif any(text in str(exc) for text in OUT_OF_MEMORY):  # XLA's, any device.
      detail = re.sub(r"^[A-Z_]+: ", "", first_line(exc, 160))
      memory = f"memory on the {jax.default_backend().upper()} ({detail})"
    elif (jax.distributed.is_initialized() and
          any(text in str(exc) for text in PEER_LOST)):
      return UserError("another process of this job stopped (it crashed or "
                       f"was killed: {first_line(exc, 100)}); start every "
                       "process again with its same command (they resume)")
    else:
      exc = exc.__cause__ or exc.__context__
      continue
    return OutOfResources(f"out of {memory}; " + (
        f"{lower_advice(config)} (a new run), or run it on a machine with "
        "more memory" if config else "close what else uses that memory, or "
        "run it on a machine with more"))
  return None

"""What the machine can hold, and the one line said when it runs out: a full
disk, memory or a read-only folder reaches launch.py as an exception from
anywhere; `failure` names it, `lower_advice` says what makes a run fit.
"""

import dataclasses
import errno
import math
import re
from typing import List, Optional

import jax
import jax.numpy as jnp

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.errors import OutOfResources, UserError, first_line
from mnist_jax import files

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
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


def size_flags(config: config_lib.Config) -> List[str]:
  """The Model settings whose growth changes the parameter count."""
  base = parameter_count(config)
  found = []
  for name in config.to_dict():
    declared = models.setting(name, config.model)
    if (declared.group != config_lib.MODEL
        or type(declared.default) not in (int, tuple)):
      continue
    value = getattr(config, name)
    grown = (tuple(v + 1 for v in value) if isinstance(value, tuple)
             else value + 1)
    try:
      if parameter_count(config.replace(**{name: grown})) != base:
        found.append(f"--{name}")
    except Exception:  # pylint: disable=broad-except
      continue  # A size the model cannot take (no pixels left): not this one.
  return found


def lower_advice(config: Optional[config_lib.Config]) -> str:
  """"lower --batch_size, ...": the settings that make a run smaller."""
  names = ["--batch_size", "--eval_batch_size"]
  if config is not None:
    if config.num_seeds > 1 or config.sweep:
      names.append("--num_seeds" if not config.sweep else
                   "--num_seeds or the --sweep values")
    try:
      names += size_flags(config)
    except Exception:  # pylint: disable=broad-except
      pass  # The advice matters less than the line.
  return "lower " + ", ".join(names)


def check_steps(config: config_lib.Config, steps_per_epoch: int) -> None:
  """Refuses a run of more steps than JAX's int32 step counter holds."""
  total = config.epochs * steps_per_epoch
  if total > config_lib.INT32_MAX:
    raise UserError(
        f"--epochs={config.epochs} of {steps_per_epoch} steps each is {total} "
        f"steps, past the 2**31 - 1 a run can count; pass at most --epochs="
        f"{config_lib.INT32_MAX // steps_per_epoch} or a larger --batch_size")


@dataclasses.dataclass(frozen=True)
class Failure:
  """An exception that is the machine's, not a bug, in words. kind: "disk",
  "memory", "not_writable", "io" or "peer" (another process is gone)."""
  kind: str
  text: str
  path: Optional[str] = None

  @property
  def exit_code(self) -> int:
    return OutOfResources.exit_code if self.kind in ("disk", "memory") else (
        UserError.exit_code)


def failure(exc: BaseException,
            where: Optional[str] = None) -> Optional[Failure]:
  """What ran out or refused, for an exception of a full disk, memory or a
  refused write; None for any other (a bug keeps its traceback). `where`:
  the folder to name if the error names none."""
  chain = list(files.chain(exc))
  for e in chain:
    if isinstance(e, OSError) and e.errno is not None:
      path = e.filename or where
      if e.errno == errno.EFBIG:
        return Failure("disk", f"{path or 'a file'} reached this process's "
                       "file size limit (ulimit -f)", path)
      if e.errno in DISK_FULL:
        return Failure("disk", "no space left on the disk of "
                       f"{path or 'the run folder'}", path)
      if e.errno in NOT_WRITABLE:
        return Failure("not_writable", f"cannot write {path or 'a file'} "
                       f"({e.strerror})", path)
      if e.errno == errno.EIO:
        return Failure("io", f"reading or writing {path or 'a file'} failed "
                       f"({e.strerror})", path)
  code = files.no_space(exc)  # Said only in a library's own error's text.
  if code is not None:
    return failure(files.no_space_error(code, where), where)
  for e in chain:
    if isinstance(e, MemoryError):
      return Failure("memory", f"out of host memory ({first_line(e, 160)})")
    if any(text in str(e) for text in OUT_OF_MEMORY):  # XLA's, any device.
      detail = re.sub(r"^[A-Z_]+: ", "", first_line(e, 160))
      return Failure("memory", "out of memory on the "
                     f"{jax.default_backend().upper()} ({detail})")
    if (jax.distributed.is_initialized() and
        any(text in str(e) for text in PEER_LOST)):
      return Failure("peer", "another process of this job stopped (it "
                     f"crashed or was killed: {first_line(e, 100)})")
  return None

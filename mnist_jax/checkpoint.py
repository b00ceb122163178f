"""Orbax checkpoints of the full train state, one per epoch, written atomically.

Each checkpoint holds the TrainState (params, optimizer state, step, dropout
key) and a small JSON record of where the run stands (epoch, data position).
"""

import dataclasses
import os
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp

from mnist_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or does not fit this model."""


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _host_local(tree):
  """With several processes, numpy copies: orbax refuses host-local jax.Arrays."""
  return jax.device_get(tree) if jax.process_count() > 1 else tree


class Checkpointer:
  """Saves and restores `(state, meta)` pairs under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True)
    if jax.process_count() > 1:
      # Only process 0 checkpoints, host-local copies of the replicated state
      # (parallel.py), so no process waits on another.
      process = jax.process_index()
      if not read_only:
        os.makedirs(self.directory, exist_ok=True)
      options = dataclasses.replace(
          options, create=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=process, active_processes={process}))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, meta: dict) -> None:
    """Starts an atomic save in the background; `wait` or `close` finishes it."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_host_local(state)), meta=ocp.args.JsonSave(meta)),
        force=True)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, template, step: Optional[int] = None) -> Tuple[object, dict]:
    """Restores the state shaped like `template` and its meta record.

    Raises:
      CheckpointError: there is none, or it is damaged or from another model.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}; train first "
                            "(python launch.py --model=NAME --workdir=DIR)")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(
              _host_local(template) if jax.process_count() > 1
              else _abstract(template)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      raise CheckpointError(
          f"cannot restore the checkpoint at {self.directory}/{step} ({reason}); "
          "it is damaged or from another model: remove it or pass another "
          "--workdir") from None
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

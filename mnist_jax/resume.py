"""Resuming a run: which checkpoint fits, what it records, where to start.

A checkpoint's meta record (`record`) says how far the run got: `epoch`
(epochs completed), `epoch_step` (steps done in the next one, for a stop
between chunks) with that epoch's partial metric sums, the global `step`, and
whether the run was `done`. `Start` turns it into where the loop begins; the
data order and dropout keys are pure functions of (key, epoch, step), so the
resumed run ends bit for bit where an uninterrupted one would.
"""

import dataclasses
import os
from typing import Dict, Optional, Tuple

import jax
import numpy as np

from mnist_jax import checkpoint as checkpoint_lib
from mnist_jax import workdir as workdir_lib

def record(config, *, epoch: int, step: int, param_shapes: dict,
           epoch_step: int = 0, sums: Optional[dict] = None,
           done: bool = False) -> dict:
  """The meta record saved with a checkpoint.

  Args:
    config: the run's Config (its model and seed are recorded).
    epoch: epochs completed.
    step: the global step of the saved state.
    param_shapes: checkpoint.param_shapes of the parameters (the fingerprint
      that refuses another model's checkpoint).
    epoch_step: steps done in epoch + 1 (0 at an epoch's end).
    sums: the metric sums of those steps ({"loss", "correct", "count"},
      scalars or [M] with several members), when epoch_step > 0.
    done: whether the run finished.
  """
  meta = {"epoch": epoch, "epoch_step": epoch_step, "step": step,
          "model": config.model, "seed": config.seed, "done": done,
          "param_shapes": param_shapes}
  if sums is not None:
    meta["sums"] = {k: np.asarray(v).tolist()
                    for k, v in jax.device_get(sums).items()}
  return meta


def check_fits(meta: dict, state_step: int, steps: int, epochs: int,
               where: str) -> None:
  """Refuses a meta record that does not fit this run's epochs and data.

  Args:
    meta: the checkpoint's meta record.
    state_step: the step stored in the restored state (the largest member's).
    steps: this run's steps per epoch.
    epochs: this run's --epochs.
    where: the checkpoint folder, for the message.

  Raises:
    CheckpointError: another data size or batch size, or an inconsistent record.
  """
  epoch, epoch_step = meta.get("epoch"), meta.get("epoch_step", 0)
  if (not isinstance(epoch_step, int) or not 0 <= epoch_step < steps or
      not 0 <= epoch <= epochs or
      meta.get("step") != epoch * steps + epoch_step or
      state_step != meta.get("step") or
      (epoch_step and not isinstance(meta.get("sums"), dict))):
    raise checkpoint_lib.CheckpointError(
        f"the latest checkpoint in {where} (step {meta.get('step')}, epoch "
        f"{epoch}) does not fit this run's {steps} steps per epoch (were the "
        "data or the batch size changed?); resume with the data and "
        "--batch_size it was trained with, or pass another --workdir")


def restore(config, workdir: str, template, steps: int) -> Tuple[Optional[dict], object]:
  """(meta, state) of the run folder's latest checkpoint, or (None, template).

  Reads without writing anything, and refuses a checkpoint that is damaged,
  from another model, or from another data size, and a run trained to the
  end but not finished whose checkpoints are gone (its report needs them).
  """
  directory = os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)
  reader = None
  if os.path.exists(directory):
    reader = checkpoint_lib.Checkpointer(workdir, read_only=True)
  if reader is None or reader.latest_step() is None:
    if (workdir_lib.final_metrics(workdir) is not None and
        not workdir_lib.finished(workdir)):
      raise checkpoint_lib.CheckpointError(
          f"{workdir} trained to the end, but its report cannot be written: "
          f"its checkpoints are missing from {directory}; put them back (the "
          "same command then writes the report), or pass another --workdir; "
          f"--overwrite trains it again, deleting {workdir_lib.contents(workdir)}")
    return None, template
  state, meta = reader.restore(template, model=config.model)
  reader.close()
  check_fits(meta, int(np.max(np.asarray(state.step))), steps, config.epochs,
             directory)
  return meta, state


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run begins: its first epoch, the steps of it already done and
  their metric sums, and whether the run had already finished."""
  epoch: int = 1
  epoch_step: int = 0
  finished: bool = False
  sums: Optional[Dict[str, np.ndarray]] = None  # float32, [] or [M].

  @classmethod
  def from_meta(cls, meta: Optional[dict]) -> "Start":
    """A fresh run's start (meta None), or the one after a checkpoint."""
    if meta is None:
      return cls()
    sums = None
    if meta.get("sums"):
      sums = {k: np.asarray(v, np.float32) for k, v in meta["sums"].items()}
    return cls(meta["epoch"] + 1, meta.get("epoch_step", 0),
               bool(meta.get("done")), sums)

  def epochs(self, last: int) -> range:
    """The epochs left to run, up to `last`; none for a finished run."""
    return range(self.epoch, 1 if self.finished else last + 1)

  def steps_done(self, epoch: int) -> int:
    """Steps of `epoch` done before this start (only its first epoch has any)."""
    return self.epoch_step if epoch == self.epoch else 0

  def as_arrays(self, zero_sums: Dict[str, np.ndarray]):
    """(position int32 [3], sums): what process 0 sends the other processes.

    zero_sums: zeros shaped like the run's metric sums, for a start without.
    """
    position = np.array([self.epoch, self.epoch_step, self.finished], np.int32)
    return position, self.sums if self.sums is not None else zero_sums

  @classmethod
  def from_arrays(cls, position, sums) -> "Start":
    epoch, epoch_step, finished = (int(v) for v in np.asarray(position))
    sums = {k: np.asarray(v, np.float32) for k, v in sums.items()}
    return cls(epoch, epoch_step, bool(finished), sums if epoch_step else None)


class Saver:
  """Saves a run's checkpoints with their records; remembers the last step.

  Only the process that writes files (process 0) saves; the others keep the
  same bookkeeping, so every process tells the same story when it stops.
  """

  def __init__(self, workdir: str, config, param_shapes: dict, *,
               write: bool = True, last_saved: Optional[int] = None):
    self.directory = os.path.join(os.path.abspath(workdir),
                                  checkpoint_lib.CHECKPOINT_DIR)
    self._checkpointer = (checkpoint_lib.Checkpointer(
        workdir, keep=config.keep_checkpoints) if write else None)
    self._config = config
    self._shapes = param_shapes
    self.last_saved = last_saved

  def save(self, step: int, state, *, epoch: int, epoch_step: int = 0,
           sums: Optional[dict] = None, done: bool = False) -> None:
    """Starts saving `state` (this process's copy) as the checkpoint of `step`.

    epoch: epochs completed; epoch_step and sums: the steps done in the next
    one and their metric sums (see `record`).
    """
    if self._checkpointer is not None:
      self._checkpointer.save(step, state, record(
          self._config, epoch=epoch, step=step, param_shapes=self._shapes,
          epoch_step=epoch_step, sums=sums, done=done))
    self.last_saved = step

  def is_saved(self, step: int) -> bool:
    """Whether a checkpoint holds `step` already (step 0 needs none)."""
    return step in (self.last_saved, 0)

  def on_disk(self) -> str:
    """Which complete checkpoint a run killed now goes back to, in words,
    without waiting for a save in flight (for a second Ctrl-C)."""
    steps = checkpoint_lib.complete_steps(self.directory)
    if not steps:
      return "no checkpoint has been saved yet, so the run starts over"
    return (f"the last complete checkpoint, {self.directory}/{max(steps)}, "
            "is kept")

  def kept(self) -> str:
    """Which checkpoint a run stopped now goes back to, in words."""
    step = None
    if self._checkpointer is not None:
      self._checkpointer.wait()
      step = self._checkpointer.latest_step()
    if step is None:
      return "no checkpoint had been saved yet"
    return f"the last good checkpoint, {self.directory}/{step}, is kept"

  def close(self) -> None:
    """Waits for the last save to finish."""
    if self._checkpointer is not None:
      self._checkpointer.close()

"""A run whose loss or parameters became non-finite stops at the first such step.

The train chunk finds it on the device (train.make_train_chunk returns `bad`,
the first non-finite step of each member, -1 if none); the loop reads it once
per chunk, writes a metrics row that says where, keeps the last good
checkpoint and raises `Diverged` with the message below. In a run of several
members (a sweep's high learning rate, say) a member that diverges stops alone,
its parameters left non-finite, and the others go on; the run stops once every
member has.
"""

from typing import List, Optional

import numpy as np


def all_stopped(bad) -> Optional[int]:
  """The step at which the last member stopped, once every member has: bad
  int [] or [M]; None while one goes on."""
  bad = np.asarray(bad).reshape(-1)
  return int(bad.max()) if (bad >= 0).all() else None


def stopped_after(bad, step: int) -> List[int]:
  """The members whose first non-finite step came after global step `step`
  (those that stopped in the chunk that started there)."""
  return [i for i, b in enumerate(np.asarray(bad).reshape(-1)) if b > step]


def member_message(label: str, step: int, epoch: int,
                   steps_per_epoch: int) -> str:
  """The line a run of several members prints when one of them diverges."""
  return (f"member {label} diverged at step {step} (epoch {epoch}, step "
          f"{step - (epoch - 1) * steps_per_epoch} of {steps_per_epoch}); it "
          "stops, the others go on")


def message(step: int, epoch: int, steps_per_epoch: int, kept: str) -> str:
  """What a diverged run says, in one line.

  Args:
    step: the global step that was not finite.
    epoch: the epoch it belongs to (1-based).
    steps_per_epoch: the run's steps per epoch.
    kept: which checkpoint is kept (resume.Saver.kept).
  """
  return (f"training diverged: the loss or the parameters became non-finite at "
          f"step {step} (epoch {epoch}, step "
          f"{step - (epoch - 1) * steps_per_epoch} of {steps_per_epoch}); "
          f"{kept}; lower --learning_rate or set --grad_clip and train again")


def row(step: int, epoch: int, text: str) -> dict:
  """The metrics.jsonl row of a divergence."""
  return {"epoch": epoch, "step": step, "diverged": True, "message": text}

"""A run whose loss or parameters became non-finite stops at the first such step.

The train chunk finds it on the device (train.make_train_chunk returns `bad`,
the first non-finite step of each member, -1 if none); the loop reads it once
per chunk, writes a metrics row that says where, keeps the last good
checkpoint and raises `Diverged` with the message below.
"""

from typing import Optional

import numpy as np


def first_step(bad) -> Optional[int]:
  """The first non-finite step over all members, or None: bad int [] or [M]."""
  bad = np.asarray(bad).reshape(-1)
  return int(bad[bad >= 0].min()) if (bad >= 0).any() else None


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
          f"{kept}; lower --learning_rate or set --grad_clip, then start over "
          "with --overwrite")


def row(step: int, epoch: int, text: str) -> dict:
  """The metrics.jsonl row of a divergence."""
  return {"epoch": epoch, "step": step, "diverged": True, "message": text}

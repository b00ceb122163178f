"""A run whose loss or parameters became non-finite stops at the first such step.

The train chunk finds it on the device (train.make_train_chunk returns `bad`,
the first non-finite step of each member, -1 if none); the loop reads it once
per chunk, writes a metrics row that says where, keeps the last good
checkpoint and raises `Diverged` with the message below. In a run of several
members (a sweep's high learning rate, say) a member that diverges stops alone,
its parameters left non-finite, and the others go on; the run stops once every
member has.

A run that stays finite may still not learn (a learning rate far too high
makes Adam's loss climb to 1e15 without overflowing): `learning_verdict`
tells, from the final row; the run ends as usual, and launch.py then warns
and exits with NOT_LEARNED_EXIT_CODE.
"""

import math
from typing import List, Optional

import numpy as np

NOT_LEARNED = "did_not_learn"  # The final row's key for learning_verdict's.
NOT_LEARNED_EXIT_CODE = 4
# A final training loss this many times a uniform guess's, log(classes), is
# one that grew by orders of magnitude: no model that learned ends there.
LOSS_GROWTH = 100
# Standard errors of the test accuracy of a constant answer, on a test set
# this size, by which a run must beat always answering the commonest class.
CHANCE_MARGIN_SE = 2


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

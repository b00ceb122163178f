"""When a run stops besides finishing: a signal, or a run that did not learn.

SIGTERM or Ctrl-C ask for a stop (`StopRequest`): the hooks save at the next
safe point, once the running chunk of steps is done, and raise `Preempted`
(exit 128 + the signal). A finite run may still not learn
(`learning_verdict`: exit NOT_LEARNED_EXIT_CODE).
"""

import math
import signal
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

NOT_LEARNED = "did_not_learn"  # The final row's key for learning_verdict's.
NOT_LEARNED_EXIT_CODE = 4
LOSS_GROWTH = 100  # A final loss this many times a uniform guess's: diverged.
CHANCE_MARGIN_SE = 2  # Standard errors by which to beat the commonest class.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def learning_verdict(final: dict, last_row: Optional[dict],
                     test_labels) -> dict:
  """{NOT_LEARNED: {"cause", "message"}} for a run that did not learn, else
  {}: cause "loss" (the last training loss LOSS_GROWTH times a uniform
  guess's or more) or "chance" (test accuracy within CHANCE_MARGIN_SE
  standard errors of always answering the commonest test class)."""
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


def agreed(signum: Optional[int]) -> Optional[int]:
  """The stop request of any process (all stop at the same chunk)."""
  if jax.process_count() == 1:
    return signum
  votes = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(np.max(votes)) or None


class Preempted(Exception):
  """A requested stop after its checkpoint is safely on disk; the message
  says where it stopped."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopRequest:
  """While active (in the main thread), SIGTERM and SIGINT set `signum`
  instead of interrupting; again, they change nothing."""
  signum: Optional[int] = None
  _old = None  # While active: the signals' handlers before.

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      self._old = {s: signal.signal(s, self._ask) for s in SIGNALS}
    return self

  def _ask(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.signum = self.signum or signum

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Restores the signals' handlers; `signum` keeps any request."""
    for signum, handler in (self._old or {}).items():
      signal.signal(signum, handler)
    self._old = None

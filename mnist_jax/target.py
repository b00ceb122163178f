"""--target_accuracy: stop once a model is good enough, and say how long it took.

The target is checked after each epoch on the validation split, or on the
test split when there is none (--val_fraction=0); that test evaluation is then
also the run's final one.
"""

from typing import Optional


class Target:
  """Which split a target accuracy is checked on, and whether it was reached."""

  def __init__(self, accuracy: float, has_val: bool):
    self.accuracy = accuracy
    self.split = "val" if has_val else "test"

  @property
  def active(self) -> bool:
    return self.accuracy > 0

  @property
  def needs_test(self) -> bool:
    """Whether each epoch must evaluate the test split for the check."""
    return self.active and self.split == "test"

  def value(self, row: dict, test: Optional[dict]) -> Optional[float]:
    """The accuracy the target is compared with after an epoch, or None.

    row: the epoch's metrics row; test: this epoch's test metrics (when
    `needs_test`).
    """
    if not self.active:
      return None
    return row["val_accuracy"] if self.split == "val" else test["accuracy"]

  def reached(self, value: Optional[float]) -> bool:
    return value is not None and value >= self.accuracy

  def message(self, value: float, epoch: int, seconds: float) -> str:
    return (f"reached {self.split} accuracy {100 * value:.2f}% >= "
            f"{100 * self.accuracy:.2f}% after epoch {epoch} in {seconds:.1f}s")

"""metrics.jsonl: a run's rows, one JSON object a line (an epoch's each, then
the final one), appended and flushed as they come, and passed on to the
run's TensorBoard events; read back skipping damaged lines.
"""

import contextlib
import json
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

from mnist_jax import files

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """The one writer of a run's rows: metrics.jsonl, then `events` (a
  tensorboard.Writer, or None)."""

  def __init__(self, workdir: str, events=None):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.events = events

  def resume(self, epoch: int, keep_final: bool = False) -> None:
    """Keeps the rows of epochs 1..`epoch` (the checkpoint's: later ones are
    trained again), and the final row if `keep_final` (a run being
    completed); the events start over from the same rows."""
    kept = [r for r in self.read()
            if isinstance(r.get("epoch"), int) and 1 <= r["epoch"] <= epoch
            or keep_final and "test_accuracy" in r]
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    if self.events is not None:
      self.events.resume(kept)

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if self.events is not None:
      self.events.write(row)

  def read(self) -> List[dict]:
    return read_metrics(self.path)


def read_metrics(path: str) -> List[dict]:
  """The rows of a metrics.jsonl, in order, skipping damaged lines (a write
  a kill cut short, say); none if it is missing."""
  try:
    with open(path, "rb") as f:
      lines = f.read().decode("utf-8", errors="replace").splitlines()
  except FileNotFoundError:
    return []
  rows = []
  for line in lines:
    with contextlib.suppress(ValueError):
      rows.append(json.loads(line))
  return [r for r in rows if isinstance(r, dict)]


def epoch_rows(rows: Sequence[dict]) -> List[dict]:
  """The epochs' rows of `rows` (not the final or a divergence's)."""
  return [r for r in rows if "epoch" in r and "train_loss" in r]


def median_speed(rows: List[dict], key: str) -> Optional[float]:
  """The median `key` (epoch_time_s, examples_per_s) over the epochs timed
  whole: an epoch resumed mid-way (`partial_steps`) timed only its rest."""
  values = [r[key] for r in epoch_rows(rows) if not r.get("partial_steps")]
  return statistics.median(values) if values else None


def wall_time(final: dict) -> float:
  """A final row's wall time (the README's): from the data ready to the
  test metrics, over every process of a resumed run. Rows of earlier
  versions held the data's preparation in it too, as `data_time_s`."""
  return final["wall_time_s"] - (final.get("data_time_s") or 0.0)


def final_row(rows: Sequence[dict]) -> Optional[Dict[str, Any]]:
  """The last of `rows` with test metrics (the final row), None if none."""
  return next((r for r in reversed(rows) if "test_accuracy" in r), None)


def final_metrics(workdir: str) -> Optional[dict]:
  """A run folder's final row (its test metrics), None if it has none."""
  return final_row(MetricsLog(workdir).read())

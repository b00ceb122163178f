"""metrics.jsonl: a run's rows, one JSON object a line (an epoch's each, then
the final one), appended and flushed as they come; read back skipping damaged
lines, which a resumed run repairs and reports (`MetricsLog.resume`).
"""

import json
import os
from typing import List, Optional, Tuple

from mnist_jax import files

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl, flushed each time;
  a writer of log.RunLog (steps_per_epoch: to write lost rows back)."""

  def __init__(self, workdir: str, steps_per_epoch: Optional[int] = None):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.steps_per_epoch = steps_per_epoch

  def resume(self, epoch: int, steps_per_epoch: Optional[int] = None,
             keep_final: bool = False) -> List[str]:
    """Keeps the rows of epochs 1..`epoch` (the checkpoint's), and the final
    row if `keep_final`. Repairs damage and returns a line on each: a line no
    JSON row goes (silently if last: a write a kill cut short), an epoch
    logged twice keeps its later row, a lost one is written back "lost"."""
    steps_per_epoch = steps_per_epoch or self.steps_per_epoch
    rows, bad, count = _parse(self.path)
    by_epoch, twice, final = {}, [], None
    for row in rows:
      if "test_accuracy" in row:
        final = row
      elif is_epoch_row(row) and row["epoch"] <= epoch:
        if row["epoch"] in by_epoch:
          twice.append(row["epoch"])
        by_epoch[row["epoch"]] = row
    lost = [e for e in range(1, epoch + 1) if e not in by_epoch]
    for e in lost:
      by_epoch[e] = {"epoch": e, **({"step": e * steps_per_epoch}
                                    if steps_per_epoch else {}), "lost": True}
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    if keep_final and final is not None:
      kept.append(final)
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    notes = []
    for numbers, text in [
        ([n for n in bad if n != count], "line{s} {n} {was} damaged (not a "
         "JSON row) and dropped; every other row is kept"),
        (sorted(set(twice)), "epoch{s} {n} logged twice; the later row of "
         "each is kept"),
        (lost, "the row{s} of epoch{s} {n} {was} lost; written back marked "
         "{{\"lost\": true}} (the checkpoint holds the training itself; "
         "those epochs' metrics are unknown)")]:
      if numbers:
        many = len(numbers) > 1
        notes.append(f"{self.path}: " + text.format(
            s="s" * many, was="were" if many else "was",
            n=", ".join(str(v) for v in numbers)))
    return notes

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def epoch(self, row: dict) -> None:
    self.write(row)

  diverged = final = epoch

  def close(self) -> None:
    pass

  figures = close

  def read(self) -> List[dict]:
    return read_metrics(self.path)


def is_epoch_row(row: dict) -> bool:
  """Whether `row` is an epoch's row (it has a whole epoch number >= 1)."""
  epoch = row.get("epoch")
  return isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1


def _parse(path: str) -> Tuple[List[dict], List[int], int]:
  """(every JSON object row, the numbers of the other non-blank lines, the
  number of the last non-blank line) of a metrics.jsonl (none if missing)."""
  rows, bad, last = [], [], 0
  try:
    with open(path, "rb") as f:
      lines = f.read().decode("utf-8", errors="replace").splitlines()
  except FileNotFoundError:
    return rows, bad, last
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    last = number
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
    else:
      bad.append(number)
  return rows, bad, last


def read_metrics(path: str) -> List[dict]:
  """The rows of a metrics.jsonl, in order, skipping damaged lines."""
  return _parse(path)[0]


def final_metrics(workdir: str) -> Optional[dict]:
  """A run folder's final row (its test metrics), None if it has none."""
  rows = [r for r in read_metrics(os.path.join(workdir, METRICS_FILE))
          if "test_accuracy" in r]
  return rows[-1] if rows else None

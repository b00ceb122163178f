"""Where a run's rows go: `RunLog` hands each row to its writers (metrics.jsonl
and, unless --notensorboard, TensorBoard events; none on processes that write
no files) and the epoch lines to the console (`Progress`). A writer has
`resume(epoch, keep_final)` (returns notes), `epoch`, `diverged`, `final`,
`figures()` and `close()` (maybe twice).
"""

import os
import sys
import time
from typing import Dict, Optional, Sequence

from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import tensorboard
from mnist_jax.training import metrics as metrics_lib

REPORT_EVERY_S = 10.0


def _fmt_time(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _metrics_text(row: dict, split: str, prefix: str) -> str:
  """` loss 0.1234 acc 97.50%`: the split's console metrics, "n/a" for None."""
  return "".join(f" {prefix}{m.console} {m.text(row.get(f'{split}_{m.name}'))}"
                 for m in metrics_lib.of(split) if m.console)


class Progress:
  """The console: a line per epoch, and within an epoch one at most every
  REPORT_EVERY_S seconds, redrawn in place on a terminal (not a dumb one)."""

  def __init__(self, epochs: int, stream=None, prefix: str = ""):
    self.epochs, self.prefix = epochs, prefix
    self.stream = stream or sys.stdout
    self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty() and
                os.environ.get("TERM") != "dumb")
    self._last = time.monotonic()
    self._drawn = False  # A terminal line is being redrawn in place.
    self.epoch_times = []

  def _eta(self, epoch: int, fraction: float, elapsed: float) -> float:
    per_epoch = (sorted(self.epoch_times)[len(self.epoch_times) // 2]
                 if self.epoch_times else elapsed / max(fraction, 1e-9))
    return per_epoch * (1 - fraction) + per_epoch * (self.epochs - epoch)

  def _write(self, text: str, drawn: bool) -> None:
    self.stream.write(text)
    self._drawn = drawn
    self.stream.flush()

  def update(self, epoch: int, done: int, total: int, elapsed: float) -> None:
    now = time.monotonic()
    if not self.tty and now - self._last < REPORT_EVERY_S:
      return
    self._last = now
    fraction = done / max(total, 1)
    text = (f"{self.prefix}epoch {epoch}/{self.epochs} {100 * fraction:3.0f}% "
            f"({done}/{total} steps, {_fmt_time(elapsed)}, "
            f"about {_fmt_time(self._eta(epoch, fraction, elapsed))} left)")
    self._write(f"\r{text}\033[K" if self.tty else f"{text}\n", self.tty)

  def epoch_done(self, epoch: int, row: dict) -> None:
    self.epoch_times.append(row["epoch_time_s"])
    self._last = time.monotonic()
    val = (_metrics_text(row, "val", "val_")
           if row.get("val_accuracy") is not None else "")
    if row.get("leader"):  # Several members: the one the numbers are of.
      leader = row["leader"]
      val += " (leading: " + ", ".join(
          [f"{k}={v:g}" for k, v in leader["values"].items()] +
          [f"seed={leader['seed']}"]) + ")"
    left = self._eta(epoch, 1.0, row["epoch_time_s"])
    text = (f"{self.prefix}epoch {epoch}/{self.epochs}"
            f"{_metrics_text(row, 'train', '')}{val} "
            f"{row['epoch_time_s']:.1f}s ({row['examples_per_s']:,.0f} ex/s), "
            f"about {_fmt_time(left)} left")
    self._write(f"\r{text}\033[K\n" if self.tty else f"{text}\n", False)

  def status(self, text: str) -> None:
    """What the run does now: on a terminal drawn in place (the next line
    replaces it), else a line of its own."""
    self._write(f"\r{self.prefix}{text}\033[K" if self.tty
                else f"{self.prefix}{text}\n", self.tty)

  def message(self, text: str) -> None:
    """A line of its own; on a terminal it replaces a line drawn in place."""
    self._write(("\r\033[K" if self._drawn else "") + f"{self.prefix}{text}\n",
                False)


class RunLog:
  """Receives a run's rows and console messages, and passes them on."""

  def __init__(self, progress: Progress, writers: Sequence = ()):
    self.progress = progress
    self.writers = list(writers)

  def open(self, workdir: Optional[str], resume_after: int = 0, *,
           config=None, members: Sequence[Dict] = (),
           steps_per_epoch: Optional[int] = None,
           keep_final: bool = False) -> None:
    """Starts the writers of `workdir` (None: none) after `resume_after`
    epochs, and says what metrics.jsonl had lost. keep_final: keep its final
    row (a run being completed); members: the labels, as in a row."""
    if workdir is not None:
      self.writers.append(metrics_log.MetricsLog(workdir, steps_per_epoch))
      if config is not None and config.tensorboard:
        self.writers.append(tensorboard.Writer(workdir, config, members))
    for writer in self.writers:
      for note in writer.resume(resume_after, keep_final=keep_final) or ():
        self.message(note)

  def message(self, text: str) -> None:
    self.progress.message(text)

  def chunk(self, epoch: int, done: int, total: int, elapsed: float) -> None:
    """Progress inside an epoch: `done` of `total` steps after `elapsed` s."""
    self.progress.update(epoch, done, total, elapsed)

  def epoch(self, row: dict) -> None:
    for writer in self.writers:
      writer.epoch(row)
    self.progress.epoch_done(row["epoch"], row)

  def diverged(self, row: dict) -> None:
    for writer in self.writers:
      writer.diverged(row)

  def final(self, row: dict, logged: bool = False) -> None:
    """The final row; `logged`: metrics.jsonl holds it already (kept by
    `open(keep_final=True)`), so only the other writers take it."""
    for writer in self.writers:
      if not (logged and isinstance(writer, metrics_log.MetricsLog)):
        writer.final(row)

  def figures(self) -> None:
    for writer in self.writers:
      writer.figures()

  def close(self) -> None:
    """Ends every writer; a run calls it on every way out, maybe twice."""
    for writer in self.writers:
      writer.close()

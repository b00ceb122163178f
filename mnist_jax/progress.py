"""Console progress: one line per epoch, with interim lines for long epochs."""

import os
import sys
import time

REPORT_EVERY_S = 10.0


def _fmt_time(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _number(value, spec: str) -> str:
  """`value` formatted by `spec`; "n/a" for None (a diverged member's)."""
  return "n/a" if value is None else format(value, spec)


class Progress:
  """Prints progress within an epoch at most every REPORT_EVERY_S seconds.

  On a terminal the line is redrawn in place; in a log (or a dumb terminal,
  which shows escape codes as text) each report is a line of its own.
  """

  def __init__(self, epochs: int, stream=None, prefix: str = ""):
    self.epochs = epochs
    self.stream = stream or sys.stdout
    self.prefix = prefix
    self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty() and
                os.environ.get("TERM") != "dumb")
    self._last = time.monotonic()
    self._drawn = False  # A terminal line is being redrawn in place.
    self.epoch_times = []

  def _eta(self, epoch: int, fraction: float, elapsed: float) -> float:
    per_epoch = (sorted(self.epoch_times)[len(self.epoch_times) // 2]
                 if self.epoch_times else elapsed / max(fraction, 1e-9))
    return per_epoch * (1 - fraction) + per_epoch * (self.epochs - epoch)

  def update(self, epoch: int, done: int, total: int, elapsed: float) -> None:
    now = time.monotonic()
    if not self.tty and now - self._last < REPORT_EVERY_S:
      return
    self._last = now
    fraction = done / max(total, 1)
    text = (f"{self.prefix}epoch {epoch}/{self.epochs} {100 * fraction:3.0f}% "
            f"({done}/{total} steps, {_fmt_time(elapsed)}, "
            f"about {_fmt_time(self._eta(epoch, fraction, elapsed))} left)")
    if self.tty:
      self.stream.write("\r" + text + "\033[K")
      self._drawn = True
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def epoch_done(self, epoch: int, row: dict) -> None:
    self.epoch_times.append(row["epoch_time_s"])
    self._last = time.monotonic()
    val = ""
    if row.get("val_accuracy") is not None:
      val = f" val_loss {row['val_loss']:.4f} val_acc {100 * row['val_accuracy']:.2f}%"
    if row.get("leader"):  # Several members: the one the numbers are of.
      leader = row["leader"]
      val += " (leading: " + ", ".join(
          [f"{k}={v:g}" for k, v in leader["values"].items()] +
          [f"seed={leader['seed']}"]) + ")"
    left = self._eta(epoch, 1.0, row["epoch_time_s"])
    text = (f"{self.prefix}epoch {epoch}/{self.epochs} loss "
            f"{_number(row['train_loss'], '.4f')} acc "
            f"{_number(row['train_accuracy'], '.2%')}{val} "
            f"{row['epoch_time_s']:.1f}s ({row['examples_per_s']:,.0f} ex/s), "
            f"about {_fmt_time(left)} left")
    self.stream.write(("\r" if self.tty else "") + text +
                      ("\033[K" if self.tty else "") + "\n")
    self._drawn = False
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line of its own; on a terminal it replaces a line drawn in place."""
    if self._drawn:
      self.stream.write("\r\033[K")
      self._drawn = False
    self.stream.write(f"{self.prefix}{text}\n")
    self.stream.flush()

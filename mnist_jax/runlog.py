"""Where a run's rows go: every epoch row, a divergence row and the final row.

`RunLog` hands each row to its writers and the epoch lines to the console. A
writer has the methods of `JsonlWriter`: `resume(epoch)` forgets what was
logged after `epoch` (a resumed run logs those epochs again), `epoch(row)`,
`diverged(row)` and `final(row)` record a row, `close()` ends. metrics.jsonl
is the one writer today; another sink (e.g. TensorBoard event files) is one
more writer in `RunLog.open`.
"""

from typing import Optional, Sequence

from mnist_jax import progress as progress_lib
from mnist_jax import workdir as workdir_lib


class JsonlWriter:
  """metrics.jsonl: each row as one JSON line, flushed to disk at once."""

  def __init__(self, workdir: str):
    self._log = workdir_lib.MetricsLog(workdir)

  def resume(self, epoch: int) -> None:
    self._log.truncate_after(epoch)

  def epoch(self, row: dict) -> None:
    self._log.write(row)

  def diverged(self, row: dict) -> None:
    self._log.write(row)

  def final(self, row: dict) -> None:
    self._log.write(row)

  def close(self) -> None:
    pass


class RunLog:
  """Receives a run's rows and console messages, and passes them on."""

  def __init__(self, progress: progress_lib.Progress, writers: Sequence = ()):
    self.progress = progress
    self.writers = list(writers)

  def open(self, workdir: Optional[str], resume_after: int = 0) -> None:
    """Starts the writers of `workdir` (None: this process writes no files).

    resume_after: the epochs completed before this run started; rows of
    later epochs are dropped, as the run logs them again.
    """
    if workdir is not None:
      self.writers.append(JsonlWriter(workdir))
    for writer in self.writers:
      writer.resume(resume_after)

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

  def final(self, row: dict) -> None:
    for writer in self.writers:
      writer.final(row)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()

"""Where a run's rows go: every epoch row, a divergence row and the final row.

`RunLog` hands each row to its writers and the epoch lines to the console. A
writer has the methods of `JsonlWriter`: `resume(epoch, keep_final)` forgets
what was logged after `epoch` (a resumed run logs those epochs again) and
returns what it repaired, in words, `epoch(row)`,
`diverged(row)` and `final(row)` record a row, `figures()` takes the report's
figures once they are drawn, `close()` ends (and may be called again). The
writers of the process that writes the run folder are metrics.jsonl and,
unless --notensorboard, TensorBoard event files.
"""

import os
from typing import Dict, List, Optional, Sequence

from mnist_jax import progress as progress_lib
from mnist_jax import report
from mnist_jax import tensorboard_events
from mnist_jax import workdir as workdir_lib


class JsonlWriter:
  """metrics.jsonl: each row as one JSON line, flushed to disk at once."""

  def __init__(self, workdir: str, steps_per_epoch: Optional[int] = None):
    self._log = workdir_lib.MetricsLog(workdir)
    self._steps_per_epoch = steps_per_epoch

  def resume(self, epoch: int, keep_final: bool = False) -> List[str]:
    return self._log.resume(epoch, self._steps_per_epoch, keep_final)

  def epoch(self, row: dict) -> None:
    self._log.write(row)

  def diverged(self, row: dict) -> None:
    self._log.write(row)

  def final(self, row: dict) -> None:
    self._log.write(row)

  def figures(self) -> None:
    pass

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """TensorBoard event files in the run folder (tensorboard_events.Writer).

  The files open on `resume`, with the epoch rows metrics.jsonl keeps, so a
  resumed run continues one series. Each member of a run with several gets
  its own series, in a subfolder named for its settings.
  """

  def __init__(self, workdir: str, config, members: Sequence[Dict] = (),
               steps_per_epoch: Optional[int] = None):
    """members: each member's label ({"seed": 3, ...}); one member is the run."""
    self._workdir = workdir
    self._config = config
    self._members = list(members)
    self._steps_per_epoch = steps_per_epoch
    self._writer = None

  def resume(self, epoch: int, keep_final: bool = False) -> None:
    del keep_final  # The final row is written again (`final`) if wanted.
    kept = [r for r in workdir_lib.MetricsLog(self._workdir).read()
            if r.get("epoch", epoch + 1) <= epoch and "train_loss" in r]
    self._writer = tensorboard_events.Writer(
        self._workdir, self._config, members=self._members, history=kept,
        steps_per_epoch=self._steps_per_epoch)

  def epoch(self, row: dict) -> None:
    self._writer.epoch(row)

  def diverged(self, row: dict) -> None:
    pass  # metrics.jsonl says where; the series end at the last good epoch.

  def final(self, row: dict) -> None:
    self._writer.final(row)

  def figures(self) -> None:
    self._writer.figures([os.path.join(self._workdir, name)
                          for name in report.FILES if name.endswith(".png")])

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def check(workdir: str, config, members: Sequence[Dict]) -> None:
  """Refuses, before anything is written, event folders a run cannot write.

  The run folder itself is checked with the rest of it (workdir.py); here the
  folders of the members' TensorBoard series, which a resumed run reuses.

  Raises:
    UserError: a member's folder is a file, or cannot be written.
  """
  if config.tensorboard:
    tensorboard_events.check_folders(workdir, members)


class RunLog:
  """Receives a run's rows and console messages, and passes them on."""

  def __init__(self, progress: progress_lib.Progress, writers: Sequence = ()):
    self.progress = progress
    self.writers = list(writers)

  def open(self, workdir: Optional[str], resume_after: int = 0, *,
           config=None, members: Sequence[Dict] = (),
           steps_per_epoch: Optional[int] = None,
           keep_final: bool = False) -> None:
    """Starts the writers of `workdir` (None: this process writes no files).

    Says on the console what metrics.jsonl had lost and how it was repaired.

    Args:
      workdir: the run folder, or None.
      resume_after: the epochs completed before this run started; rows of
        later epochs are dropped, as the run logs them again.
      keep_final: keep metrics.jsonl's final row (a run trained to the end,
        being completed: `final(row, logged=True)` then skips it there).
      config: the run's Config; with `config.tensorboard`, TensorBoard event
        files are written too.
      members: each member's label ({"seed": 3, ...}), in the order of a
        row's `members`.
      steps_per_epoch: the run's, for TensorBoard's learning rates.
    """
    if workdir is not None:
      self.writers.append(JsonlWriter(workdir, steps_per_epoch))
      if config is not None and config.tensorboard:
        self.writers.append(TensorBoardWriter(workdir, config, members,
                                              steps_per_epoch))
    for writer in self.writers:
      for note in writer.resume(resume_after, keep_final) or ():
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
      if not (logged and isinstance(writer, JsonlWriter)):
        writer.final(row)

  def figures(self) -> None:
    """The report's figures are in the run folder: writers may take them."""
    for writer in self.writers:
      writer.figures()

  def close(self) -> None:
    """Ends every writer; a run calls it on every way out, maybe twice."""
    for writer in self.writers:
      writer.close()

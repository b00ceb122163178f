"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow).

The run's own events go in its event folder (the run folder): the rows of
metrics.jsonl, which with --num_seeds hold the mean over members. Each member
(a seed, or a sweep's point) gets a subfolder named for its settings, e.g.
`seed=3`, with the same tags, so `tensorboard --logdir runs` overlays the
members of a run and the runs of a folder. The x-axis is the epoch: every
metric is per epoch, and runs with other batch sizes line up.

Each writer opens a new event file that starts with a session restart at
epoch 1, then replays the epoch rows the run folder kept (`history`). A resumed
run thus drops whatever its killed predecessor wrote and continues one series
that matches metrics.jsonl, in TensorBoard's Python loader (which purges on the
restart) and in its fast loader (which replaces a tag's later points when a
step repeats). tensorboardX writes in a background thread and flushes every
FLUSH_SECS, so a live TensorBoard follows the run.
"""

import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX import summary as tbx_summary
from tensorboardX.proto import summary_pb2

from mnist_jax import config as config_lib
from mnist_jax import optim

EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val",
              "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val",
              "learning_rate": "learning_rate"}
SPEED_TAGS = {"epoch_time_s": "speed/epoch_time_s",
              "examples_per_s": "speed/examples_per_s"}
FINAL_TAGS = {"test_loss": "loss/test", "test_accuracy": "accuracy/test"}
# Config fields that say where files are or how processes meet, not what was
# trained: left out of the hparams, where they would only tell runs apart.
NOT_HPARAMS = ("workdir", "data_dir", "mnist_dir", "coordinator_address",
               "num_processes", "process_id", "tensorboard")
FLUSH_SECS = 1.0
_COLORSPACES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def members_of(config) -> List[Dict]:
  """The members of a --num_seeds run, [{"seed": s}, ...]; [] for one seed."""
  if config.num_seeds <= 1:
    return []
  return [{"seed": config.seed + i} for i in range(config.num_seeds)]


def _text(value) -> str:
  if isinstance(value, float):
    return format(value, "g")
  if isinstance(value, (list, tuple)):
    return ",".join(_text(v) for v in value)
  return str(value)


def member_name(values: Dict) -> str:
  """The subfolder of a member: `seed=3`, `learning_rate=0.001,seed=3`."""
  return ",".join(f"{k}={_text(v)}" for k, v in values.items())


def hparams(config, member: Optional[Dict] = None) -> Dict:
  """The Config as HParams values (tuples as text); a member is a single run."""
  values = config.to_dict()
  if member:
    values.update(member, num_seeds=1)
  return {k: _text(v) if isinstance(v, (list, tuple)) else v
          for k, v in values.items() if k not in NOT_HPARAMS and v is not None}


def _learning_rates(config, member: Optional[Dict],
                    steps_per_epoch: Optional[int]) -> Optional[np.ndarray]:
  """The learning rate after each epoch, [epochs + 1] indexed by epoch."""
  if not steps_per_epoch:
    return None
  if member:
    config = config.replace(**{k: v for k, v in member.items()
                               if k in config_lib.FIELDS})
  schedule = optim.make_schedule(config, steps_per_epoch)
  steps = np.arange(config.epochs + 1) * steps_per_epoch
  return np.broadcast_to(np.asarray(schedule(steps), np.float64), steps.shape)


def _image(path: str) -> summary_pb2.Summary.Image:
  """A PNG file as TensorBoard's image proto, its bytes as they are."""
  with Image.open(path) as image:
    width, height = image.size
    colorspace = _COLORSPACES.get(image.mode, 3)
  with open(path, "rb") as f:
    data = f.read()
  return summary_pb2.Summary.Image(height=height, width=width,
                                   colorspace=colorspace,
                                   encoded_image_string=data)


class Writer:
  """Writes a run's TensorBoard events: epoch rows, final metrics, figures, config.

  Call `epoch(row)` with each epoch row of metrics.jsonl, `final(row, figures)`
  with the final row and the report's PNG files, and `close()` at the end,
  also when the run stops early. A write that fails prints one warning and
  turns the writer off: TensorBoard events never stop a run.
  """

  def __init__(self, logdir: str, config: config_lib.Config, *,
               members: Optional[Sequence[Dict]] = None,
               history: Sequence[Dict] = (),
               steps_per_epoch: Optional[int] = None, enabled: bool = True,
               warn: Optional[Callable[[str], None]] = None):
    """Opens the event files and replays `history`.

    Args:
      logdir: the event folder (the run folder); members get subfolders.
      config: the run's Config, written as hparams.
      members: each member's own settings, e.g. [{"seed": 3}, ...], in the
        order of a row's `replicas`; None: from config.num_seeds.
      history: the epoch rows the run folder kept, when resuming.
      steps_per_epoch: to compute the learning rate of rows without one.
      enabled: False makes every method a no-op (--notensorboard).
      warn: prints the warning line of a failed write (default: stderr).
    """
    self.logdir = logdir
    self._warn = warn or (lambda text: print(text, file=sys.stderr))
    self._main = None
    self._members = []
    self._rates = []
    self._last_epoch = 0
    if not enabled:
      return
    members = members_of(config) if members is None else list(members)
    try:
      self._rates = [_learning_rates(config, m, steps_per_epoch)
                     for m in [None] + members]
      self._main = self._open(logdir, hparams(config))
      self._members = [self._open(os.path.join(logdir, member_name(m)),
                                  hparams(config, m)) for m in members]
      for row in history:
        self._epoch(row)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  def _open(self, path: str, values: Dict) -> SummaryWriter:
    # The restart at epoch 1 purges a killed predecessor's events; the
    # nanosecond suffix keeps a writer from reusing a file name of the same
    # second; an unbounded queue never blocks the loop.
    writer = SummaryWriter(path, purge_step=1, flush_secs=FLUSH_SECS,
                           max_queue=0, filename_suffix=f".{time.time_ns()}")
    _, start, _ = tbx_summary.hparams(values, {})
    writer.file_writer.add_summary(start)
    return writer

  def _writers(self) -> List[SummaryWriter]:
    return [w for w in [self._main] + self._members if w is not None]

  def _close_all(self) -> Optional[Exception]:
    """Closes every file; returns the first error instead of raising it."""
    writers, self._main, self._members = self._writers(), None, []
    error = None
    for writer in writers:
      try:
        writer.close()
      except Exception as e:  # pylint: disable=broad-except
        error = error or e
    return error

  def _fail(self, error: Exception) -> None:
    self._warn(f"warning: TensorBoard events in {self.logdir} stopped "
               f"({type(error).__name__}: {error}); training goes on, "
               "metrics.jsonl has every row")
    self._close_all()

  def _rate(self, i: int, epoch: int) -> Optional[float]:
    rates = self._rates[i]
    if rates is None or not 0 <= epoch < len(rates):
      return None
    return float(rates[epoch])

  @staticmethod
  def _scalars(writer, values: Dict, tags: Dict, step: int) -> None:
    for key, tag in tags.items():
      value = values.get(key)
      if value is not None:
        writer.add_scalar(tag, float(value), step)

  def _epoch(self, row: Dict) -> None:
    epoch = row.get("epoch")
    if epoch is None or row.get("train_loss") is None:
      return  # Not an epoch row (e.g. the divergence note).
    lr = row.get("learning_rate", self._rate(0, epoch))
    self._scalars(self._main, {**row, "learning_rate": lr},
                  {**EPOCH_TAGS, **SPEED_TAGS}, epoch)
    for i, (writer, member) in enumerate(zip(self._members,
                                             row.get("replicas") or [])):
      lr = member.get("learning_rate", self._rate(i + 1, epoch))
      self._scalars(writer, {**member, "learning_rate": lr}, EPOCH_TAGS, epoch)
    self._last_epoch = epoch

  def epoch(self, row: Dict) -> None:
    """Writes an epoch row of metrics.jsonl at its epoch."""
    if self._main is None:
      return
    try:
      self._epoch(row)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  def final(self, row: Dict, figures: Sequence[str] = ()) -> None:
    """Writes the test metrics and the figures (PNG paths) at the last epoch.

    Also closes each HParams session as finished. Missing figures are skipped.
    """
    if self._main is None:
      return
    try:
      step = row.get("epochs_run") or self._last_epoch
      self._scalars(self._main, row, FINAL_TAGS, step)
      for writer, member in zip(self._members, row.get("replicas") or []):
        self._scalars(writer, member, FINAL_TAGS, step)
      for path in figures:
        if os.path.exists(path):
          name = os.path.splitext(os.path.basename(path))[0]
          self._main.file_writer.add_summary(summary_pb2.Summary(value=[
              summary_pb2.Summary.Value(tag=f"figures/{name}",
                                        image=_image(path))]), step)
      _, _, end = tbx_summary.hparams({}, {})
      for writer in self._writers():
        writer.file_writer.add_summary(end)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  def close(self) -> None:
    """Writes out everything queued and closes the files (idempotent)."""
    error = self._close_all()
    if error is not None:
      self._fail(error)

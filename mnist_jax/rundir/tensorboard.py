"""TensorBoard event files of a run, made with tensorboardX's protos (no TensorFlow).

The run's own events go in its event folder (the run folder): the rows of
metrics.jsonl, whose top-level metrics with several members are the leading
member's. Each member
(a seed, or a sweep's point) gets a subfolder named for its settings, e.g.
`seed=3`, with the same tags, read from the row's `members` list, so
`tensorboard --logdir runs` overlays the members of a run and the runs of a
folder. The x-axis is the epoch: every metric is per epoch, and runs with
other batch sizes line up.

Each writer opens a new event file that starts with a session restart at
epoch 1, then replays the epoch rows the run folder kept (`history`). A resumed
run thus drops whatever its killed predecessor wrote and continues one series
that matches metrics.jsonl, in TensorBoard's Python loader (which purges on the
restart) and in its fast loader (which replaces a tag's later points when a
step repeats).

Events are written in the caller's thread and flushed as each call returns, so
a live TensorBoard follows the run, a killed run loses no epoch it logged, and
a failed write is seen where it happens: it prints one warning and stops the
events, never the run.
"""

import contextlib
import os
import socket
import struct
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from PIL import Image


@contextlib.contextmanager
def _torch_hidden():
  """Within: `import torch` fails, unless this process has imported it."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    yield
  finally:
    if hide and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]


# tensorboardX's package imports PyTorch where it is installed (about 0.9 s at
# every start of launch.py) only to accept torch tensors, which no run writes.
with _torch_hidden():
  # pylint: disable=g-import-not-at-top
  from tensorboardX import summary as tbx_summary
  from tensorboardX.proto import event_pb2
  from tensorboardX.proto import summary_pb2
  from tensorboardX.record_writer import masked_crc32c
  # pylint: enable=g-import-not-at-top

from mnist_jax import config as config_lib  # pylint: disable=g-import-not-at-top,g-bad-import-order
from mnist_jax.errors import UserError
from mnist_jax.rundir import files
from mnist_jax.training import metrics


def _tags(splits: Sequence[str]) -> Dict[str, str]:
  """metrics.jsonl key -> tag (`<tag>/<split>`) of each metric of `splits`."""
  return {f"{split}_{m.name}": f"{m.tag}/{split}"
          for m in metrics.METRICS for split in splits if split in m.splits}


EPOCH_TAGS = {**_tags(("train", "val")), "learning_rate": "learning_rate"}
SPEED_TAGS = {"epoch_time_s": "speed/epoch_time_s",
              "examples_per_s": "speed/examples_per_s"}
FINAL_TAGS = _tags(("test",))
# Config fields that say where files are or how processes meet, not what was
# trained: left out of the hparams, where they would only tell runs apart.
NOT_HPARAMS = ("workdir", "data_dir", "mnist_dir", "coordinator_address",
               "num_processes", "process_id", "tensorboard")
_COLORSPACES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def members_of(config) -> List[Dict]:
  """The members of a --num_seeds run, [{"seed": s}, ...]; [] for one seed."""
  if config.num_seeds <= 1:
    return []
  return [{"seed": config.seed + i} for i in range(config.num_seeds)]


def members_from_labels(labels: Sequence[Dict]) -> List[Dict]:
  """The members of a run from their labels: [] for a single member.

  A label names a member in metrics.jsonl, e.g. {"seed": 3} or {"index": 0,
  "learning_rate": 0.001, "seed": 3}; its keys that are no Config field go.
  """
  if len(labels) <= 1:
    return []
  return [{k: v for k, v in m.items() if k in config_lib.FIELDS}
          for m in labels]


def member_rows(row: Dict) -> List[Dict]:
  """A metrics row's per-member dicts (`replicas` in older run folders)."""
  return row.get("members") or row.get("replicas") or []


def _text(value) -> str:
  if isinstance(value, float):
    return format(value, "g")
  if isinstance(value, (list, tuple)):
    return ",".join(_text(v) for v in value)
  return str(value)


def member_name(values: Dict) -> str:
  """The subfolder of a member: `seed=3`, `seed=3,learning_rate=0.001`."""
  return ",".join(f"{k}={_text(v)}" for k, v in values.items())


def hparams(config, member: Optional[Dict] = None) -> Dict:
  """The Config as HParams values (tuples as text); a member is a single run."""
  values = config.to_dict()
  if member:
    values.update(member, num_seeds=1)
  return {k: _text(v) if isinstance(v, (list, tuple)) else v
          for k, v in values.items() if k not in NOT_HPARAMS and v is not None}


def check_folders(logdir: str, members: Sequence[Dict]) -> None:
  """Refuses member event folders that are in the way, before a run writes.

  The run folder itself is checked with the rest of it (folder.py); this
  checks the subfolders a resumed run's members write into.

  Args:
    logdir: the event folder (the run folder).
    members: the members' labels (see members_from_labels).

  Raises:
    UserError: a member's folder is a file, or cannot be written.
  """
  for member in members_from_labels(members):
    path = os.path.join(logdir, member_name(member))
    if os.path.lexists(path) and not os.path.isdir(path):
      raise UserError(f"{path} is a file where TensorBoard events of a member "
                      "go; move it away, or pass --notensorboard")
    if os.path.isdir(path):
      try:
        files.probe_writable(path)
      except OSError as e:
        raise UserError(f"{path} is not writable ({e.strerror or e}); pass "
                        "--notensorboard, or make it writable") from None


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


class EventFile:
  """One TensorBoard event file: `Event` protos in TFRecord framing.

  Written in the caller's thread. `flush` hands what was written to the OS,
  so TensorBoard reads it as the run goes on and a killed run keeps it; only
  `close` waits for the disk (fsync), which tensorboardX's own writers do on
  every flush, at a cost of a sizeable part of the shortest epochs.
  """

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    now = time.time_ns()  # Names sort by time; no two files share one.
    path = os.path.join(folder, f"events.out.tfevents.{now // 10**9}."
                        f"{socket.gethostname()}.{now}")
    self._file = open(path, "wb")  # pylint: disable=consider-using-with
    self.write(event_pb2.Event(wall_time=now / 1e9,
                               file_version="brain.Event:2"))

  def write(self, event: event_pb2.Event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(b"".join([header, struct.pack("<I", masked_crc32c(header)),
                               data, struct.pack("<I", masked_crc32c(data))]))

  def summary(self, summary: summary_pb2.Summary, step: int = 0) -> None:
    self.write(event_pb2.Event(wall_time=time.time(), step=step,
                               summary=summary))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    try:
      self._file.flush()
      os.fsync(self._file.fileno())
    finally:
      self._file.close()


class Writer:
  """Writes a run's TensorBoard events: epoch rows, final metrics, figures, config.

  Call `epoch(row)` with each epoch row of metrics.jsonl, `final(row)` with
  the final row, `figures(paths)` with the report's PNG files, and `close()`
  at the end, also when the run stops early. A write that fails prints one warning and
  turns the writer off: TensorBoard events never stop a run.
  """

  def __init__(self, logdir: str, config: config_lib.Config, *,
               members: Optional[Sequence[Dict]] = None,
               history: Sequence[Dict] = (), enabled: bool = True,
               warn: Optional[Callable[[str], None]] = None):
    """Opens the event files and replays `history`.

    Args:
      logdir: the event folder (the run folder); members get subfolders.
      config: the run's Config, written as hparams.
      members: each member's label, e.g. [{"seed": 3}, ...], in the order
        of a row's `members` (see members_from_labels); None: from
        config.num_seeds.
      history: the epoch rows the run folder kept, when resuming.
      enabled: False makes every method a no-op (--notensorboard).
      warn: prints the warning line of a failed write (default: stderr).
    """
    self.logdir = logdir
    self._warn = warn or (lambda text: print(text, file=sys.stderr))
    self._main = None
    self._members = []
    self._last_epoch = 0
    if not enabled:
      return
    members = (members_of(config) if members is None
               else members_from_labels(members))
    try:
      self._main = self._open(logdir, hparams(config))
      self._members = [self._open(os.path.join(logdir, member_name(m)),
                                  hparams(config, m)) for m in members]
      for row in history:
        self._epoch(row)
      self._flush()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  @staticmethod
  def _open(path: str, values: Dict) -> EventFile:
    """A new event file: the restart at epoch 1 that purges a killed
    predecessor's events, then the HParams session of `values`."""
    events = EventFile(path)
    events.write(event_pb2.Event(step=1, wall_time=time.time(),
                                 session_log=event_pb2.SessionLog(
                                     status=event_pb2.SessionLog.START)))
    _, start, _ = tbx_summary.hparams(values, {})
    events.summary(start)
    return events

  def _writers(self) -> List[EventFile]:
    return [w for w in [self._main] + self._members if w is not None]

  def _flush(self) -> None:
    for writer in self._writers():
      writer.flush()

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

  @staticmethod
  def _scalars(writer, values: Dict, tags: Dict, step: int) -> None:
    """One event with a scalar per tag whose key `values` holds.

    NaN and inf are written as they are (a diverging loss is data), without
    tensorboardX's add_scalar and its warning on each.
    """
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(values[key]))
        for key, tag in tags.items() if values.get(key) is not None])
    if summary.value:
      writer.summary(summary, step)

  def _epoch(self, row: Dict) -> None:
    epoch = row.get("epoch")
    if epoch is None or row.get("train_loss") is None:
      return  # Not an epoch row (e.g. the divergence note).
    self._scalars(self._main, row, {**EPOCH_TAGS, **SPEED_TAGS}, epoch)
    for writer, member in zip(self._members, member_rows(row)):
      self._scalars(writer, member, EPOCH_TAGS, epoch)
    self._last_epoch = epoch

  def epoch(self, row: Dict) -> None:
    """Writes an epoch row of metrics.jsonl at its epoch."""
    if self._main is None:
      return
    try:
      self._epoch(row)
      self._flush()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  def final(self, row: Dict, figures: Sequence[str] = ()) -> None:
    """Writes the test metrics (and `figures`) at the last epoch.

    Also closes each HParams session as finished.
    """
    if self._main is None:
      return
    try:
      self._last_epoch = row.get("epochs_run") or self._last_epoch
      self._scalars(self._main, row, FINAL_TAGS, self._last_epoch)
      for writer, member in zip(self._members, member_rows(row)):
        self._scalars(writer, member, FINAL_TAGS, self._last_epoch)
      _, _, end = tbx_summary.hparams({}, {})
      for writer in self._writers():
        writer.summary(end, self._last_epoch)
      self._flush()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)
    self.figures(figures)

  def figures(self, paths: Sequence[str]) -> None:
    """Writes PNG files as images `figures/<name>` at the last epoch.

    Files that do not exist are skipped.
    """
    if self._main is None:
      return
    try:
      for path in paths:
        if os.path.exists(path):
          name = os.path.splitext(os.path.basename(path))[0]
          self._main.summary(summary_pb2.Summary(value=[
              summary_pb2.Summary.Value(tag=f"figures/{name}",
                                        image=_image(path))]),
                             self._last_epoch)
      self._flush()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(e)

  def close(self) -> None:
    """Closes the files, on disk (idempotent)."""
    error = self._close_all()
    if error is not None:
      self._fail(error)

"""A run's TensorBoard event files, from tensorboardX's protos (no TensorFlow).

The run folder gets metrics.jsonl's rows at their epoch; each member gets a
subfolder named for its settings (`seed=3`) with the same tags. Each writer
opens a new event file, replays the kept rows into it and then deletes the
folder's older event files (a killed predecessor's): each epoch once, from
metrics.jsonl, with no restart for TensorBoard to purge (which it warns of).
Events are flushed as each call returns; a failed write warns once and stops
them, not the run.
"""

import functools
import os
import socket
import struct
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from PIL import Image

# tensorboardX imports PyTorch where installed (about 0.9 s at every start)
# only to accept torch tensors, which no run writes: hide it meanwhile.
_HIDE_TORCH = "torch" not in sys.modules
if _HIDE_TORCH:
  sys.modules["torch"] = None
try:
  # pylint: disable=g-import-not-at-top
  from tensorboardX import summary as tbx_summary
  from tensorboardX.proto import event_pb2
  from tensorboardX.proto import summary_pb2
  from tensorboardX.record_writer import masked_crc32c
finally:
  if _HIDE_TORCH and sys.modules.get("torch", 0) is None:
    del sys.modules["torch"]

# pylint: disable=g-import-not-at-top,g-bad-import-order
from mnist_jax import config as config_lib
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
# Where files are or how processes meet, not what was trained: no hparams.
NOT_HPARAMS = ("workdir", "data_dir", "mnist_dir", "coordinator_address",
               "num_processes", "process_id", "tensorboard")
_COLORSPACES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def members_of(config) -> List[Dict]:
  """The members of a --num_seeds run, [{"seed": s}, ...]; [] for one seed."""
  if config.num_seeds <= 1:
    return []
  return [{"seed": config.seed + i} for i in range(config.num_seeds)]


def members_from_labels(labels: Sequence[Dict]) -> List[Dict]:
  """Members from their metrics.jsonl labels, as Config fields; [] for one."""
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
  """Refuses (UserError) member event folders a resumed run cannot write."""
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
  with Image.open(path) as image, open(path, "rb") as f:
    return summary_pb2.Summary.Image(
        height=image.height, width=image.width,
        colorspace=_COLORSPACES.get(image.mode, 3),
        encoded_image_string=f.read())


class EventFile:
  """One event file: `Event` protos in TFRecord framing, in the caller's
  thread. Only `close` fsyncs (tensorboardX's writers do on every flush, a
  sizeable cost in the shortest epochs)."""

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    now = time.time_ns()  # Names sort by time; no two files share one.
    path = os.path.join(folder, f"events.out.tfevents.{now // 10**9}."
                        f"{socket.gethostname()}.{now}")
    self.path = path
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

  def replaces_older(self) -> None:
    """Once this file is on disk, deletes its folder's older event files."""
    self._file.flush()
    os.fsync(self._file.fileno())
    folder, own = os.path.split(self.path)
    for name in os.listdir(folder):
      if name.startswith("events.out.tfevents.") and name != own:
        os.remove(os.path.join(folder, name))

  def close(self) -> None:
    try:
      self._file.flush()
      os.fsync(self._file.fileno())
    finally:
      self._file.close()


def _guarded(method):
  """A Writer method that does nothing once the writer is off, flushes what
  it wrote, and turns the writer off with one warning when it fails."""
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    if not self._on:  # pylint: disable=protected-access
      return
    try:
      method(self, *args, **kwargs)
      for writer in self._writers():  # pylint: disable=protected-access
        writer.flush()
    except Exception as e:  # pylint: disable=broad-except
      self.close(e)
  return wrapper


class Writer:
  """A run's events: `epoch(row)` for each epoch row of metrics.jsonl,
  `final(row, figures)` at the end, `close()` on every way out."""

  def __init__(self, logdir: str, config: config_lib.Config, *,
               members: Optional[Sequence[Dict]] = None,
               history: Sequence[Dict] = (), enabled: bool = True,
               warn: Optional[Callable[[str], None]] = None):
    """Opens the event files and replays `history` (the kept epoch rows).

    members: each member's label, in the order of a row's `members`; None:
    from config.num_seeds. enabled=False: every method a no-op. warn: prints
    the warning of a failed write (default: to stderr).
    """
    self.logdir = logdir
    self._warn = warn or (lambda text: print(text, file=sys.stderr))
    self._main, self._members, self._last_epoch = None, [], 0
    self._on = enabled
    self._start(config, members, history)

  @_guarded
  def _start(self, config, members, history) -> None:
    members = (members_of(config) if members is None
               else members_from_labels(members))
    self._main = self._open(self.logdir, hparams(config))
    self._members = [self._open(os.path.join(self.logdir, member_name(m)),
                                hparams(config, m)) for m in members]
    for row in history:
      self._epoch(row)
    for writer in self._writers():
      writer.replaces_older()

  @staticmethod
  def _open(path: str, values: Dict) -> EventFile:
    """A new event file, opening the HParams session of `values`."""
    events = EventFile(path)
    events.summary(tbx_summary.hparams(values, {})[1])
    return events

  def _writers(self) -> List[EventFile]:
    return [w for w in [self._main] + self._members if w is not None]

  def _scalars(self, row: Dict, tags: Dict, member_tags: Dict,
               step: int) -> None:
    """In the main file and each member's, a scalar per tag whose key the row
    holds; NaN and inf as they are (a diverging loss is data)."""
    for writer, values, tags_ in [(self._main, row, tags)] + [
        (w, m, member_tags) for w, m in zip(self._members, member_rows(row))]:
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=tag, simple_value=float(values[key]))
          for key, tag in tags_.items() if values.get(key) is not None])
      if summary.value:
        writer.summary(summary, step)

  def _epoch(self, row: Dict) -> None:
    epoch = row.get("epoch")
    if epoch is None or row.get("train_loss") is None:
      return  # Not an epoch row (e.g. the divergence note).
    self._scalars(row, {**EPOCH_TAGS, **SPEED_TAGS}, EPOCH_TAGS, epoch)
    self._last_epoch = epoch

  @_guarded
  def epoch(self, row: Dict) -> None:
    """Writes an epoch row of metrics.jsonl at its epoch."""
    self._epoch(row)

  @_guarded
  def final(self, row: Dict, figures: Sequence[str] = ()) -> None:
    """Writes the test metrics and `figures` at the last epoch; closes each
    HParams session as finished."""
    self._last_epoch = row.get("epochs_run") or self._last_epoch
    self._scalars(row, FINAL_TAGS, FINAL_TAGS, self._last_epoch)
    end = tbx_summary.hparams({}, {})[2]
    for writer in self._writers():
      writer.summary(end, self._last_epoch)
    self.figures(figures)

  @_guarded
  def figures(self, paths: Sequence[str]) -> None:
    """Writes the PNG files that exist as images `figures/<name>`."""
    for path in paths:
      if os.path.exists(path):
        name = os.path.splitext(os.path.basename(path))[0]
        self._main.summary(summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=f"figures/{name}",
                                      image=_image(path))]), self._last_epoch)

  def close(self, error: Optional[Exception] = None) -> None:
    """Closes the files, on disk (idempotent); warns once of `error` (a
    failed write) or else of a failed close."""
    writers, self._main, self._members = self._writers(), None, []
    self._on = False
    for writer in writers:
      try:
        writer.close()
      except Exception as e:  # pylint: disable=broad-except
        error = error or e
    if error is not None:
      self._warn(f"warning: TensorBoard events in {self.logdir} stopped "
                 f"({type(error).__name__}: {error}); training goes on, "
                 "metrics.jsonl has every row")

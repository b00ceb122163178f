"""A run's TensorBoard event files, written by tensorboardX (no TensorFlow).

The run folder gets metrics.jsonl's rows at their epoch, each member of a
--num_seeds or --sweep run a subfolder (`seed=3`), each folder the Config as
HParams. On `resume` a writer opens a new event file, writes the rows
metrics.jsonl keeps and deletes older ones: each epoch once, with no "out of
order event.step" warning that `purge_step` gives, and epochs whose events a
kill lost written again. A failed write warns once and stops the events.
"""

import functools
import glob
import io
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from PIL import Image

from mnist_jax import config as config_lib
from mnist_jax.training import metrics

# tensorboardX imports PyTorch where installed (a second or more) only to
# take torch tensors: hide it.
_HIDE_TORCH = "torch" not in sys.modules
# A None entry makes `import torch` fail (typeshed allows only modules).
sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
try:
  import tensorboardX  # pylint: disable=g-import-not-at-top
finally:
  if _HIDE_TORCH:
    del sys.modules["torch"]
# pylint: disable-next=g-import-not-at-top,g-bad-import-order
from tensorboardX.proto.summary_pb2 import Summary  # noqa: E402 (torch hidden)

FLUSH_S = 0.25  # tensorboardX's thread has events on disk this soon.


def _tags(splits: Sequence[str]) -> Dict[str, str]:
  """metrics.jsonl key -> tag (`<tag>/<split>`) of each metric of `splits`."""
  return {f"{split}_{m.name}": f"{m.tag}/{split}"
          for split in splits for m in metrics.of(split)}


def epoch_tags() -> Dict[str, str]:
  """An epoch row's tags: its metrics (metrics.METRICS, as they are now)."""
  return {**_tags(("train", "val")), "learning_rate": "learning_rate"}


# An epoch resumed mid-way (`partial_steps`) has none: it timed only its rest.
SPEED_TAGS = {"epoch_time_s": "speed/epoch_time_s",
              "examples_per_s": "speed/examples_per_s"}


def final_tags(run: bool = False) -> Dict[str, str]:
  """The final row's tags; `run`: the run's own folder's, with the wall time
  (its program's, not a member's)."""
  return {**_tags(("test",)),
          **({"wall_time_s": "speed/wall_time_s"} if run else {})}
# Where files are or how processes meet, not what was trained: no hparams.
NOT_HPARAMS = ("workdir", "data_dir", "mnist_dir", "coordinator_address",
               "num_processes", "process_id", "tensorboard")


def member_name(values: Dict) -> str:
  """The subfolder of a member: `seed=3`, `seed=3,learning_rate=0.001`."""
  return ",".join(f"{k}={config_lib.value_text(v)}" for k, v in values.items())


def hparams(config, member: Optional[Dict] = None) -> Dict:
  """The Config as HParams values; a member is a single run."""
  values = {**config.to_dict(), **({**member, "num_seeds": 1} if member else {})}
  return {k: config_lib.value_text(v) if isinstance(v, (list, tuple)) else v
          for k, v in values.items() if k not in NOT_HPARAMS and v is not None}


def _guarded(method):
  """A Writer method that does nothing once the writer is off, and turns it
  off with one warning when it fails."""
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    if self._on:  # pylint: disable=protected-access
      try:
        method(self, *args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        self.close(e)
  return wrapper


class Writer:
  """The events of metrics_log.MetricsLog's rows (`resume` opens the files);
  members: each member's label ({"seed": 3}), as in a row."""

  def __init__(self, logdir: str, config: config_lib.Config,
               members: Sequence[Dict] = ()):
    self.logdir, self._config = logdir, config
    self._writers: List[Any] = []
    self._members = [{k: v for k, v in m.items() if k in config_lib.FIELDS}
                     for m in members] if len(members) > 1 else []
    self._last_epoch = 0
    self._on = True

  @_guarded
  def resume(self, rows: Sequence[Dict] = ()) -> None:
    """Opens the event files with `rows` (those metrics.jsonl keeps), then
    deletes the older ones (kept where a folder cannot be written)."""
    older = []
    for path, values in [(self.logdir, hparams(self._config))] + [
        (os.path.join(self.logdir, member_name(m)), hparams(self._config, m))
        for m in self._members]:
      older += glob.glob(os.path.join(glob.escape(path), "events.out.tfevents.*"))
      # max_queue=0: unbounded, so a failed writer thread cannot block a run.
      writer = tensorboardX.SummaryWriter(
          path, max_queue=0, flush_secs=FLUSH_S,
          filename_suffix=f".{time.time_ns()}")  # Sorts after the older.
      self._writers.append(writer)
      writer.file_writer.add_summary(tensorboardX.summary.hparams(values, {})[1])
    for name in older:
      os.remove(name)
    for row in rows:
      self.write(row)

  def _scalars(self, row: Dict, tags: Dict, member_tags: Dict, step) -> None:
    """A scalar per tag the row holds, in the run's and members' folders;
    NaN and inf as they are."""
    members = row.get("members") or row.get("replicas") or []  # Older rows.
    for writer, values, tags_ in zip(self._writers, [row] + members,
                                     [tags] + [member_tags] * len(members)):
      for key, tag in tags_.items():
        if values.get(key) is not None:
          writer.add_scalar(tag, float(values[key]), step)

  @_guarded
  def write(self, row: Dict) -> None:
    """An epoch's row at its epoch; the final row's test metrics at the last
    epoch, ending each HParams session; nothing of a divergence's row."""
    if "test_accuracy" in row:
      self._last_epoch = row.get("epochs_run") or self._last_epoch
      self._scalars(row, final_tags(run=True), final_tags(), self._last_epoch)
      for writer in self._writers:
        writer.file_writer.add_summary(
            tensorboardX.summary.hparams({}, {})[2], self._last_epoch)
    elif row.get("epoch") is not None and row.get("train_loss") is not None:
      self._scalars(row, {**epoch_tags(), **({} if row.get("partial_steps")
                                           else SPEED_TAGS)},
                    epoch_tags(), row["epoch"])
      self._last_epoch = row["epoch"]

  @_guarded
  def figures(self) -> None:
    """The run folder's PNG files, as images `figures/<name>`: each file's
    bytes as they are (add_image would decode and encode them again)."""
    for name in sorted(os.listdir(self.logdir)):
      path = os.path.join(self.logdir, name)
      if name.endswith(".png") and os.path.isfile(path):
        with open(path, "rb") as f:
          png = f.read()
        with Image.open(io.BytesIO(png)) as image:  # Its header only.
          (width, height), bands = image.size, len(image.getbands())
        image = Summary.Image(height=height, width=width, colorspace=bands,
                              encoded_image_string=png)
        self._writers[0].file_writer.add_summary(Summary(value=[Summary.Value(
            tag=f"figures/{name[:-4]}", image=image)]), self._last_epoch)

  def close(self, error: Optional[Exception] = None) -> None:
    """Closes the files (idempotent); warns once of `error` (a failed write)
    or of a failed close."""
    writers, self._writers, self._on = self._writers, [], False
    for writer in writers:
      try:
        writer.close()
      except Exception as e:  # pylint: disable=broad-except
        error = error or e
    if error is not None:
      print(f"warning: TensorBoard events in {self.logdir} stopped "
            f"({type(error).__name__}: {error}); training goes on, "
            "metrics.jsonl has every row", file=sys.stderr)

"""Checkpoints: the train state's `PARTS` (its arrays less the random streams,
which derive from the seeds) under orbax's CheckpointManager, with a JSON
record (`record`: where the run stands, the model, SHA-256 digests of arrays
and record). `restore` is the one way a run folder's state is read back; only
verified damage is called damage.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import sys
import time
from typing import Optional, Tuple

import jax
import numpy as np

from mnist_jax.errors import UserError, first_line
from mnist_jax.rundir import resume
from mnist_jax.training import train

CHECKPOINT_DIR = resume.CHECKPOINT_DIR
FORMAT = 3
PARTS = tuple(f.name for f in dataclasses.fields(train.TrainState)
              if f.metadata.get("pytree_node", True) and f.name != "keys")


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or does not fit this model."""


def _not_orbax_leftover(record: logging.LogRecord) -> bool:
  """False for what asyncio logs of orbax's abandoned reads (a future's
  tensorstore error never retrieved, a callback on a closed loop)."""
  text = f"{record.getMessage()} {record.exc_info and record.exc_info[1]!r}"
  return not any(s in text for s in ("tensorstore", f"{os.sep}orbax{os.sep}",
                                     "Event loop is closed"))


@functools.cache
def _orbax():
  """orbax.checkpoint, imported on first use (it is slow). What it echoes of
  failures it raises itself stays off the terminal, however late it comes:
  its absl lines, and after a failed read, its asyncio tasks' errors and
  "Event loop is closed" from the callbacks of reads still in flight."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").addFilter(
      lambda r: f"{os.sep}orbax{os.sep}" not in r.pathname)
  logging.getLogger("asyncio").addFilter(_not_orbax_leftover)
  hook = sys.unraisablehook
  sys.unraisablehook = lambda u: None if (
      isinstance(u.exc_value, RuntimeError) and
      str(u.exc_value) == "Event loop is closed") else hook(u)
  return ocp


@contextlib.contextmanager
def _quiet_read():
  """Some of those callbacks print to stderr from their threads: within, and
  for 0.5 s after a failure, stderr goes nowhere."""
  with contextlib.redirect_stderr(io.StringIO()):
    try:
      yield
    except BaseException:
      time.sleep(0.5)
      raise


def tree(state) -> dict:
  """What a checkpoint holds of a train state (host or device arrays)."""
  return {part: getattr(state, part) for part in PARTS}


def _host(tree_):
  return jax.tree.map(np.asarray, jax.device_get(tree_))


def digest(tree_) -> str:
  """SHA-256 over every array: damage orbax reads back silently."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree_):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8))
  return h.hexdigest()


def _meta_checksum(meta: dict) -> str:
  body = {k: v for k, v in meta.items() if k != "meta_checksum"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def param_shapes(params) -> dict:
  """{"hidden_0/kernel": [784, 512], ...}: a model's fingerprint."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(np.shape(v))
          for path, v in flat}


class Checkpointer:
  """(tree, meta) pairs under `workdir/checkpoints/<step>`, the newest `keep`
  kept; `read_only` touches nothing on disk."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = resume.checkpoint_dir(workdir)
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} is a file where the run's "
                            "checkpoint folder goes; move it away, or pass "
                            "another --workdir")
    self._read_only, self._keep = read_only, keep
    if read_only:
      self._manager  # pylint: disable=pointless-statement  # Fail now.

  @functools.cached_property
  def _manager(self):
    ocp, ro = _orbax(), self._read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if ro else self._keep, create=not ro, read_only=ro,
        enable_async_checkpointing=not ro, cleanup_tmp_directories=not ro)
    if jax.process_count() > 1:  # Only process 0 writes: nobody waits.
      if not ro:
        os.makedirs(self.directory, exist_ok=True)
      process = jax.process_index()
      options = dataclasses.replace(
          options, create=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=process, active_processes={process}))
    try:
      return ocp.CheckpointManager(self.directory, options=options, item_handlers={
          "state": ocp.StandardCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler()})
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot open the checkpoints in {self.directory} ({first_line(e)}); "
          "check that this user can read and write that folder, or pass "
          "another --workdir") from None

  def _where(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _edited(self) -> str:
    config = os.path.join(os.path.dirname(self.directory), "config.json")
    return (f"{config} no longer holds the settings the run was trained "
            "with (was it edited?); nothing was changed: put back its "
            "settings, or pass another --workdir")

  def save(self, step: int, state_tree: dict, meta: dict) -> None:
    """Starts an atomic save in the background; `close` finishes it (a full
    disk, which orbax reports as text, reaches resources.failure)."""
    ocp, host = _orbax(), _host(state_tree)
    meta = {**meta, "format": FORMAT,
            "digest": digest([host[k] for k in sorted(host)])}
    meta["meta_checksum"] = _meta_checksum(meta)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)),
                       force=True)

  def latest_step(self) -> Optional[int]:
    try:
      return self._manager.latest_step()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot list the checkpoints in {self.directory} "
                            f"({first_line(e)}); check that this user can read "
                            "that folder, or pass another --workdir") from None

  def _damaged(self, step: int, why: str) -> CheckpointError:
    earlier = [s for s in self._manager.all_steps() if s < step]
    advice = (f"delete that folder to go back to the checkpoint before it, "
              f"{self._where(max(earlier))}" if earlier else
              "the run has no earlier checkpoint to go back to: pass another "
              "--workdir to train anew")
    return CheckpointError(f"the checkpoint {self._where(step)} is damaged or "
                           f"truncated ({why}); {advice}")

  def _read(self, step: int, item: str, template=None):
    """Checkpoint `step`'s "meta" or "state" (the parts of `template` it has,
    as host arrays); CheckpointError for a file this user cannot read."""
    ocp = _orbax()
    try:
      with _quiet_read():
        args = ocp.args.JsonRestore() if item == "meta" else (
            ocp.args.StandardRestore(template and jax.tree.map(
                lambda x: np.zeros(np.shape(x), x.dtype),  # Read whole.
                {k: template[k] for k in
                 self._manager.item_metadata(step)["state"].tree})))
        return self._manager.restore(
            step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception:  # pylint: disable=broad-except
      for root, _, names in os.walk(self._where(step)):
        for path in (root, *(os.path.join(root, n) for n in names)):
          if not os.access(path, os.R_OK):
            raise CheckpointError(
                f"{path} cannot be read by this user (permission denied); "
                f"give read access to {self.directory}, or pass another "
                "--workdir") from None
      raise

  def _meta(self, step: int) -> Tuple[Optional[dict], Optional[str]]:
    """(checkpoint `step`'s record, None), or (None, why it is damaged)."""
    try:
      meta = self._read(step, "meta")
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      return None, f"its meta record does not read back: {first_line(e)}"
    if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
      return None, "its meta record has no epoch"
    if meta.get("meta_checksum") != _meta_checksum(meta):
      return None, "its meta record does not match the checksum saved with it"
    return meta, None

  def damage(self, step: int) -> Optional[str]:
    """Why checkpoint `step` is damaged, or None when its record and arrays
    read back (their digest needs the run's template)."""
    why = self._meta(step)[1]
    if why is None:
      try:
        self._read(step, "state")
      except (CheckpointError, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        why = f"its arrays do not read back: {first_line(e)}"
    return why

  def read_meta(self, step: Optional[int] = None) -> Tuple[int, dict]:
    """(step, meta record) of a checkpoint (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.directory}; "
                            "train the run first (its training command, with "
                            "this --workdir)")
    meta, why = self._meta(step)
    if why:
      raise self._damaged(step, why)
    return step, {k: v for k, v in meta.items() if k != "meta_checksum"}

  def restore(self, template: dict, step: Optional[int] = None,
              model: Optional[str] = None) -> Tuple[dict, dict]:
    """(the parts `template` (`tree` of a fresh state) has, as host arrays;
    the meta record). CheckpointError: none, damaged (verified), or of another
    model, format or structure, which the message tells apart."""
    step, meta = self.read_meta(step)
    where, written = self._where(step), meta.get("format", 1)
    if written != FORMAT:
      newer = isinstance(written, int) and written > FORMAT
      raise CheckpointError(
          f"the checkpoint {where} was written by "
          f"{'a newer' if newer else 'an older'} mnist_jax (checkpoint format "
          f"{written}; this one reads {FORMAT}); use "
          f"{'a newer mnist_jax' if newer else 'the mnist_jax that wrote it'}"
          " to resume or report on it, or pass another --workdir")
    if model is not None and meta.get("model", model) != model:
      raise CheckpointError(
          f"the checkpoint {where} was written by model {meta['model']!r}, not "
          f"{model!r}; {self._edited()}")
    want, have = param_shapes(template["params"]), meta.get("param_shapes")
    if have is not None and have != want:
      diff = [k for k in sorted(set(have) | set(want))
              if have.get(k) != want.get(k)]
      raise CheckpointError(
          f"the checkpoint {where} holds another model's parameters "
          f"({diff[0]}: {have.get(diff[0])} in the checkpoint, "
          f"{want.get(diff[0])} here; {len(diff)} differences); "
          f"{self._edited()}")
    try:
      restored = self._read(step, "state", template)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      why = self.damage(step)
      raise (self._damaged(step, why) if why else CheckpointError(
          f"the checkpoint {where} is intact but does not fit this run's "
          f"train state ({first_line(e)}); {self._edited()}")) from None
    if digest([restored[k] for k in sorted(restored)]) != meta.get("digest"):
      raise self._damaged(step, "its arrays do not match the checksum saved "
                          "with them")
    return {**_host(template), **restored}, meta

  def close(self) -> None:
    """Waits for the last save to finish."""
    if "_manager" in self.__dict__:
      self._manager.wait_until_finished()
      self._manager.close()


def restore(workdir: str, state, model: Optional[str] = None):
  """(`state` with the parts of the latest checkpoint, as host arrays; its
  record): the one restore, to train on or to report on."""
  with contextlib.closing(Checkpointer(workdir, read_only=True)) as reader:
    if reader.latest_step() is None:
      raise CheckpointError(
          f"{workdir} has no checkpoint yet (its training stopped before the "
          f"first was saved); train it first: {resume.train_command(workdir)}")
    parts, meta = reader.restore(tree(state), model=model)
  return state.replace(**parts), meta


def record(config, *, epoch: int, step: int, shapes: dict, epoch_step: int = 0,
           sums=None, done: bool = False,
           time_s: Optional[float] = None) -> dict:
  """A checkpoint's meta record: `epoch` epochs done, `epoch_step` steps of
  the next with their metric `sums`, the run's seconds so far (`time_s`)."""
  meta = {"epoch": epoch, "epoch_step": epoch_step, "step": step,
          "model": config.model, "seed": config.seed, "done": done,
          "param_shapes": shapes}
  if time_s is not None:
    meta["time_s"] = time_s
  if sums is not None:
    meta["sums"] = {k: np.asarray(v).tolist()
                    for k, v in jax.device_get(sums).items()}
  return meta


def check_fits(meta: dict, state_step: int, steps: int, epochs: int,
               where: str) -> None:
  """Refuses a record that does not fit this run's epochs and data."""
  epoch, epoch_step = meta.get("epoch"), meta.get("epoch_step", 0)
  if (not isinstance(epoch_step, int) or not 0 <= epoch_step < steps or
      not 0 <= epoch <= epochs or
      meta.get("step") != epoch * steps + epoch_step or
      state_step != meta.get("step") or
      (epoch_step and not isinstance(meta.get("sums"), dict))):
    raise CheckpointError(
        f"the latest checkpoint in {where} (step {meta.get('step')}, epoch "
        f"{epoch}) does not fit this run's {steps} steps per epoch (were the "
        "data or the batch size changed?); resume with the data and "
        "--batch_size it was trained with, or pass another --workdir")

"""Checkpoints: orbax files of the train state, checked on restore.

A checkpoint, named by its global step, holds the state's `PARTS` (the random
streams derive from the seeds) and a JSON record: epochs done, steps into the
next epoch with their metric sums, the model, the parameter shapes, a SHA-256
of the arrays, the format. A part it lacks takes the fresh state's value;
format 2 (the TrainState itself) is read too. Restores read every array whole
into host memory. Only verified damage is called damage: no message advises
deleting a healthy checkpoint.
"""

import contextlib
import dataclasses
import gc
import hashlib
import inspect
import io
import json
import logging
import os
import sys
import time
from typing import Optional, Tuple

import jax
import numpy as np

from mnist_jax.errors import UserError
from mnist_jax.rundir import files
from mnist_jax.rundir import folder as folder_lib

CHECKPOINT_DIR = folder_lib.CHECKPOINT_DIR
FORMAT = 3
PARTS = ("step", "params", "model_state", "opt_state")


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or does not fit this model."""


def _orbax():
  """orbax.checkpoint on first use: its import is slow."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def tree(state) -> dict:
  """What a checkpoint holds of a train state (host or device arrays)."""
  return {part: getattr(state, part) for part in PARTS}


@contextlib.contextmanager
def _quiet():
  """Sends orbax's stray output while it reads or writes to the debug log: a
  failed read of a damaged checkpoint closes orbax's event loop with reads in
  flight, whose callbacks print "Event loop is closed" tracebacks from other
  threads, and abandoned coroutines complain when collected."""
  sink = io.StringIO()
  saved = sys.stderr, sys.unraisablehook, sys.excepthook
  hush = lambda record: print(record.getMessage(), file=sink) and False
  sys.stderr = sink
  sys.unraisablehook = lambda u: print(repr(u.exc_value), file=sink)
  sys.excepthook = lambda *e: print(repr(e[1]), file=sink)
  for name in ("asyncio", "absl"):
    logging.getLogger(name).addFilter(hush)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed or sink.tell():
      time.sleep(0.5)  # Stray callbacks land shortly after a failure.
      gc.collect()
      for obj in gc.get_objects():  # Suspended reads would print at exit.
        if (inspect.iscoroutine(obj) and f"{os.sep}orbax{os.sep}" in
            obj.cr_code.co_filename and inspect.getcoroutinestate(obj) ==
            inspect.CORO_SUSPENDED):
          with contextlib.suppress(BaseException):
            obj.close()
    for name in ("asyncio", "absl"):
      logging.getLogger(name).removeFilter(hush)
    sys.stderr, sys.unraisablehook, sys.excepthook = saved
    if sink.getvalue():
      logging.debug("orbax's stray output:\n%s", sink.getvalue())


@contextlib.contextmanager
def _writer_hush():
  """While a writer is open, orbax's echoes of a failed save (tracebacks its
  threads log, "Event loop is closed") stay off the terminal: the failure
  itself is raised where the run saves or closes."""
  def logged(record):
    return not (record.levelno >= logging.ERROR and
                f"{os.sep}orbax{os.sep}" in record.pathname)
  def closed(value):
    return (isinstance(value, RuntimeError) and
            str(value) == "Event loop is closed")
  hooks = sys.excepthook, sys.unraisablehook
  sys.excepthook = lambda k, v, tb: closed(v) or hooks[0](k, v, tb)
  sys.unraisablehook = lambda u: closed(u.exc_value) or hooks[1](u)
  logging.getLogger("absl").addFilter(logged)
  try:
    yield
  finally:
    logging.getLogger("absl").removeFilter(logged)
    sys.excepthook, sys.unraisablehook = hooks


def _meta_checksum(meta: dict) -> str:
  body = {k: v for k, v in meta.items() if k != "meta_checksum"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _host(tree_):
  """Host numpy copies of a tree's arrays."""
  return jax.tree.map(np.asarray, jax.device_get(tree_))


def digest(tree_) -> str:
  """SHA-256 over every array: catches damage orbax reads back silently."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree_):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8))
  return h.hexdigest()


def param_shapes(params) -> dict:
  """{"hidden_0/kernel": [784, 512], ...}: a model's fingerprint."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(np.shape(v))
          for path, v in flat}


def _reason(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _meta_damage(meta) -> Optional[str]:
  if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
    return "its meta record has no epoch"
  if "meta_checksum" in meta and meta["meta_checksum"] != _meta_checksum(meta):
    return "its meta record does not match the checksum saved with it"
  return None


def _from_format2(raw: dict, template: dict) -> dict:
  """A format-2 checkpoint (the TrainState) as `template`'s parts: the
  optimizer's inner states by position (nested chains then, flat now) when
  their shapes match; else opt_state None (report and predict need no more)."""
  out = dict(template, step=raw["step"], params=raw["params"])
  old, new = raw["opt_state"], template["opt_state"]
  leaves = jax.tree.leaves(old["inner_state"])
  if [np.shape(x) for x in leaves] != [
      np.shape(x) for x in jax.tree.leaves(new.inner_state)]:
    return dict(out, opt_state=None)
  inner = jax.tree.unflatten(jax.tree.structure(new.inner_state), leaves)
  out["opt_state"] = new._replace(count=old["count"], inner_state=inner)
  return out


class Checkpointer:
  """(tree, meta) pairs under `workdir/checkpoints/<step>`; `read_only`
  touches nothing on disk."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = folder_lib.checkpoint_dir(workdir)
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} is a file where the run's "
                            "checkpoint folder goes; move it away, or pass "
                            "another --workdir")
    self._read_only, self._keep, self._manager_ = read_only, keep, None
    self._hush = None  # _writer_hush(), entered on the first save.
    if read_only:
      self._manager  # pylint: disable=pointless-statement  # Fail now.

  @property
  def _manager(self):
    if self._manager_ is not None:
      return self._manager_
    ocp, ro = _orbax(), self._read_only
    logging.getLogger("absl").setLevel(logging.ERROR)
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
      self._manager_ = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot open the checkpoints in {self.directory} ({_reason(e)}); "
          "check that this user can read and write that folder, or pass "
          "another --workdir") from None
    return self._manager_

  def _where(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _edited(self) -> str:
    config = os.path.join(os.path.dirname(self.directory), "config.json")
    return (f"{config} no longer holds the settings the run was trained "
            "with (was it edited?); nothing was changed: put back its "
            "settings, or pass another --workdir")

  @contextlib.contextmanager
  def _saving(self):
    """A full disk, which orbax reports as text, raised as an OSError."""
    try:
      with _quiet():
        yield
    except Exception as e:  # pylint: disable=broad-except
      code = files.no_space(e)
      if code is not None and not isinstance(e, OSError):
        raise files.no_space_error(code, self.directory) from e
      raise

  def save(self, step: int, state_tree: dict, meta: dict) -> None:
    """Starts an atomic save in the background; `close` finishes it."""
    host = _host(state_tree)
    meta = {**meta, "format": FORMAT,
            "digest": digest([host[k] for k in sorted(host)])}
    meta["meta_checksum"] = _meta_checksum(meta)
    ocp, manager = _orbax(), self._manager
    if self._hush is None:
      self._hush = contextlib.ExitStack()
      self._hush.enter_context(_writer_hush())
    with self._saving():
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)),
                   force=True)

  def latest_step(self) -> Optional[int]:
    try:
      return self._manager.latest_step()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot list the checkpoints in {self.directory} "
                            f"({_reason(e)}); check that this user can read "
                            "that folder, or pass another --workdir") from None

  def _damaged(self, step: int, why: str) -> CheckpointError:
    earlier = [s for s in folder_lib.complete_steps(self.directory) if s < step]
    advice = (f"delete that folder to go back to the checkpoint before it, "
              f"{self._where(max(earlier))}" if earlier else
              "the run has no earlier checkpoint to go back to: pass another "
              "--workdir to train anew")
    return CheckpointError(f"the checkpoint {self._where(step)} is damaged or "
                           f"truncated ({why}); {advice}")

  def _arrays(self, step: int, template=None) -> dict:
    """The state of checkpoint `step` as host arrays: the parts `template`
    has (each saved part must be one of them), or all without one."""
    ocp = _orbax()
    with _quiet():
      saved = ocp.StandardCheckpointHandler().metadata(
          self._manager.directory / str(step) / "state").tree
      # Host zeros: orbax reads each leaf whole into them.
      target = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype),
                            saved if template is None else
                            {k: template[k] for k in saved})
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]

  def damage(self, step: int) -> Optional[str]:
    """Why checkpoint `step` is damaged, or None when its meta record and
    every array read back whole."""
    try:
      with open(os.path.join(self._where(step), "meta", "metadata"), "rb") as f:
        meta = json.loads(f.read().decode())
    except FileNotFoundError:
      return "its meta record is missing"
    except PermissionError:
      return None
    except (OSError, ValueError) as e:
      return f"its meta record is unreadable: {_reason(e)}"
    why = _meta_damage(meta)
    if why:
      return why
    try:
      self._arrays(step)
    except (MemoryError, PermissionError):
      return None
    except Exception as e:  # pylint: disable=broad-except
      if any(c in str(e) for c in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED")):
        return None
      return f"its arrays do not read back: {_reason(e)}"
    return None

  def _failure(self, step: int, e: Exception) -> CheckpointError:
    """Damaged only when `damage` finds it so; else what does not fit."""
    for root, _, names in os.walk(self._where(step)):
      for name in [".", *names]:
        path = os.path.normpath(os.path.join(root, name))
        if not os.access(path, os.R_OK):
          return CheckpointError(
              f"{path} cannot be read by this user (permission denied); give "
              f"read access to {self.directory}, or pass another --workdir")
    why = self.damage(step)
    if why is not None:
      return self._damaged(step, why)
    return CheckpointError(
        f"the checkpoint {self._where(step)} is intact but does not fit this "
        f"run's train state ({_reason(e)}); {self._edited()}")

  def read_meta(self, step: Optional[int] = None) -> Tuple[int, dict]:
    """(step, meta record) of a checkpoint (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.directory}; "
                            "train the run first (its training command, with "
                            "this --workdir)")
    ocp = _orbax()
    try:
      with _quiet():
        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(step, e) from None
    why = _meta_damage(meta)
    if why:
      raise self._damaged(step, why)
    return step, {k: v for k, v in meta.items() if k != "meta_checksum"}

  def restore(self, template: dict, step: Optional[int] = None,
              model: Optional[str] = None) -> Tuple[dict, dict]:
    """(the parts `template` has, as host arrays; the meta record).

    template: `tree` of a fresh state of the run's model (arrays or
    ShapeDtypeStructs); parts the checkpoint lacks keep the template's.
    Raises CheckpointError: none, damaged (verified), or of another model,
    format or structure, which the message tells apart.
    """
    step, meta = self.read_meta(step)
    where, written = self._where(step), meta.get("format", 1)
    if written not in (2, FORMAT):
      newer = isinstance(written, int) and written > FORMAT
      raise CheckpointError(
          f"the checkpoint {where} was written by "
          f"{'a newer' if newer else 'an older'} mnist_jax (checkpoint format "
          f"{written}; this one reads 2 and {FORMAT}); use "
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
      restored = self._arrays(step, None if written == 2 else template)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(step, e) from None
    order = ("step", "params", "opt_state", "rng") if written == 2 else sorted(
        restored)  # Format 2 hashed the TrainState's fields in their order.
    if "digest" in meta and digest([restored[k] for k in order]) != (
        meta["digest"]):
      raise self._damaged(step, "its arrays do not match the checksum saved "
                          "with them")
    if written == 2:
      return _from_format2(restored, _host(template)), meta
    return {**_host(template), **restored}, meta

  def close(self) -> None:
    """Waits for the last save to finish."""
    try:
      if self._manager_ is not None:
        with self._saving():
          self._manager_.wait_until_finished()
          self._manager_.close()
    finally:
      if self._hush is not None:
        self._hush.close()
        self._hush = None


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

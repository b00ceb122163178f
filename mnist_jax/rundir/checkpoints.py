"""Checkpoints: orbax files of the full train state, and resuming from them.

Each checkpoint, named by its global step, holds the TrainState (params,
optimizer state, step, dropout key) and a JSON record of where the run stands:
`epoch` (epochs completed), `epoch_step` (steps done in the next epoch, for a
checkpoint taken mid-epoch on preemption) with that epoch's partial metric sums,
the model name, the parameter shapes (to refuse another model's checkpoint
with a clear message) and the format number of the state's layout (`FORMAT`).
Orbax writes into a temporary folder and renames it when complete, so a
process killed mid-save leaves the previous checkpoint intact.

A checkpoint is restored whole into host memory, whatever devices or
processes wrote it (one device, pmap, sharded, members split over devices,
several processes): the sharding orbax saved with it never decides where it
goes, and the engine places it on the devices at hand (devices.py). A restore
that fails is called damaged only when the checkpoint is verified damaged (a
checksum mismatch, a missing, truncated or unparsable file); any other
failure says what does not match, and no message advises deleting a healthy
checkpoint.

Resuming (`restore`, `Start`, `Saver`): the meta record (`record`) says how
far the run got, `Start` turns it into where the loop begins. The data order
and dropout keys are pure functions of (key, epoch, step), so the resumed run
ends bit for bit where an uninterrupted one would.
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
import warnings
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.errors import UserError
from mnist_jax.rundir import files
from mnist_jax.rundir import folder as folder_lib

CHECKPOINT_DIR = folder_lib.CHECKPOINT_DIR
# The layout of the saved train state. 2: every hyperparameter in the optimizer
# state (optim.py); a checkpoint without a format number is 1.
FORMAT = 2


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or does not fit this model."""


def _orbax():
  """orbax.checkpoint, imported on first use: its import is slow, and a fresh
  run should not pay for it before its first step (tests/test_startup.py)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


# How long a failed restore waits for orbax's stray callbacks, which land
# shortly after the failure, before the error is raised.
_STRAY_GRACE_S = 0.5


@contextlib.contextmanager
def _stray_output_to_log():
  """Keeps orbax's stray tracebacks off the terminal while it restores.

  When one read of a damaged checkpoint fails, orbax closes its event loop
  while tensorstore's other reads are in flight; their callbacks then print
  "RuntimeError: Event loop is closed" tracebacks from tensorstore threads, and
  the abandoned coroutines and tasks report their errors when collected
  (asyncio's "Task exception was never retrieved"), sometimes even when the
  restore itself succeeds. That text goes to the debug log instead, so a
  damaged checkpoint is the one-line CheckpointError and nothing else.
  """
  sink = io.StringIO()
  saved = sys.stderr, sys.unraisablehook
  asyncio_log = logging.getLogger("asyncio")

  def to_sink(record):
    print(record.getMessage(), file=sink)
    return False

  sys.stderr = sink
  sys.unraisablehook = lambda unraisable: print(
      f"{unraisable.err_msg or 'unraisable'}: {unraisable.exc_value!r}",
      file=sink)
  asyncio_log.addFilter(to_sink)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed or sink.tell():
      time.sleep(_STRAY_GRACE_S)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _close_abandoned_reads()
      for w in caught:
        print(w.message, file=sink)
    asyncio_log.removeFilter(to_sink)
    sys.stderr, sys.unraisablehook = saved
    if sink.getvalue():
      logging.debug("orbax's stray output while restoring:\n%s", sink.getvalue())


class _QuietWriter(logging.Filter):
  """Keeps orbax's echoes of a failed save off the terminal while a writer
  is open.

  A save that fails (a full disk, say) raises in the thread that saves or
  waits, and the run reports it in one line. Before that, orbax's threads log
  the same failure with tracebacks, and tensorstore's threads, whose event
  loop orbax closed, print "Event loop is closed" through sys.excepthook.
  Both go to the debug log instead.
  """

  def __init__(self):
    super().__init__()
    self._hook = self._unraisable_hook = None

  def filter(self, record: logging.LogRecord) -> bool:
    if (record.levelno >= logging.ERROR and
        f"{os.sep}orbax{os.sep}" in record.pathname):
      logging.getLogger(__name__).debug("orbax: %s", record.getMessage())
      return False
    return True

  @staticmethod
  def _closed_loop(value) -> bool:
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      logging.getLogger(__name__).debug("tensorstore: %r", value)
      return True
    return False

  def _excepthook(self, kind, value, tb) -> None:
    if not self._closed_loop(value):
      self._hook(kind, value, tb)

  def _unraisablehook(self, unraisable) -> None:
    if not self._closed_loop(unraisable.exc_value):
      self._unraisable_hook(unraisable)

  def __enter__(self) -> "_QuietWriter":
    logging.getLogger("absl").addFilter(self)
    self._hook, sys.excepthook = sys.excepthook, self._excepthook
    self._unraisable_hook = sys.unraisablehook
    sys.unraisablehook = self._unraisablehook
    return self

  def __exit__(self, *exc) -> None:
    logging.getLogger("absl").removeFilter(self)
    # pylint: disable=comparison-with-callable
    if sys.excepthook == self._excepthook:
      sys.excepthook = self._hook
    if sys.unraisablehook == self._unraisablehook:
      sys.unraisablehook = self._unraisable_hook


@contextlib.contextmanager
def _saving(directory: str):
  """Around orbax's save calls: its stray output to the debug log, and a full
  disk (which orbax and tensorstore report as ValueError text) as the
  OSError (ENOSPC, EFBIG) it is, naming the checkpoint folder."""
  try:
    with _stray_output_to_log():
      yield
  except Exception as e:  # pylint: disable=broad-except
    code = files.no_space(e)
    if code is not None and not isinstance(e, OSError):
      raise files.no_space_error(code, directory) from e
    raise


def _close_abandoned_reads() -> None:
  """Finishes orbax's read coroutines that a failed restore left suspended.

  Still referenced from tensorstore's pending callbacks, they would otherwise
  be finalised at interpreter exit, each printing "Exception ignored in:
  <coroutine ...>" and a traceback long after the error was reported.
  """
  gc.collect()
  for obj in gc.get_objects():
    if (inspect.iscoroutine(obj) and
        inspect.getcoroutinestate(obj) == inspect.CORO_SUSPENDED and
        f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename):
      try:
        obj.close()
      except BaseException:  # pylint: disable=broad-except
        pass  # orbax re-raises GeneratorExit as its own read error


def _meta_checksum(meta: dict) -> str:
  """sha256 of the meta record without its checksum, keys sorted."""
  body = {k: v for k, v in meta.items() if k != "meta_checksum"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _host_target(template):
  """Host zeros shaped like `template` (arrays, ShapeDtypeStructs, scalars).

  Orbax reads each leaf whole into such a target, whatever devices wrote it;
  a target with device shardings (or none) would make it place the leaves as
  the sharding saved with them says, on devices this process may not have.
  """
  def zeros(x):
    x = x if hasattr(x, "dtype") else jnp.asarray(x)
    return np.zeros(x.shape, x.dtype)
  return jax.tree.map(zeros, template)


def param_shapes(params) -> dict:
  """{"Dense_0/kernel": [784, 10], ...}: a model's fingerprint, for the meta."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(np.shape(v))
          for path, v in flat}


def _as_arrays(tree):
  """Python and numpy scalars (a fresh TrainState's step) as JAX arrays."""
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)


def _c_order_parts(leaf):
  """An array's bytes in C order, as host arrays, without assembling it.

  An array split over devices along its first axis only (the stacked state of
  --num_seeds replicas) is read shard by shard, in order; anything else whole.
  """
  shards = getattr(leaf, "addressable_shards", ())
  if len(shards) > 1 and leaf.ndim and leaf.is_fully_addressable:
    starts = {}
    for shard in shards:
      first, *rest = shard.index
      if any(r != slice(None) for r in rest):
        break
      starts.setdefault(first.start or 0, shard)
    else:
      parts = [starts[k] for k in sorted(starts)]
      if sum(p.data.shape[0] for p in parts) == leaf.shape[0]:
        return [np.asarray(p.data) for p in parts]
  return [np.asarray(jax.device_get(leaf))]


def state_digest(state) -> str:
  """SHA-256 over every array of the state: restore checks it to catch damage
  that orbax reads back without complaint (flipped bytes in the data files)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(_as_arrays(state)):
    h.update(f"{np.dtype(leaf.dtype).str}{tuple(leaf.shape)}".encode())
    for part in _c_order_parts(leaf):
      h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))
  return h.hexdigest()


def _reason(e: Exception) -> str:
  text = str(e).strip()
  return (text.splitlines()[0][:200] if text else "") or type(e).__name__


def _meta_damage(meta) -> Optional[str]:
  """Why a checkpoint's meta record is damaged, or None if it is whole."""
  if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
    return "its meta record has no epoch"
  if "meta_checksum" in meta and meta["meta_checksum"] != _meta_checksum(meta):
    return "its meta record does not match the checksum saved with it"
  return None


def _host_local(tree):
  """With several processes, numpy copies: orbax refuses host-local jax.Arrays."""
  return jax.device_get(tree) if jax.process_count() > 1 else tree


class Checkpointer:
  """Saves and restores `(state, meta)` pairs under `workdir/checkpoints/<step>`.

  `read_only=True` touches nothing on disk: use it to check a checkpoint
  before deciding to write anything.
  """

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} is a file where the run's "
                            "checkpoint folder goes; move it away, or pass "
                            "another --workdir")
    self._read_only = read_only
    self._keep = keep
    self._cached_manager = None
    self._quiet = None  # The log filter of a writer, until close().
    if read_only:
      self._manager  # pylint: disable=pointless-statement  # Fail now, not later.

  @property
  def _manager(self):
    """The orbax manager, made on first use (a writer first needs it to save)."""
    if self._cached_manager is not None:
      return self._cached_manager
    ocp = _orbax()
    read_only = self._read_only
    # Orbax warns about every read-only option it adjusts; those are intended.
    logging.getLogger("absl").setLevel(logging.ERROR)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else self._keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=not read_only,
        cleanup_tmp_directories=not read_only)
    if jax.process_count() > 1:
      # Only process 0 checkpoints, host-local copies of the replicated state
      # (devices.py), so no process waits on another.
      process = jax.process_index()
      if not read_only:
        os.makedirs(self.directory, exist_ok=True)
      options = dataclasses.replace(
          options, create=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=process, active_processes={process}))
    if not read_only and self._quiet is None:
      self._quiet = _QuietWriter().__enter__()  # Until close().
    try:
      self._cached_manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot open the checkpoints in {self.directory} ({_reason(e)}); "
          "check that this user can read and write that folder, or pass "
          "another --workdir") from None
    return self._cached_manager

  def save(self, step: int, state, meta: dict) -> None:
    """Starts an atomic save in the background; `wait` or `close` finishes it.

    The meta record gets the state's digest and its own checksum, both
    checked on restore.
    """
    meta = {**meta, "format": FORMAT, "digest": state_digest(state)}
    meta["meta_checksum"] = _meta_checksum(meta)
    ocp = _orbax()
    manager = self._manager  # Made, and quieted, outside _saving's own hooks.
    with _saving(self.directory):
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_host_local(state)),
          meta=ocp.args.JsonSave(meta)), force=True)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step (unfinished saves are ignored)."""
    try:
      return self._manager.latest_step()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot list the checkpoints in {self.directory} ({_reason(e)}); "
          "check that this user can read that folder, or pass another "
          "--workdir") from None

  def _where(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _config_file(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "config.json")

  def _edited(self, fix: str = "put back its settings (from a copy)") -> str:
    """The advice when a run's settings (its config.json) and its intact
    checkpoint disagree: nothing is damaged, so nothing is to be deleted."""
    return (f"{self._config_file()} no longer holds the settings the run was "
            f"trained with (was it edited?); nothing was changed: {fix}, or "
            "pass another --workdir")

  def _damaged(self, step: int, why: str) -> CheckpointError:
    """The error for a checkpoint verified damaged, naming the one before it."""
    try:
      earlier = [s for s in self._manager.all_steps(read=True) if s < step]
    except Exception:  # pylint: disable=broad-except
      earlier = []
    if earlier:
      advice = ("delete that folder to go back to the checkpoint before it, "
                f"{self._where(max(earlier))}")
    else:
      advice = ("the run has no earlier checkpoint to go back to: pass "
                "another --workdir to train anew")
    return CheckpointError(f"the checkpoint {self._where(step)} is damaged or "
                           f"truncated ({why}); {advice}")

  def _unreadable_file(self, step: int) -> Optional[str]:
    """A file of checkpoint `step` this user may not read, if any."""
    for folder, _, names in os.walk(self._where(step)):
      for name in [".", *names]:
        path = os.path.normpath(os.path.join(folder, name))
        if not os.access(path, os.R_OK):
          return path
    return None

  def damage(self, step: int) -> Optional[str]:
    """Why checkpoint `step` is damaged, or None when it reads back intact.

    Independent of any run and of the devices at hand: its meta record must
    parse and match the checksum saved with it, and every array must read
    back whole, in the structure and shapes saved with it (orbax's own
    metadata). The arrays' digest needs the run's structure: `restore`
    checks it.
    """
    path = os.path.join(self._where(step), "meta", "metadata")
    try:
      with open(path, "rb") as f:
        meta = json.loads(f.read().decode())
    except FileNotFoundError:
      return "its meta record is missing"
    except PermissionError:
      return None
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError.
      return f"its meta record is unreadable: {_reason(e)}"
    why = _meta_damage(meta)
    if why:
      return why
    ocp = _orbax()
    try:
      with _stray_output_to_log():
        saved = ocp.StandardCheckpointHandler().metadata(
            self._manager.directory / str(step) / "state")
        self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_host_target(saved.tree))))
    except (MemoryError, PermissionError):
      return None
    except Exception as e:  # pylint: disable=broad-except
      if any(code in str(e) for code in ("RESOURCE_EXHAUSTED",
                                         "PERMISSION_DENIED")):
        return None
      return f"its arrays do not read back: {_reason(e)}"
    return None

  def _failure(self, step: int, e: Exception) -> CheckpointError:
    """The error for a failed read of checkpoint `step`: damaged only when
    `damage` finds it so; otherwise what does not match, nothing deleted."""
    unreadable = self._unreadable_file(step)
    if unreadable:
      return CheckpointError(
          f"{unreadable} cannot be read by this user (permission denied); "
          f"give read access to {self.directory}, or pass another --workdir")
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
    try:
      ocp = _orbax()
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(step, e) from None
    why = _meta_damage(meta)
    if why:
      raise self._damaged(step, why)
    meta = dict(meta)
    meta.pop("meta_checksum", None)
    return step, meta

  def restore(self, template, step: Optional[int] = None,
              model: Optional[str] = None) -> Tuple[object, dict]:
    """Restores the state shaped like `template` and its meta record.

    Every leaf is read whole into host memory and comes back on this
    process's default device, whatever devices wrote it; the engine then
    places it (devices.Engine.restored and start).

    Args:
      template: a TrainState of the model the checkpoint should hold (arrays
        or ShapeDtypeStructs: only shapes, dtypes and structure are used).
      step: which checkpoint (default: the latest).
      model: the model name the checkpoint must have been written by.

    Raises:
      CheckpointError: there is none, it is damaged (verified: `damage` or
        the digest), or it does not fit `template` (another model, format or
        structure), which the message tells apart.
    """
    step, meta = self.read_meta(step)
    where = self._where(step)
    written = meta.get("format", 1)
    if written != FORMAT:
      newer = isinstance(written, int) and written > FORMAT
      raise CheckpointError(
          f"the checkpoint {where} was written by "
          f"{'a newer' if newer else 'an older'} mnist_jax (checkpoint format "
          f"{written}; this one reads {FORMAT}); use "
          f"{'a newer mnist_jax' if newer else 'the mnist_jax that wrote it'} "
          "to resume or report on it, or pass another --workdir to train anew")
    if model is not None and meta.get("model", model) != model:
      fix = f"set its \"model\" back to {meta['model']!r}"
      raise CheckpointError(
          f"the checkpoint {where} was written by model {meta['model']!r}, not "
          f"{model!r} as {self._config_file()} says; {self._edited(fix)}")
    want = param_shapes(getattr(template, "params", template))
    have = meta.get("param_shapes")
    if have is not None and have != want:
      diff = [k for k in sorted(set(have) | set(want))
              if have.get(k) != want.get(k)]
      first = diff[0]
      raise CheckpointError(
          f"the checkpoint {where} holds another model's parameters ({first}: "
          f"{have.get(first)} in the checkpoint, {want.get(first)} here; "
          f"{len(diff)} differences); {self._edited()}")
    ocp = _orbax()
    try:
      with _stray_output_to_log():
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_host_target(template))))
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(step, e) from None
    state = _as_arrays(restored["state"])
    if "digest" in meta and state_digest(state) != meta["digest"]:
      raise self._damaged(step, "its arrays do not match the checksum saved "
                          "with them")
    return state, meta

  def wait(self) -> None:
    if self._cached_manager is not None:
      with _saving(self.directory):
        self._cached_manager.wait_until_finished()

  def close(self) -> None:
    try:
      if self._cached_manager is not None:
        with _saving(self.directory):
          self._cached_manager.wait_until_finished()
          self._cached_manager.close()
    finally:
      if self._quiet is not None:
        self._quiet.__exit__()
        self._quiet = None


# Resuming: the record saved with each checkpoint, where a run starts.

def record(config, *, epoch: int, step: int, param_shapes: dict,
           epoch_step: int = 0, sums: Optional[dict] = None,
           done: bool = False, time_s: Optional[float] = None) -> dict:
  """The meta record saved with a checkpoint.

  Args:
    config: the run's Config (its model and seed are recorded).
    epoch: epochs completed.
    step: the global step of the saved state.
    param_shapes: `param_shapes` of the parameters (the fingerprint
      that refuses another model's checkpoint).
    epoch_step: steps done in epoch + 1 (0 at an epoch's end).
    sums: the metric sums of those steps ({"loss", "correct", "count"},
      scalars or [M] with several members), when epoch_step > 0.
    done: whether the run finished.
    time_s: the seconds the run has trained so far, its processes summed,
      less their data loading (a resumed run's wall time starts from it).
  """
  meta = {"epoch": epoch, "epoch_step": epoch_step, "step": step,
          "model": config.model, "seed": config.seed, "done": done,
          "param_shapes": param_shapes}
  if time_s is not None:
    meta["time_s"] = time_s
  if sums is not None:
    meta["sums"] = {k: np.asarray(v).tolist()
                    for k, v in jax.device_get(sums).items()}
  return meta


def check_fits(meta: dict, state_step: int, steps: int, epochs: int,
               where: str) -> None:
  """Refuses a meta record that does not fit this run's epochs and data.

  Args:
    meta: the checkpoint's meta record.
    state_step: the step stored in the restored state (the largest member's).
    steps: this run's steps per epoch.
    epochs: this run's --epochs.
    where: the checkpoint folder, for the message.

  Raises:
    CheckpointError: another data size or batch size, or an inconsistent record.
  """
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


def restore(config, workdir: str, template, steps: int) -> Tuple[Optional[dict], object]:
  """(meta, state) of the run folder's latest checkpoint, or (None, template).

  Reads without writing anything, and refuses a checkpoint that is damaged,
  from another model, or from another data size, and a run trained to the
  end but not finished whose checkpoints are gone (its report needs them).
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  reader = None
  if os.path.exists(directory):
    reader = Checkpointer(workdir, read_only=True)
  if reader is None or reader.latest_step() is None:
    if (folder_lib.final_metrics(workdir) is not None and
        not folder_lib.finished(workdir)):
      raise CheckpointError(
          f"{workdir} trained to the end, but its report cannot be written: "
          f"its checkpoints are missing from {directory}; put them back (the "
          "same command then writes the report), or pass another --workdir; "
          f"--overwrite trains it again, deleting {folder_lib.contents(workdir)}")
    return None, template
  state, meta = reader.restore(template, model=config.model)
  reader.close()
  check_fits(meta, int(np.max(np.asarray(state.step))), steps, config.epochs,
             directory)
  return meta, state


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run begins: its first epoch, the steps of it already done and
  their metric sums, and whether the run had already finished."""
  epoch: int = 1
  epoch_step: int = 0
  finished: bool = False
  sums: Optional[Dict[str, np.ndarray]] = None  # float32, [] or [M].

  @classmethod
  def from_meta(cls, meta: Optional[dict]) -> "Start":
    """A fresh run's start (meta None), or the one after a checkpoint."""
    if meta is None:
      return cls()
    sums = None
    if meta.get("sums"):
      sums = {k: np.asarray(v, np.float32) for k, v in meta["sums"].items()}
    return cls(meta["epoch"] + 1, meta.get("epoch_step", 0),
               bool(meta.get("done")), sums)

  def epochs(self, last: int) -> range:
    """The epochs left to run, up to `last`; none for a finished run."""
    return range(self.epoch, 1 if self.finished else last + 1)

  def steps_done(self, epoch: int) -> int:
    """Steps of `epoch` done before this start (only its first epoch has any)."""
    return self.epoch_step if epoch == self.epoch else 0

  def as_arrays(self, zero_sums: Dict[str, np.ndarray]):
    """(position int32 [3], sums): what process 0 sends the other processes.

    zero_sums: zeros shaped like the run's metric sums, for a start without.
    """
    position = np.array([self.epoch, self.epoch_step, self.finished], np.int32)
    return position, self.sums if self.sums is not None else zero_sums

  @classmethod
  def from_arrays(cls, position, sums) -> "Start":
    epoch, epoch_step, finished = (int(v) for v in np.asarray(position))
    sums = {k: np.asarray(v, np.float32) for k, v in sums.items()}
    return cls(epoch, epoch_step, bool(finished), sums if epoch_step else None)


class Saver:
  """Saves a run's checkpoints with their records; remembers the last step.

  Only the process that writes files (process 0) saves; the others keep the
  same bookkeeping, so every process tells the same story when it stops.
  """

  def __init__(self, workdir: str, config, param_shapes: dict, *,
               write: bool = True, last_saved: Optional[int] = None,
               clock: Optional[Callable[[], float]] = None):
    """clock: the run's seconds so far, recorded with each checkpoint
    (`record`'s time_s); None records none."""
    self.directory = os.path.join(os.path.abspath(workdir),
                                  CHECKPOINT_DIR)
    self._checkpointer = (Checkpointer(
        workdir, keep=config.keep_checkpoints) if write else None)
    self._config = config
    self._shapes = param_shapes
    self._clock = clock
    self.last_saved = last_saved

  def save(self, step: int, state, *, epoch: int, epoch_step: int = 0,
           sums: Optional[dict] = None, done: bool = False) -> None:
    """Starts saving `state` (this process's copy) as the checkpoint of `step`.

    epoch: epochs completed; epoch_step and sums: the steps done in the next
    one and their metric sums (see `record`).
    """
    if self._checkpointer is not None:
      self._checkpointer.save(step, state, record(
          self._config, epoch=epoch, step=step, param_shapes=self._shapes,
          epoch_step=epoch_step, sums=sums, done=done,
          time_s=self._clock() if self._clock else None))
    self.last_saved = step

  def is_saved(self, step: int) -> bool:
    """Whether a checkpoint holds `step` already (step 0 needs none)."""
    return step in (self.last_saved, 0)

  def on_disk(self) -> str:
    """Which complete checkpoint a run killed now goes back to, in words,
    without waiting for a save in flight (for a second Ctrl-C)."""
    steps = folder_lib.complete_steps(self.directory)
    if not steps:
      return "no checkpoint has been saved yet, so the run starts over"
    return (f"the last complete checkpoint, {self.directory}/{max(steps)}, "
            "is kept")

  def kept(self) -> str:
    """Which checkpoint a run stopped now goes back to, in words."""
    step = None
    if self._checkpointer is not None:
      self._checkpointer.wait()
      step = self._checkpointer.latest_step()
    if step is None:
      return "no checkpoint had been saved yet"
    return f"the last good checkpoint, {self.directory}/{step}, is kept"

  def close(self) -> None:
    """Waits for the last save to finish."""
    if self._checkpointer is not None:
      self._checkpointer.close()

"""Checkpoints: the train state's `PARTS` (less the random streams, which
derive from the seeds) and a JSON `record` (where the run stands, the model,
SHA-256 digests of the arrays and of the record) in workdir/checkpoints/<step>
by orbax. `restore` is the one way a state is read back; only verified damage
is called damage."""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import sys
from typing import List, Optional, Tuple

import jax
import numpy as np

from mnist_jax.errors import UserError, first_line
from mnist_jax.rundir import record as run_record
from mnist_jax.training import train

CHECKPOINT_DIR = "checkpoints"
FORMAT = 3
PARTS = tuple(f.name for f in dataclasses.fields(train.TrainState)
              if f.metadata.get("pytree_node", True) and f.name != "keys")


def _not_orbax_leftover(record: logging.LogRecord) -> bool:
  """False for what asyncio logs, whenever garbage collection comes to it, of
  orbax's abandoned reads (a future's tensorstore error never retrieved: under
  load its text names only the OCDBT database read)."""
  text = f"{record.getMessage()} {record.exc_info and record.exc_info[1]!r}"
  return not any(s in text for s in ("tensorstore", f"{os.sep}orbax{os.sep}",
                                     "OCDBT database", "Event loop is closed"))


@functools.cache
def _ocp():
  """orbax.checkpoint, imported at first use (a first step does not wait for
  it), its errors one line: its absl log and asyncio's of reads still in
  flight after a failed one go unsaid."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").addFilter(
      lambda r: f"{os.sep}orbax{os.sep}" not in r.pathname)
  logging.getLogger("asyncio").addFilter(_not_orbax_leftover)
  hook = sys.unraisablehook
  sys.unraisablehook = lambda u: None if (
      isinstance(u.exc_value, RuntimeError) and
      str(u.exc_value) == "Event loop is closed") else hook(u)
  return ocp


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or does not fit this model."""


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def tree(state) -> dict:
  """What a checkpoint holds of a train state (host or device arrays)."""
  return {part: getattr(state, part) for part in PARTS}


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


def model_error(workdir: str, recorded: str, saved: str) -> CheckpointError:
  """config.json names `recorded`, the checkpoints model `saved`."""
  return CheckpointError(
      f"{os.path.join(workdir, 'config.json')} says model {recorded!r}, but the "
      f"run's checkpoints were written by model {saved!r} (was one of them "
      "edited or replaced?); nothing was changed: if config.json was edited, "
      f"set its \"model\" back to {saved!r}; or pass another --workdir")


def manager(workdir: str, keep: Optional[int] = None):
  """orbax's CheckpointManager of `workdir`'s checkpoints: saving (the newest
  `keep` kept; its `close` finishes a save under way) or, with no `keep`,
  reading only."""
  ocp, folder, write = _ocp(), directory(workdir), keep is not None
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise CheckpointError(f"{folder} is a file where the run's checkpoints "
                          "go; move it away, or pass another --workdir")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=write, cleanup_tmp_directories=write,
      enable_async_checkpointing=write)
  if jax.process_count() > 1:  # Only process 0 writes: nobody waits.
    if write:
      os.makedirs(folder, exist_ok=True)
    process = jax.process_index()
    options = dataclasses.replace(
        options, create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=process, active_processes={process}))
  try:
    return ocp.CheckpointManager(folder, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler()})
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"cannot open the checkpoints in {folder} ({first_line(e)}); check "
        "that this user can read and write that folder, or pass another "
        "--workdir") from None


def save(checkpoints, step: int, parts: dict, meta: dict) -> None:
  """Starts an atomic save of `parts` (`tree` of a state) and its record
  `meta` in the background (a full disk, which orbax reports as text, reaches
  resources.machine_error)."""
  ocp, host = _ocp(), jax.tree.map(np.asarray, jax.device_get(parts))
  meta = {**meta, "format": FORMAT,
          "digest": digest([host[k] for k in sorted(host)])}
  meta["meta_checksum"] = _meta_checksum(meta)
  checkpoints.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)),
                   force=True)


def _read(checkpoints, step: int, what: Optional[str] = None, **item):
  """Checkpoint `step`'s `item`, read by orbax: a refused read is never called
  damage; another failure is, where `what` says how it shows."""
  try:
    return checkpoints.restore(step, args=_ocp().args.Composite(**item))
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, PermissionError) or "PERMISSION_DENIED" in str(e):
      raise CheckpointError(
          f"the checkpoint {checkpoints.directory}/{step} cannot be read by "
          f"this user ({first_line(e)}); give read access to "
          f"{checkpoints.directory}, or pass another --workdir") from None
    if what is None or isinstance(e, MemoryError):
      raise
    raise _damaged(checkpoints, step, f"{what}: {first_line(e)}") from None


def _damaged(checkpoints, step: int, why: str) -> CheckpointError:
  folder = checkpoints.directory
  earlier = [s for s in checkpoints.all_steps() if s < step]
  advice = (f"delete that folder to go back to the checkpoint before it, "
            f"{folder}/{max(earlier)}" if earlier else
            "the run has no earlier checkpoint to go back to: pass another "
            "--workdir to train anew")
  return CheckpointError(f"the checkpoint {folder}/{step} is damaged or "
                         f"truncated ({why}); {advice}")


def read_meta(workdir: str, checkpoints) -> Tuple[int, dict]:
  """(step, record) of the latest checkpoint, checked against its checksum."""
  step = checkpoints.latest_step()
  if step is None:
    state, last = run_record.status(workdir)
    if state == "diverged":  # Its same command would stop at once.
      raise CheckpointError(
          f"{workdir} has no checkpoint: its training diverged "
          f"{run_record.diverged_at(last)}, before the first was saved; "
          "lower --learning_rate or set --grad_clip in its training command "
          f"and run it with --workdir={workdir} --overwrite")
    raise CheckpointError(
        f"{workdir} has no complete checkpoint yet (its training stopped "
        "before the first was saved); train it first: its training command, "
        f"with --workdir={workdir}")
  meta = _read(checkpoints, step, "its meta record does not read back",
               meta=_ocp().args.JsonRestore())["meta"]
  if (not isinstance(meta, dict) or
      meta.pop("meta_checksum", None) != _meta_checksum(meta)):
    raise _damaged(checkpoints, step, "its meta record does not match the "
                   "checksum saved with it")
  return step, meta


def _check(workdir: str, where: str, meta: dict, model) -> None:
  """Refuses an intact checkpoint of another format or model."""
  written = meta.get("format", 1)
  if written != FORMAT:
    newer = isinstance(written, int) and written > FORMAT
    raise CheckpointError(
        f"the checkpoint {where} was written by "
        f"{'a newer' if newer else 'an older'} mnist_jax (checkpoint format "
        f"{written}; this one reads {FORMAT}); use "
        f"{'a newer mnist_jax' if newer else 'the mnist_jax that wrote it'}"
        " to resume or report on it, or pass another --workdir")
  if model is not None and meta.get("model", model) != model:
    raise model_error(workdir, model, meta["model"])


def _edited(workdir: str) -> str:
  """Why a run folder's checkpoint no longer fits: its code or settings."""
  from mnist_jax.rundir import code  # pylint: disable=g-import-not-at-top
  other = code.changed(run_record.trained_code(workdir))
  if other:
    return (f"the run was trained with other code ({', '.join(other)} "
            "changed since); nothing was changed: train these settings in "
            "another --workdir, or go back to the code it ran (config.json's "
            "environment.code)")
  return (f"{os.path.join(workdir, 'config.json')} no longer holds the "
          "settings the run was trained with (was it edited?); nothing was "
          "changed: put back its settings, or pass another --workdir")


def restore(workdir: str, state, model: Optional[str] = None):
  """(`state` (a fresh TrainState, or its jax.eval_shape) with the latest
  checkpoint's parts as host arrays; its record): the one restore, to train
  on or to report on. CheckpointError: none, damaged (verified), or of
  another model, format or structure."""
  ocp, template = _ocp(), tree(state)
  with contextlib.closing(manager(workdir)) as checkpoints:
    step, meta = read_meta(workdir, checkpoints)
    where = f"{checkpoints.directory}/{step}"
    _check(workdir, where, meta, model)
    try:
      saved = checkpoints.item_metadata(step)["state"].tree
      # Host arrays of the template's shapes: read whole, to the host (and
      # faster in orbax than ShapeDtypeStructs).
      restored = _read(checkpoints, step, state=ocp.args.StandardRestore({
          k: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                          template[k]) for k in saved}))["state"]
    except (CheckpointError, MemoryError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Read as saved: damage if it does not read back at all.
      _read(checkpoints, step, "its arrays do not read back",
            state=ocp.args.StandardRestore())
      raise CheckpointError(
          f"the checkpoint {where} is intact but does not fit this run's "
          f"train state ({first_line(e)}); {_edited(workdir)}") from None
    if digest([restored[k] for k in sorted(restored)]) != meta.get("digest"):
      raise _damaged(checkpoints, step, "its arrays do not match the checksum "
                     "saved with them")
  # orbax reads arrays back in their saved shapes, whatever the template's.
  want, have = param_shapes(template["params"]), param_shapes(
      restored["params"])
  if have != want:
    diff = [k for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)]
    raise CheckpointError(
        f"the checkpoint {where} holds another model's parameters "
        f"({diff[0]}: {have.get(diff[0])} in the checkpoint, "
        f"{want.get(diff[0])} here; {len(diff)} differences); "
        f"{_edited(workdir)}")
  return state.replace(**restored), meta


def steps(workdir: str) -> List[int]:
  """The steps of a run folder's complete checkpoints, oldest first."""
  with contextlib.closing(manager(workdir)) as checkpoints:
    return list(checkpoints.all_steps())


def latest_meta(workdir: str) -> dict:
  """The latest checkpoint's record; {} where there is none or it does not
  read back (`restore` says why)."""
  with contextlib.closing(manager(workdir)) as checkpoints:
    try:
      return read_meta(workdir, checkpoints)[1]
    except CheckpointError:
      return {}


def record(config, *, epoch: int, step: int, epoch_step: int = 0, sums=None,
           done: bool = False, time_s: Optional[float] = None) -> dict:
  """A checkpoint's meta record: `epoch` epochs done, `epoch_step` steps of
  the next with their metric `sums`, the run's seconds so far (`time_s`)."""
  meta = {"epoch": epoch, "epoch_step": epoch_step, "step": step,
          "model": config.model, "seed": config.seed, "done": done}
  if time_s is not None:
    meta["time_s"] = time_s
  if sums is not None:
    meta["sums"] = {k: np.asarray(v).tolist()
                    for k, v in jax.device_get(sums).items()}
  return meta


def check_fits(meta: dict, steps_per_epoch: int, where: str) -> None:
  """Refuses a record of another number of steps per epoch (its checksum
  vouches for the rest)."""
  epoch_step = meta.get("epoch_step", 0)
  if (epoch_step >= steps_per_epoch or
      meta["step"] != meta["epoch"] * steps_per_epoch + epoch_step):
    raise CheckpointError(
        f"the latest checkpoint in {where} (step {meta['step']}, epoch "
        f"{meta['epoch']}) does not fit this run's {steps_per_epoch} steps per "
        "epoch (were the data or the batch size changed?); resume with the "
        "data and --batch_size it was trained with, or pass another --workdir")

"""Resuming a run folder: whether it holds a run, and whether these settings
may continue it.
"""

import os
from typing import List, Optional

from mnist_jax import config as config_lib
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record

# Settings a resumed run may change: where files go, devices, kernels.
RESUMABLE_DIFFERENCES = ("data_dir", "mnist_dir", "workdir", "chunk_steps",
                         "impl", "checkpoint_every", "keep_checkpoints",
                         "tensorboard", "parallel", "coordinator_address",
                         "num_processes", "process_id", "report", "analyses")


def config_differences(old: config_lib.Config,
                       new: config_lib.Config) -> List[str]:
  """`name: old -> new` for each setting that differs and matters for
  resuming."""
  a, b = old.to_dict(), new.to_dict()
  return [f"{k}: {a.get(k, 'unset')!r} -> {b.get(k, 'unset')!r}"
          for k in sorted(set(a) | set(b))
          if k not in RESUMABLE_DIFFERENCES and a.get(k) != b.get(k)]


def check_run_folder(workdir: str, config: config_lib.Config,
                     overwrite: bool = False) -> bool:
  """Whether `workdir` holds a run; refuses one `config` cannot continue
  (unless `overwrite`), and any other non-empty folder (never deleted)."""
  if not os.path.exists(os.path.join(workdir, record.CONFIG_FILE)):
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - {lock.LOCK_FILE}:
      raise UserError(f"--workdir={workdir} is not empty and holds no "
                      f"{record.CONFIG_FILE}, so it is not a run folder; pass "
                      "a new or empty folder")
    return False
  if not overwrite:
    recorded = record.read_config(workdir)
    # Another model than the newest checkpoint's (config.json edited) is said
    # before the settings are compared; a record that cannot tell, by restore.
    saved = checkpoints.latest_meta(workdir).get("model")
    if isinstance(saved, str) and saved != recorded.model:
      raise checkpoints.model_error(workdir, recorded.model, saved)
    diffs = config_differences(recorded, config)
    if diffs:
      raise UserError(
          f"{workdir} holds a run with other settings ({'; '.join(diffs)}); to "
          "resume that run, run the command in its config.json (\"repeat\") "
          f"with --workdir={workdir}; to train these settings there instead, "
          "add --overwrite, which deletes its checkpoints, logs and report; "
          "or pass another --workdir")
  return True


def check_not_diverged(workdir: str, config: config_lib.Config) -> None:
  """Refuses to resume a run of the same settings that diverged: it would
  diverge again at the same step."""
  try:
    same = not config_differences(record.read_config(workdir), config)
  except UserError:
    return  # No readable run here: check_run_folder says what is wrong.
  state, last = record.status(workdir)
  if same and state == "diverged":
    raise Diverged(f"{workdir} diverged with these settings "
                   f"({record.diverged_at(last)}); resuming would diverge "
                   "again at the same step: lower --learning_rate or set "
                   "--grad_clip and add --overwrite to start it over")


def missing_final_checkpoint(workdir: str) -> Optional[str]:
  """Where a finished run's final checkpoint is gone, that, in words; else
  None."""
  final = metrics_log.final_metrics(workdir) if record.finished(
      workdir) else None
  if not final or "steps" not in final:
    return None
  steps = checkpoints.steps(workdir)
  if max(steps, default=-1) >= final["steps"]:
    return None
  latest = f"the latest is step {max(steps)}" if steps else "none is left"
  return (f"the final checkpoint, {checkpoints.directory(workdir)}/"
          f"{final['steps']}, is missing ({latest})")

"""Resuming a run folder: whether these settings may, from which complete
checkpoint, and the command that trains it on.
"""

import json
import os
import shlex
import sys
from typing import List, Optional, Tuple

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record

CHECKPOINT_DIR = "checkpoints"  # checkpoints.py writes it.
# Settings a resumed run may change: where files go, devices, kernels.
RESUMABLE_DIFFERENCES = ("data_dir", "mnist_dir", "workdir", "chunk_steps",
                         "impl", "checkpoint_every", "keep_checkpoints",
                         "tensorboard", "parallel", "coordinator_address",
                         "num_processes", "process_id", "report",
                         "analyses")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def complete_steps(directory: str) -> List[int]:
  """The steps of the complete checkpoints in `directory` (orbax gives one
  its step's name once it is whole)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


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
  if not os.path.exists(workdir):
    return False
  if not os.path.exists(os.path.join(workdir, record.CONFIG_FILE)):
    if set(os.listdir(workdir)) - {lock.LOCK_FILE}:
      raise UserError(f"--workdir={workdir} is not empty and holds no "
                      f"{record.CONFIG_FILE}, so it is not a run folder; pass "
                      "a new or empty folder")
    return False
  if not overwrite:
    recorded = record.read_config(workdir)
    check_model(workdir, recorded)
    diffs = config_differences(recorded, config)
    if diffs:
      raise UserError(
          f"{workdir} holds a run with other settings ({'; '.join(diffs)}); to "
          f"resume that run, run its own command: {run_command(workdir)}; to "
          f"train these settings there instead, add --overwrite, which "
          f"deletes {contents(workdir)}; or pass another --workdir")
  return True


def check_model(workdir: str, recorded: config_lib.Config) -> None:
  """Refuses a run folder whose config.json names another model than its
  newest checkpoint's record (one of them was edited or replaced)."""
  directory = checkpoint_dir(workdir)
  try:
    newest = str(complete_steps(directory)[-1])
    with open(os.path.join(directory, newest, "meta", "metadata")) as f:
      saved = json.load(f).get("model")
  except (IndexError, OSError, ValueError, AttributeError):
    return
  if isinstance(saved, str) and saved != recorded.model:
    path = os.path.join(workdir, record.CONFIG_FILE)
    raise UserError(
        f"{path} says model {recorded.model!r}, but the run's checkpoints were "
        f"written by model {saved!r} (was one of them edited or replaced?); "
        f"nothing was changed: if config.json was edited, set its \"model\" "
        f"back to {saved!r}; or pass another --workdir")


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
                   f"({diverged_at(last)}); resuming would diverge again at "
                   "the same step: lower --learning_rate or set --grad_clip "
                   "and add --overwrite to start it over")


def diverged_at(row: Optional[dict]) -> str:
  row = row or {}
  return f"at step {row.get('step')}, epoch {row.get('epoch')}"


def contents(workdir: str) -> str:
  """"W's 3 logged epochs, 2 checkpoints and report": what --overwrite
  deletes."""
  epochs = max((r["epoch"] for r in metrics_log.MetricsLog(workdir).read()
                if metrics_log.is_epoch_row(r)), default=0)
  checkpoints = len(complete_steps(checkpoint_dir(workdir)))
  parts = [f"{epochs} logged epoch{'s' * (epochs != 1)}",
           f"{checkpoints} checkpoint{'s' * (checkpoints != 1)}"]
  if os.path.exists(os.path.join(workdir, record.REPORT_FILE)):
    parts.append("report")
  return f"{workdir}'s {', '.join(parts[:-1])} and {parts[-1]}"


def missing_final_checkpoint(workdir: str) -> Optional[str]:
  """Where a finished run's final checkpoint is gone, that, in words; else
  None."""
  final = metrics_log.final_metrics(workdir) if record.finished(
      workdir) else None
  steps = complete_steps(checkpoint_dir(workdir))
  if not final or "steps" not in final or max(steps, default=-1) >= final["steps"]:
    return None
  latest = f"the latest is step {max(steps)}" if steps else "none is left"
  return (f"the final checkpoint, {checkpoint_dir(workdir)}/{final['steps']}, "
          f"is missing ({latest})")


def on_disk(directory: str) -> Tuple[str, str]:
  """(Which checkpoint a run killed now goes back to, what its command then
  does), in words."""
  steps = complete_steps(directory)
  if not steps:
    return ("no checkpoint has been saved yet, so the run starts over",
            "To start it again")
  return (f"the last complete checkpoint, {directory}/{max(steps)}, is kept",
          "To resume")


def resume_line(workdir, meta, logged, steps) -> str:
  """Where a run goes on from (checkpoint `meta`, or None), in one line."""
  if meta is None:
    epochs = [r["epoch"] for r in metrics_log.MetricsLog(workdir).read()
              if "train_loss" in r]
    again = (f" (the {max(epochs)} epoch(s) logged are trained again)"
             if epochs else "")
    return (f"{workdir} has no complete checkpoint: training starts over from "
            f"epoch 1{again}")
  if meta.get("done"):
    what = "its report" if logged else "its final evaluation and report"
    return (f"completing {workdir}: its training ended at epoch "
            f"{meta['epoch']} (step {meta['step']}); writing {what}")
  return (f"resuming {workdir} at step {meta['step']} (epoch "
          f"{meta['epoch'] + 1}, step {meta.get('epoch_step', 0)} of {steps})")


def lower_rate(config: config_lib.Config) -> float:
  """A learning rate to try after `config`'s diverged: its preset's if
  lower, else a tenth."""
  known = models.registry.preset_overrides(config.model, config.preset).get(
      "learning_rate", config_lib.Config.learning_rate)
  return known if config.learning_rate > known else config.learning_rate / 10


def train_command(workdir: str) -> str:
  """The command that trains `workdir` on; for a diverged run, one that
  starts it over at a lower rate."""
  if record.status(workdir)[0] != "diverged":
    return run_command(workdir)
  rate = lower_rate(record.read_config(workdir))
  return run_command(workdir, f"--learning_rate={rate:g}", "--overwrite")


def run_command(workdir: str, *extra: str) -> str:
  """config.json's settings as a command, with --workdir and `extra`,
  naming launch.py as this process was started."""
  try:
    argv = shlex.split(record.repeat_command(record.read_config(workdir)))
    argv = [a for a in argv if a.split("=")[0] not in
            {e.split("=")[0] for e in extra}]
  except UserError:
    argv = ["python", "launch.py"]
  if argv[1:2] == ["launch.py"] and sys.argv[0].endswith("launch.py"):
    argv[1] = sys.argv[0]
  return shlex.join([*argv, f"--workdir={workdir}", *extra])

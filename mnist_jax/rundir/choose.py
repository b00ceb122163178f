"""Which run folder a command without --workdir trains in: the newest
unfinished run of its settings under runs/ that no other process holds, else
a new runs/<model>-<timestamp>.
"""

import dataclasses
import datetime
import os
import time
from typing import List, Optional

from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import lock
from mnist_jax.rundir import record
from mnist_jax.rundir import resume

RUNS_DIR = "runs"  # Where runs go without --workdir, relative to the cwd.


def default_workdir(model: str, root: str = RUNS_DIR) -> str:
  """runs/<model>-<timestamp>, with -2, -3, ... if that folder exists."""
  return files.unique(os.path.join(
      root, f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"), os.path.exists)


@dataclasses.dataclass(frozen=True)
class Run:
  """A run folder under runs/ whose settings a command can resume."""
  path: str
  started: datetime.datetime  # config.json's "started"; the oldest if none.
  status: str  # record.status's, or "running": another process holds it.
  last: Optional[dict]  # Its last metrics.jsonl row, if any.


def _started(recorded: dict) -> datetime.datetime:
  try:
    return datetime.datetime.strptime(recorded["started"], files.TIME_FORMAT)
  except (KeyError, TypeError, ValueError):
    return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def find_runs(config: config_lib.Config, root: str = RUNS_DIR) -> List[Run]:
  """The run folders under `root` that `config` can resume, newest first."""
  runs = []
  for path in record.runs_in(root):
    try:
      recorded = record.read_record(path)
      if resume.config_differences(
          models.from_dict(recorded["config"]), config):
        continue
      state, last = record.status(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError, UserError):
      continue  # Not a run folder this command can use.
    runs.append(Run(path, _started(recorded),
                    "running" if lock.in_use(path) else state, last))
  return sorted(runs, key=lambda r: (r.started, r.path), reverse=True)


def going_on(path: str, last: Optional[dict], config: config_lib.Config,
             which: str = "") -> str:
  """What a command does with the unfinished run at `path` (`which` one it
  is), whose last metrics row is `last`: completes its report or resumes."""
  if "test_accuracy" in (last or {}):
    return (f"completing {path}{which}: it trained to the end, but its report "
            "is not complete (the run writes it, training nothing)")
  return (f"resuming {path}{which} ({(last or {}).get('epoch', 0)} of "
          f"{config.epochs} epochs logged)")


@dataclasses.dataclass(frozen=True)
class Choice:
  """Where a command without --workdir trains, and why, in one line."""
  path: str
  reason: str
  news: bool = True  # Whether to say `reason`: not for a first run.


def choose(config: config_lib.Config, overwrite: bool = False,
           root: str = RUNS_DIR) -> Choice:
  """The folder a command without --workdir trains in (see the module doc;
  `overwrite`: always a new one). Diverged if the newest one diverged and
  none is unfinished (it would again)."""
  new = default_workdir(config.model, root)
  if overwrite:
    return Choice(new, f"starting a new run folder, {new} (--overwrite "
                  "without --workdir deletes no folder)")
  runs = find_runs(config, root)
  for run in runs:
    if run.status == "unfinished":
      return Choice(run.path, going_on(
          run.path, run.last, config, ", the newest unfinished run of these "
          f"settings under {root}/") + "; --overwrite starts a new folder "
                    "instead")
  settled = [r for r in runs if r.status != "running"]
  if settled and settled[0].status == "diverged":
    raise Diverged(f"{settled[0].path} trained these settings and diverged "
                   f"({record.diverged_at(settled[0].last)}); they would "
                   "diverge again at the same step, so nothing was started: "
                   "lower --learning_rate or set --grad_clip (a new run "
                   "folder starts), or pass --overwrite to train them again "
                   "anyway")
  if settled:
    return Choice(new, f"{settled[0].path} trained these settings to the end; "
                  f"starting a new run folder, {new}")
  if runs:
    return Choice(new, f"{runs[0].path} (these settings) is training in "
                  f"another process; starting a new run folder, {new}")
  return Choice(new, f"starting a new run folder, {new}", news=False)

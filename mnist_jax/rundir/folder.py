"""The run folder: config.json, metrics.jsonl and the environment they record.

Also which folder a command trains in when it names none (`choose`): the
newest unfinished run of the same settings under runs/, else a new one. A
process that writes a run folder holds a lock on it (`hold`) until it ends,
so a second command never resumes a run that is still training.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

try:
  import fcntl
except ImportError:  # Not on a POSIX system: runs are not locked.
  fcntl = None

import jax

from mnist_jax import config as config_lib
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import files

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "numpy", "matplotlib", "absl-py",
            "tensorboardX")
# Settings that may differ when resuming a run: where to find data, how to log
# and checkpoint, how to spread over devices, stock modules or fast kernels.
# (Another chunk_steps keeps the parameters exact but may change the last bits
# of that epoch's train metrics; another impl has the same parameter tree and
# function, to float32 rounding.)
RESUMABLE_DIFFERENCES = ("data_dir", "mnist_dir", "workdir", "chunk_steps",
                         "impl", "checkpoint_every", "keep_checkpoints",
                         "tensorboard", "parallel", "coordinator_address", "num_processes",
                         "process_id")


RUNS_DIR = "runs"  # Where runs go without --workdir, relative to the cwd.
# Inside `locking()`: the run folders this process holds locked, path -> the
# open folder's descriptor (the lock goes with it, even on SIGKILL).
_HELD: Optional[Dict[str, Optional[int]]] = None


def default_workdir(model: str, root: str = RUNS_DIR) -> str:
  """runs/<model>-<timestamp>, with -2, -3, ... if that folder exists."""
  base = os.path.join(root, f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}-{n}"
  return path


def environment() -> dict:
  """Package versions, Python, platform and the JAX devices of this process."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "packages": versions,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "command": sys.argv,
      "cwd": os.getcwd(),
      "code": _code_version(),
      "env": {k: v for k, v in os.environ.items()
              if k.startswith(("XLA_", "JAX_", "TFDS_", "CUDA_VISIBLE", "TPU_"))},
  }


def _code_version() -> dict:
  """The git commit of this checkout and whether it had local changes."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    def git(*args):
      return subprocess.run(["git", "-C", root, *args], capture_output=True,
                            text=True, timeout=5, check=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def read_config(workdir: str) -> config_lib.Config:
  """The Config a run folder was trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
    return config_lib.from_dict(record["config"])
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: --workdir must be a run folder "
                    "written by launch.py") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is unreadable ({type(e).__name__}); pass "
                    "--overwrite to start that run over, or another --workdir"
                    ) from None


def config_differences(old: config_lib.Config, new: config_lib.Config) -> List[str]:
  """`name: old -> new` for each setting that differs and matters for resuming."""
  a, b = old.to_dict(), new.to_dict()
  return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a)
          if k not in RESUMABLE_DIFFERENCES and a[k] != b[k]]


def check_writable(workdir: str) -> None:
  """Fails early, before anything is written, when the folder cannot be used.

  Probes by creating (and removing) a temporary file in the folder, or in its
  nearest existing parent: permission bits alone miss read-only file systems.
  """
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--workdir={workdir} is a file, not a folder; pass a folder")
  target = path
  while not os.path.exists(target):
    target = os.path.dirname(target)
  if not os.path.isdir(target):
    raise UserError(f"--workdir={workdir} cannot be created: {target} is a "
                    "file; pass a folder path")
  try:
    fd, probe = tempfile.mkstemp(dir=target, prefix=".mnist_jax_probe")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f"--workdir={workdir} is not writable ({target}: "
                    f"{e.strerror or e}); pass a folder you can write to") from None


def check_run_folder(workdir: str, config: config_lib.Config,
                     overwrite: bool = False) -> bool:
  """Whether `workdir` holds a run; refuses one `config` cannot continue.

  A run folder (with config.json) must agree with `config` on every setting
  that matters, unless `overwrite`; any other non-empty folder is refused, so
  --overwrite can never delete a folder launch.py did not write.
  """
  if not os.path.exists(workdir):
    return False
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    if os.listdir(workdir):
      raise UserError(f"--workdir={workdir} is not empty and holds no "
                      f"{CONFIG_FILE}, so it is not a run folder; pass a new or "
                      "empty folder")
    return False
  if not overwrite:
    diffs = config_differences(read_config(workdir), config)
    if diffs:
      raise UserError(f"{workdir} holds a run with other settings "
                      f"({'; '.join(diffs)}); pass --overwrite to start it over, "
                      "or another --workdir")
  return True


def begin(workdir: str, config: config_lib.Config, env: dict, *,
          existing: bool, overwrite: bool, meta: Optional[dict]) -> None:
  """Writes config.json as a run starts: the first thing a run writes.

  Args:
    workdir: the run folder.
    config: the run's settings.
    env: the environment to record (`environment()` and the devices used).
    existing: whether `workdir` holds a run already (check_run_folder).
    overwrite: start that run over: its folder is deleted first.
    meta: the record of the checkpoint a resumed run starts from, if any.
  """
  if existing:
    _hold(workdir)  # Refuses a run another command began meanwhile.
  if existing and not overwrite:
    record_resume(workdir, config, env, meta)
    return
  if existing:
    _release(workdir)
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)
  _hold(workdir)
  start(workdir, config, env)


def start(workdir: str, config: config_lib.Config, env: dict) -> None:
  """Creates the folder and writes config.json with the environment."""
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, CONFIG_FILE),
                    {"config": config.to_dict(), "environment": env,
                     "repeat": repeat_command(config),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def record_resume(workdir: str, config: config_lib.Config, env: dict,
                  meta: Optional[dict]) -> None:
  """Appends this resumption (when, from which step, how) to config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path) as f:
    record = json.load(f)
  # Compared as JSON holds them: a tuple (cnn_features) is a list there.
  settings = json.loads(json.dumps(config.to_dict()))
  record.setdefault("resumes", []).append({
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "from_step": meta["step"] if meta else 0,
      "changed": {k: v for k, v in settings.items()
                  if record["config"].get(k) != v},
      "environment": env})
  files.write_json(path, record)


@contextlib.contextmanager
def locking() -> Iterator[Dict[str, Optional[int]]]:
  """Within: the run folder `begin` writes stays locked until the block ends.

  launch.py trains inside it, so `in_use` tells a folder a command is
  training in now; other callers of train.train_and_evaluate lock nothing.

  Yields:
    {real path: descriptor} of the folders `begin` wrote in the block (the
    descriptor None where the file system has no locks; all closed after).
  """
  global _HELD
  outer, _HELD = _HELD, {}
  held = _HELD
  try:
    yield held
  finally:
    for fd in held.values():
      if fd is not None:
        os.close(fd)
    _HELD = outer


def _hold(workdir: str) -> None:
  """Locks `workdir` for this process, inside `locking()` (else a no-op).

  Raises:
    UserError: another process holds it (a command training in it now).
  """
  key = os.path.realpath(workdir)
  if _HELD is None or key in _HELD:
    return
  _HELD[key] = None
  if fcntl is None:
    return
  fd = os.open(key, os.O_RDONLY)
  for attempt in range(5):  # `in_use` probes hold the lock for an instant.
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      _HELD[key] = fd
      return
    except BlockingIOError:
      time.sleep(0.1 * (attempt + 1))
    except OSError:  # No locks on this file system: the run goes on unlocked.
      os.close(fd)
      return
  os.close(fd)
  del _HELD[key]
  raise _in_use_error(workdir)


def _release(workdir: str) -> None:
  fd = _HELD.pop(os.path.realpath(workdir), None) if _HELD else None
  if fd is not None:
    os.close(fd)


def in_use(workdir: str) -> bool:
  """Whether another process is training in run folder `workdir` now."""
  if fcntl is None or os.path.realpath(workdir) in (_HELD or {}):
    return False
  try:
    fd = os.open(workdir, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    os.close(fd)


def check_not_in_use(workdir: str) -> None:
  """Refuses a run folder another launch.py is training in now."""
  if in_use(workdir):
    raise _in_use_error(workdir)


def _in_use_error(workdir: str) -> UserError:
  return UserError(f"{workdir} is in use: another launch.py is training in it "
                   "now; wait for it to end, or pass another --workdir")


@dataclasses.dataclass(frozen=True)
class Run:
  """A run folder under runs/ whose settings a command can resume."""
  path: str
  started: Optional[datetime.datetime]  # config.json's "started".
  status: str  # "unfinished", "finished", "diverged" or "running".
  last: Optional[dict]  # Its last metrics.jsonl row, if any.

  @property
  def epochs_logged(self) -> int:
    return int((self.last or {}).get("epoch", 0))


def status(workdir: str) -> Tuple[str, Optional[dict]]:
  """(state, last metrics row) of a run folder, read from metrics.jsonl.

  finished: it has its final row. diverged: its last row says so (resuming
  repeats the divergence at the same step). Else unfinished.
  """
  rows = [r for r in read_metrics(os.path.join(workdir, METRICS_FILE))
          if isinstance(r, dict)]
  last = rows[-1] if rows else None
  if any("test_accuracy" in r for r in rows):
    return "finished", last
  if last is not None and last.get("diverged"):
    return "diverged", last
  return "unfinished", last


def _started(record: dict) -> Optional[datetime.datetime]:
  try:
    return datetime.datetime.strptime(record["started"], "%Y-%m-%dT%H:%M:%S%z")
  except (KeyError, TypeError, ValueError):
    return None


def find_runs(config: config_lib.Config, root: str = RUNS_DIR) -> List[Run]:
  """The run folders under `root` that `config` can resume, newest first.

  Newest by the start time in config.json (then by name); anything else
  under `root` (files, other folders, an unreadable config.json or
  metrics.jsonl) is skipped.
  """
  try:
    names = sorted(os.listdir(root))
  except OSError:
    return []
  runs = []
  for name in names:
    path = os.path.join(root, name)
    try:
      with open(os.path.join(path, CONFIG_FILE)) as f:
        record = json.load(f)
      if config_differences(config_lib.from_dict(record["config"]), config):
        continue
      state, last = status(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError, UserError):
      continue  # Not a run folder this command can use.
    runs.append(Run(path, _started(record),
                    "running" if in_use(path) else state, last))
  oldest = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
  return sorted(runs, key=lambda r: (r.started or oldest, r.path), reverse=True)


@dataclasses.dataclass(frozen=True)
class Choice:
  """Where a command without --workdir trains, and why, in one line."""
  path: str
  resume: bool
  reason: str
  news: bool = True  # Whether to say `reason`: not for a first run.


def choose(config: config_lib.Config, overwrite: bool = False,
           root: str = RUNS_DIR) -> Choice:
  """The folder a command without --workdir trains in.

  The newest unfinished run of the same settings under `root` is resumed (a
  run another process is training in is left alone); otherwise a new folder
  starts. `overwrite` always starts a new folder and deletes nothing.

  Raises:
    Diverged: the newest run of these settings diverged, and none is
      unfinished: the same settings would diverge again at the same step.
  """
  new = default_workdir(config.model, root)
  if overwrite:
    return Choice(new, False, f"starting a new run folder, {new} "
                  "(--overwrite without --workdir deletes no folder)")
  runs = find_runs(config, root)
  for run in runs:
    if run.status == "unfinished":
      return Choice(run.path, True, (
          f"resuming {run.path}, the newest unfinished run of these settings "
          f"under {root}/ ({run.epochs_logged} of {config.epochs} epochs "
          "logged); --overwrite starts a new folder instead"))
  settled = [r for r in runs if r.status != "running"]
  if settled and settled[0].status == "diverged":
    raise Diverged(f"{settled[0].path} trained these settings and diverged "
                   f"({_where(settled[0].last)}); they would diverge again at "
                   "the same step, so nothing was started: lower "
                   "--learning_rate or set --grad_clip (a new run folder "
                   "starts), or pass --overwrite to train them again anyway")
  if settled:
    return Choice(new, False, f"{settled[0].path} trained these settings to "
                  f"the end; starting a new run folder, {new}")
  if runs:
    return Choice(new, False, f"{runs[0].path} (these settings) is training "
                  f"in another process; starting a new run folder, {new}")
  return Choice(new, False, f"starting a new run folder, {new}", news=False)


def check_not_diverged(workdir: str, config: config_lib.Config) -> None:
  """Refuses to resume a run of the same settings that diverged: it would
  diverge again at the same step (another setting is refused elsewhere)."""
  try:
    same = not config_differences(read_config(workdir), config)
  except UserError:
    return  # No readable run here: check_run_folder says what is wrong.
  state, last = status(workdir)
  if same and state == "diverged":
    raise Diverged(f"{workdir} diverged with these settings ({_where(last)}); "
                   "resuming would diverge again at the same step: lower "
                   "--learning_rate or set --grad_clip and add --overwrite to "
                   "start it over")


def _where(row: Optional[dict]) -> str:
  row = row or {}
  return f"at step {row.get('step')}, epoch {row.get('epoch')}"


def repeat_command(config: config_lib.Config) -> str:
  """A launch.py command line that spells out every setting of `config`.

  A swept setting is given by --sweep only (launch.py refuses both).
  """
  parts = ["python", "launch.py"]
  swept = {part.partition("=")[0] for part in config.sweep.split(";")}
  for name, value in config.to_dict().items():
    if value is None or value == "" or name == "workdir" or name in swept:
      continue
    if isinstance(value, bool):
      parts.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, (list, tuple)):
      parts.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      parts.append(f"--{name}={value}")
  return " ".join(shlex.quote(p) for p in parts)


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl, flushed each time."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def truncate_after(self, epoch: int) -> None:
    """Drops epoch lines after `epoch` (and any final line): for resuming."""
    rows = [r for r in self.read() if r.get("epoch", 10**9) <= epoch
            and "test_accuracy" not in r]
    with files.atomic(self.path) as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> List[dict]:
    return list(read_metrics(self.path))


def read_metrics(path: str) -> Iterable[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except ValueError:
          break  # A torn last line from a killed run; the rest is good.
  return rows


def final_metrics(workdir: str) -> Optional[dict]:
  rows = [r for r in read_metrics(os.path.join(workdir, METRICS_FILE))
          if "test_accuracy" in r]
  return rows[-1] if rows else None

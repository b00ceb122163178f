"""The run folder: config.json, metrics.jsonl and the environment they record.

Also which folder a command without --workdir trains in (`choose`), and the
lock a process writing a run folder holds until it ends (`claim`). A run is
finished once config.json records it (`finish`), after its report.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from typing import Dict, Iterator, List, Optional, Tuple

try:
  import fcntl
except ImportError:  # Not on a POSIX system: runs are not locked.
  fcntl = None

import jax
import numpy as np

from mnist_jax import config as config_lib
# Also registers the models' own settings, which config.json records.
from mnist_jax import models
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import files

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "numpy", "matplotlib", "absl-py",
            "tensorboardX")
# Settings that may differ when resuming a run: where data and logs go, how
# to spread over devices, stock modules or kernels (the same parameters).
RESUMABLE_DIFFERENCES = ("data_dir", "mnist_dir", "workdir", "chunk_steps",
                         "impl", "checkpoint_every", "keep_checkpoints",
                         "tensorboard", "parallel", "coordinator_address",
                         "num_processes", "process_id", "analyses")
RUNS_DIR = "runs"  # Where runs go without --workdir, relative to the cwd.
# Who holds a run folder's lock, for messages only (a kill may leave it).
LOCK_FILE = ".lock"
REPORT_FILE = "report.md"
CHECKPOINT_DIR = "checkpoints"  # checkpoints.py writes it.
PERMUTATION_FILE = "permutation.npy"  # --sequence=permuted: the pixel order.
_TIME = "%Y-%m-%dT%H:%M:%S%z"

# Inside `locking()`: real path -> (the open folder holding its flock, or
# None; the outermost folder `claim` created, removed if left empty, or None).
_HELD: Optional[Dict[str, Tuple[Optional[int], Optional[str]]]] = None


class InUse(UserError):
  """Another process holds the run folder (it is training or reporting)."""


def default_workdir(model: str, root: str = RUNS_DIR) -> str:
  """runs/<model>-<timestamp>, with -2, -3, ... if that folder exists."""
  base = os.path.join(root, f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}-{n}"
  return path


def environment() -> dict:
  """Package versions, Python, platform, the JAX devices of this process and
  the git commit of this checkout (and whether it had local changes)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args):
    return subprocess.run(["git", "-C", root, *args], capture_output=True,
                          text=True, timeout=5, check=True).stdout.strip()

  try:
    code = {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
  except (OSError, subprocess.SubprocessError):
    code = {"commit": None, "dirty": None}
  return {
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "packages": versions,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "command": sys.argv,
      "cwd": os.getcwd(),
      "code": code,
      "env": {k: v for k, v in os.environ.items() if k.startswith(
          ("XLA_", "JAX_", "TFDS_", "CUDA_VISIBLE", "TPU_"))},
  }


def read_config(workdir: str) -> config_lib.Config:
  """The Config a run folder was trained with; a UserError that deletes
  nothing (the checkpoints may be intact) if config.json is no run's record."""
  path = os.path.join(workdir, CONFIG_FILE)
  keep = ("so the run's settings are unknown; nothing was changed (its "
          "checkpoints and logs are untouched): ")
  restore = f"{keep}restore it from a copy, or pass another --workdir"
  try:
    settings = _record(workdir)["config"]
    if not isinstance(settings, dict):
      raise TypeError("config is no dict")
  except (FileNotFoundError, NotADirectoryError):
    raise UserError(f"{path} does not exist: --workdir must be a run folder "
                    f"written by launch.py{_runs_within(workdir)}") from None
  except PermissionError:
    raise UserError(f"{path} cannot be read by this user (permission denied), "
                    f"{keep}give read access to it (chmod u+r {path}), or "
                    "pass another --workdir") from None
  except OSError as e:
    raise UserError(f"{path} cannot be read ({e.strerror or e}), {restore}"
                    ) from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    where = f" at line {e.lineno}" if hasattr(e, "lineno") else ""
    raise UserError(f"{path} is not valid JSON{where}, {restore}") from None
  except (KeyError, TypeError):
    raise UserError(f"{path} holds no run settings (no \"config\" object), "
                    f"{restore}") from None
  try:
    return config_lib.from_dict(settings)
  except TypeError as e:  # A value of the wrong kind, a key misspelt.
    raise UserError(f"{path} holds settings this mnist_jax cannot use ({e}), "
                    f"{restore}") from None


def used_config(workdir: str, **overrides) -> config_lib.Config:
  """The Config that evaluates or predicts with a run: its own, with each data
  folder it names (data_dir, mnist_dir; a relative one from the folder it was
  trained in) unset where this machine has no such folder, then `overrides`.
  A run folder moved from another machine reads this machine's data instead
  of making, or asking for, the other machine's folders."""
  config = read_config(workdir)
  env = _record(workdir).get("environment")
  cwd = env.get("cwd") if isinstance(env, dict) else None
  here = {}
  for name in ("data_dir", "mnist_dir"):
    if getattr(config, name):
      path = os.path.join(cwd if isinstance(cwd, str) else os.getcwd(),
                          os.path.expanduser(getattr(config, name)))
      here[name] = path if os.path.isdir(path) else None
  return config.replace(**{**here, **overrides})


def _runs_within(workdir: str) -> str:
  """For a --workdir that holds run folders (`runs`): which to pass."""
  with contextlib.suppress(OSError):
    runs = [e.path for e in os.scandir(workdir)
            if os.path.isfile(os.path.join(e.path, CONFIG_FILE))]
    newest = max(runs, key=lambda p: os.path.getmtime(
        os.path.join(p, CONFIG_FILE)), default=None)
    if newest:
      return (f"; {workdir} holds {len(runs)} run folder(s): pass one, e.g. "
              f"--workdir={newest} (the newest)")
  return ""


def config_differences(old: config_lib.Config,
                       new: config_lib.Config) -> List[str]:
  """`name: old -> new` for each setting that differs and matters for
  resuming (a setting only one of the models has differs too)."""
  a, b = old.to_dict(), new.to_dict()
  return [f"{k}: {a.get(k, 'unset')!r} -> {b.get(k, 'unset')!r}"
          for k in sorted(set(a) | set(b))
          if k not in RESUMABLE_DIFFERENCES and a.get(k) != b.get(k)]


def check_writable(workdir: str) -> None:
  """Fails before anything is written when the folder cannot be used, by
  writing a file in it or its nearest existing parent (permission bits miss
  read-only file systems)."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--workdir={workdir} is a file, not a folder; pass a "
                    "folder")
  target = path
  while not os.path.exists(target):
    target = os.path.dirname(target)
  if not os.path.isdir(target):
    raise UserError(f"--workdir={workdir} cannot be created: {target} is a "
                    "file; pass a folder path")
  try:
    files.probe_writable(target)
  except OSError as e:
    raise UserError(f"--workdir={workdir} is not writable ({target}: "
                    f"{e.strerror or e}); pass a folder you can write to"
                    ) from None


def check_run_folder(workdir: str, config: config_lib.Config,
                     overwrite: bool = False) -> bool:
  """Whether `workdir` holds a run; refuses one `config` cannot continue
  (unless `overwrite`), and any other non-empty folder, so --overwrite never
  deletes a folder launch.py did not write."""
  if not os.path.exists(workdir):
    return False
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    if set(os.listdir(workdir)) - {LOCK_FILE}:
      raise UserError(f"--workdir={workdir} is not empty and holds no "
                      f"{CONFIG_FILE}, so it is not a run folder; pass a new "
                      "or empty folder")
    return False
  if not overwrite:
    recorded = read_config(workdir)
    check_model(workdir, recorded)
    diffs = config_differences(recorded, config)
    if diffs:
      raise UserError(
          f"{workdir} holds a run with other settings ({'; '.join(diffs)}); to "
          f"resume that run, run its own command: {run_command(workdir)}; to "
          f"train these settings there instead, add --overwrite, which "
          f"deletes {contents(workdir)}; or pass another --workdir")
  return True


def complete_steps(directory: str) -> list:
  """The steps of the complete checkpoints in `directory` (orbax names one
  after its step only once it is whole)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


def check_model(workdir: str, recorded: config_lib.Config) -> None:
  """Refuses a run folder whose config.json names another model than the
  meta file of its newest checkpoint: one of them was edited or replaced."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  try:
    newest = str(complete_steps(directory)[-1])
    with open(os.path.join(directory, newest, "meta", "metadata")) as f:
      saved = json.load(f).get("model")
  except (IndexError, OSError, ValueError, AttributeError):
    return
  if isinstance(saved, str) and saved != recorded.model:
    path = os.path.join(workdir, CONFIG_FILE)
    raise UserError(
        f"{path} says model {recorded.model!r}, but the run's checkpoints were "
        f"written by model {saved!r} (was one of them edited or replaced?); "
        f"nothing was changed: if config.json was edited, set its \"model\" "
        f"back to {saved!r}; or pass another --workdir")


def lower_rate(config: config_lib.Config) -> float:
  """A learning rate to try after `config`'s diverged: its preset's when
  this one is higher, else a tenth of it."""
  known = models.registry.preset_overrides(config.model, config.preset).get(
      "learning_rate", config_lib.default("learning_rate"))
  return known if config.learning_rate > known else config.learning_rate / 10


def train_command(workdir: str) -> str:
  """The command that trains run folder `workdir` on; for a diverged run (its
  own would diverge again), one that starts it over at a lower rate."""
  if status(workdir)[0] != "diverged":
    return run_command(workdir)
  rate = lower_rate(read_config(workdir))
  return run_command(workdir, f"--learning_rate={rate:g}", "--overwrite")


def run_command(workdir: str, *extra: str) -> str:
  """config.json's `repeat` with --workdir (and `extra`), naming launch.py
  as this process was started with it (so it works from the same folder)."""
  try:  # From the settings, as this version spells them.
    argv = shlex.split(repeat_command(read_config(workdir)))
    argv = [a for a in argv if a.split("=")[0] not in
            {e.split("=")[0] for e in extra}]
  except UserError:
    argv = ["python", "launch.py"]
  if argv[1:2] == ["launch.py"] and sys.argv[0].endswith("launch.py"):
    argv[1] = sys.argv[0]
  return shlex.join([*argv, f"--workdir={workdir}", *extra])


def contents(workdir: str) -> str:
  """What deleting run folder `workdir` would lose, in words:
  "W's 3 logged epochs, 2 checkpoints and report"."""
  epochs = max((r["epoch"] for r in read_metrics(os.path.join(
      workdir, METRICS_FILE)) if _epoch_of(r)), default=0)
  checkpoints = len(complete_steps(os.path.join(workdir, CHECKPOINT_DIR)))
  parts = [f"{epochs} logged epoch{'s' * (epochs != 1)}",
           f"{checkpoints} checkpoint{'s' * (checkpoints != 1)}"]
  if os.path.exists(os.path.join(workdir, REPORT_FILE)):
    parts.append("report")
  return f"{workdir}'s {', '.join(parts[:-1])} and {parts[-1]}"


def begin(workdir: str, config: config_lib.Config, env: dict, *,
          existing: bool, overwrite: bool, meta: Optional[dict]) -> None:
  """Writes config.json as a run starts (the first thing it writes): records
  a resumption from checkpoint `meta` in an `existing` run, or a new run
  (emptying an `existing` one first: `overwrite`)."""
  claim(workdir)  # Refuses a run another command began meanwhile.
  if existing and not overwrite:
    record_resume(workdir, config, env, meta)
    return
  if existing:  # Keeps the folder, and so the lock this process holds.
    for name in set(os.listdir(workdir)) - {LOCK_FILE}:
      path = os.path.join(workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  start(workdir, config, env)


def start(workdir: str, config: config_lib.Config, env: dict) -> None:
  """Creates the folder and writes config.json, "finished" false."""
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, CONFIG_FILE),
                   {"config": config.to_dict(), "environment": env,
                    "repeat": repeat_command(config),
                    "started": time.strftime(_TIME), "finished": False})


def record_resume(workdir: str, config: config_lib.Config, env: dict,
                  meta: Optional[dict]) -> None:
  """Appends this resumption (when, from which step, how) to config.json."""
  record = _record(workdir)
  # Compared as JSON holds them: a tuple (cnn_features) is a list there.
  settings = json.loads(json.dumps(config.to_dict()))
  record.setdefault("resumes", []).append({
      "time": time.strftime(_TIME),
      "from_step": meta["step"] if meta else 0,
      "changed": {k: v for k, v in settings.items()
                  if record["config"].get(k) != v},
      "environment": env})
  record["finished"] = False
  files.write_json(os.path.join(workdir, CONFIG_FILE), record)


def _record(workdir: str) -> dict:
  """config.json as a dict (OSError, ValueError or TypeError if it is not)."""
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    record = json.load(f)
  if not isinstance(record, dict):
    raise TypeError(f"{CONFIG_FILE} holds a {type(record).__name__}")
  return record


def finish(workdir: str, final: dict) -> None:
  """Records in config.json that the run is complete: the last thing a run
  writes, after its final row, report and TensorBoard events."""
  record = _record(workdir)
  record["finished"] = {"time": time.strftime(_TIME),
                        "test_accuracy": final.get("test_accuracy")}
  files.write_json(os.path.join(workdir, CONFIG_FILE), record)


def finished(workdir: str) -> bool:
  """Whether config.json records the run complete (`finish`); a folder from
  before that record is when it has its final metrics row and report.md."""
  try:
    record = _record(workdir)
  except (OSError, ValueError, TypeError):
    return False
  if "finished" in record:
    return bool(record["finished"])
  return (final_metrics(workdir) is not None and
          os.path.exists(os.path.join(workdir, REPORT_FILE)))


@contextlib.contextmanager
def locking() -> Iterator[Dict[str, tuple]]:
  """Within: the run folders this process `claim`s stay locked (launch.py
  and the Python API train and report inside it; other callers lock
  nothing). Yields {real path: lock} of the folders claimed in the block."""
  global _HELD
  outer, _HELD = _HELD, {}
  held = _HELD
  try:
    yield held
  finally:
    for key in list(held):
      _release(key, *held.pop(key))
    _HELD = outer


def claim(workdir: str, mode: str = "train", create: bool = True) -> None:
  """In `locking()`, makes this process the one writer of run folder
  `workdir`: creates it (if `create`), takes an exclusive flock that ends
  with the process, writes LOCK_FILE saying who holds it (`mode`: "train" or
  "report") and removes what killed writers left. InUse if another holds it."""
  key = os.path.realpath(workdir)
  if _HELD is None or key in _HELD:
    return
  created = None
  if not os.path.isdir(key):
    if not create:
      return
    check_writable(workdir)
    outermost = key
    while not os.path.exists(os.path.dirname(outermost)):
      outermost = os.path.dirname(outermost)
    os.makedirs(os.path.dirname(key), exist_ok=True)
    try:
      os.mkdir(key)
      created = outermost
    except FileExistsError:
      pass  # Another process made it meanwhile: the lock decides.
  _HELD[key] = (_lock(key, workdir, mode), created)
  files.remove_temporary(key)
  try:
    files.write_json(os.path.join(key, LOCK_FILE), {
        "pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
        "command": ["python", *sys.argv], "since": time.strftime(_TIME)})
  except OSError:
    pass  # A read-only folder: the lock holds without the note.


def _lock(key: str, workdir: str, mode: str) -> Optional[int]:
  """An open descriptor of folder `key` holding its exclusive flock; None
  where the file system has no locks (the run goes on unlocked)."""
  if fcntl is None:
    return None
  for attempt in range(5):  # `in_use` probes hold the lock for an instant.
    try:
      fd = os.open(key, os.O_RDONLY)
    except OSError as e:
      raise UserError(f"{workdir} cannot be read by this user ({e.strerror}); "
                      "give read access to it, or pass another --workdir"
                      ) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      time.sleep(0.1 * (attempt + 1))
      continue
    except OSError:
      os.close(fd)
      return None
    with contextlib.suppress(OSError):
      if os.path.samestat(os.fstat(fd), os.stat(key)):
        return fd
    os.close(fd)  # Deleted and made again meanwhile: lock the new folder.
  raise _in_use_error(workdir, mode)


def _release(key: str, fd: Optional[int], created: Optional[str]) -> None:
  """Ends the hold on folder `key`; removes the folders `claim` created if
  nothing was written to them."""
  if fd is None:
    return
  with contextlib.suppress(OSError):
    os.remove(os.path.join(key, LOCK_FILE))
  folder = key
  with contextlib.suppress(OSError):  # The run wrote something: it stays.
    while created:
      os.rmdir(folder)
      if folder == created:
        break
      folder = os.path.dirname(folder)
  os.close(fd)


def in_use(workdir: str) -> bool:
  """Whether another process holds run folder `workdir` now."""
  if fcntl is None or os.path.realpath(workdir) in (_HELD or {}):
    return False
  try:
    fd = os.open(workdir, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  except OSError:
    pass
  finally:
    os.close(fd)
  return False


def check_not_in_use(workdir: str, mode: str = "train") -> None:
  """Refuses a run folder another process is writing now."""
  if in_use(workdir):
    raise _in_use_error(workdir, mode)


def holder(workdir: str) -> dict:
  """Who holds run folder `workdir`: {"pid", "command" (argv), "mode",
  "host"}, any missing. From LOCK_FILE; on Linux the process /proc/locks
  names wins where they differ (a killed holder leaves the file)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      info = json.load(f)
    info = info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    info = {}
  try:
    st = os.stat(workdir)
    with open("/proc/locks") as f:
      lines = f.read().splitlines()
  except OSError:
    return info
  inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
  pids = []
  for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"
    parts = line.split()
    if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode:
      with contextlib.suppress(ValueError):
        pids.append(int(parts[4]))
  if pids and info.get("pid") not in pids:
    try:
      with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
      argv = None
    info = {"pid": pids[0], "command": argv}
  return info


def _in_use_error(workdir: str, mode: str) -> InUse:
  info = holder(workdir)
  who = "another process"
  if info.get("pid"):
    who = f"pid {info['pid']}"
    if info.get("host") and info["host"] != socket.gethostname():
      who += f" on {info['host']}"
    command = info.get("command")
    if isinstance(command, list) and command:
      line = shlex.join(str(a) for a in command)
      who += f" ({line[:157] + '...' if len(line) > 160 else line})"
  doing = ("writing its report" if info.get("mode") == "report"
           else "training in it" if info.get("mode") == "train"
           else "writing it")
  advice = ("wait for it to end, or pass another --workdir" if mode == "train"
            else "wait for it to end, then run this again")
  return InUse(f"{workdir} is in use: {who} is {doing} now; {advice}")


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
  """(state, last metrics row) of a run folder: "finished" once config.json
  records it, "diverged" if its last row says so (resuming would repeat it),
  else "unfinished" (also trained to the end with its report incomplete)."""
  rows = read_metrics(os.path.join(workdir, METRICS_FILE))
  last = rows[-1] if rows else None
  if finished(workdir):
    return "finished", last
  if last is not None and last.get("diverged"):
    return "diverged", last
  return "unfinished", last


def find_runs(config: config_lib.Config, root: str = RUNS_DIR) -> List[Run]:
  """The run folders under `root` that `config` can resume, newest first by
  config.json's start time (then by name); anything else is skipped."""
  try:
    names = sorted(os.listdir(root))
  except OSError:
    return []
  runs = []
  for name in names:
    path = os.path.join(root, name)
    try:
      record = _record(path)
      if config_differences(config_lib.from_dict(record["config"]), config):
        continue
      state, last = status(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError, UserError):
      continue  # Not a run folder this command can use.
    try:
      started = datetime.datetime.strptime(record["started"], _TIME)
    except (KeyError, TypeError, ValueError):
      started = None
    runs.append(Run(path, started, "running" if in_use(path) else state, last))
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
  """The folder a command without --workdir trains in: the newest unfinished
  run of these settings under `root` that no other process is training in,
  else a new one (always with `overwrite`, which deletes nothing). Diverged
  if the newest one diverged and none is unfinished (it would again)."""
  new = default_workdir(config.model, root)
  if overwrite:
    return Choice(new, False, f"starting a new run folder, {new} "
                  "(--overwrite without --workdir deletes no folder)")
  runs = find_runs(config, root)
  for run in runs:
    if run.status == "unfinished" and "test_accuracy" in (run.last or {}):
      return Choice(run.path, True, (
          f"completing {run.path}, the newest unfinished run of these settings "
          f"under {root}/: it trained to the end but its report is not "
          "complete; --overwrite starts a new folder instead"))
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
  """A launch.py command line that spells out every setting of `config` (a
  swept setting by --sweep only: launch.py refuses both)."""
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
  return shlex.join(parts)


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl, flushed each time."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def resume(self, epoch: int, steps_per_epoch: Optional[int] = None,
             keep_final: bool = False) -> List[str]:
    """Keeps the rows of epochs 1..`epoch` (the checkpoint's), and the final
    row if `keep_final`. Repairs damage and returns a line on each: a line no
    JSON row goes (silently if last: a write a kill cut short), an epoch
    logged twice keeps its later row, a lost one is written back "lost"."""
    rows, bad, count = _parse(self.path)
    by_epoch, twice, final = {}, [], None
    for row in rows:
      if "test_accuracy" in row:
        final = row
      elif _epoch_of(row) and row["epoch"] <= epoch:
        if row["epoch"] in by_epoch:
          twice.append(row["epoch"])
        by_epoch[row["epoch"]] = row
    lost = [e for e in range(1, epoch + 1) if e not in by_epoch]
    for e in lost:
      by_epoch[e] = {"epoch": e, **({"step": e * steps_per_epoch}
                                    if steps_per_epoch else {}), "lost": True}
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    if keep_final and final is not None:
      kept.append(final)
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    notes = []
    for numbers, text in [
        ([n for n in bad if n != count], "line{s} {n} {was} damaged (not a "
         "JSON row) and dropped; every other row is kept"),
        (sorted(set(twice)), "epoch{s} {n} logged twice; the later row of "
         "each is kept"),
        (lost, "the row{s} of epoch{s} {n} {was} lost; written back marked "
         "{{\"lost\": true}} (the checkpoint holds the training itself; "
         "those epochs' metrics are unknown)")]:
      if numbers:
        many = len(numbers) > 1
        notes.append(f"{self.path}: " + text.format(
            s="s" * many, was="were" if many else "was",
            n=", ".join(str(v) for v in numbers)))
    return notes

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> List[dict]:
    return read_metrics(self.path)


def _epoch_of(row: dict) -> bool:
  """Whether `row` is an epoch's row (it has a whole epoch number >= 1)."""
  epoch = row.get("epoch")
  return isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1


def _parse(path: str) -> Tuple[List[dict], List[int], int]:
  """(every JSON object row, the numbers of the other non-blank lines, the
  number of the last non-blank line) of a metrics.jsonl (none if missing)."""
  rows, bad, last = [], [], 0
  try:
    with open(path, "rb") as f:
      lines = f.read().decode("utf-8", errors="replace").splitlines()
  except FileNotFoundError:
    return rows, bad, last
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    last = number
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
    else:
      bad.append(number)
  return rows, bad, last


def read_metrics(path: str) -> List[dict]:
  """The rows of a metrics.jsonl, in order, skipping damaged lines (a
  resumed run repairs and reports them: MetricsLog.resume)."""
  return _parse(path)[0]


def final_metrics(workdir: str) -> Optional[dict]:
  rows = [r for r in read_metrics(os.path.join(workdir, METRICS_FILE))
          if "test_accuracy" in r]
  return rows[-1] if rows else None


def missing_final_checkpoint(workdir: str) -> Optional[str]:
  """What is wrong where a finished run's final checkpoint is gone (so its
  report cannot be made again), in words; None where it is there."""
  final = final_metrics(workdir) if finished(workdir) else None
  steps = complete_steps(checkpoint_dir(workdir))
  if not final or "steps" not in final or max(steps, default=-1) >= final["steps"]:
    return None
  latest = f"the latest is step {max(steps)}" if steps else "none is left"
  return (f"the final checkpoint, {checkpoint_dir(workdir)}/{final['steps']}, "
          f"is missing ({latest})")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def on_disk(directory: str) -> Tuple[str, str]:
  """(Which complete checkpoint a run killed now goes back to, what its
  command then does), in words."""
  steps = complete_steps(directory)
  if not steps:
    return ("no checkpoint has been saved yet, so the run starts over",
            "To start it again")
  return (f"the last complete checkpoint, {directory}/{max(steps)}, is kept",
          "To resume")


def save_array(workdir: str, name: str, array) -> None:
  with files.atomic(os.path.join(workdir, name), "wb") as f:
    np.save(f, array)


def resume_line(workdir, meta, logged, steps, resuming) -> Optional[str]:
  """Where a run in an existing folder goes on from, in one line (None: a
  new run, or one started over)."""
  if meta is None:
    if not resuming:
      return None
    epochs = [r["epoch"] for r in MetricsLog(workdir).read()
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

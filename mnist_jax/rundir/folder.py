"""The run folder: config.json, metrics.jsonl and the environment they record.

Also which folder a command trains in when it names none (`choose`): the
newest unfinished run of the same settings under runs/, else a new one. A
process that writes a run folder holds a lock on it (`claim`) until it ends,
so a second command never writes a run that another one is writing. A run is
finished once config.json records it (`finish`), after its report: a run
killed before that is completed by the same command.
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
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

try:
  import fcntl
except ImportError:  # Not on a POSIX system: runs are not locked.
  fcntl = None

import jax

from mnist_jax import config as config_lib
# For its registrations: the models' own settings, which config.json records
# beside the fields (config_lib.MODEL_SETTINGS).
from mnist_jax import models  # pylint: disable=unused-import
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
# Who holds a run folder's lock (pid, command): for the message of a process
# refused, never for deciding; a killed holder may leave it behind.
LOCK_FILE = ".lock"
REPORT_FILE = "report.md"
# The checkpoints' folder (checkpoints.py writes it; this module only lists
# it, and reads a checkpoint's meta file, without orbax).
CHECKPOINT_DIR = "checkpoints"
PERMUTATION_FILE = "permutation.npy"  # --sequence=permuted: the pixel order.


class InUse(UserError):
  """Another process holds the run folder (it is training or reporting)."""


@dataclasses.dataclass(frozen=True)
class _Lock:
  fd: Optional[int]  # The open folder (the lock goes with it, even on SIGKILL).
  # The outermost folder `claim` created for it (runs/ too, for a first run),
  # or None: those it created are removed again if nothing was written.
  created: Optional[str]


# Inside `locking()`: the run folders this process holds, real path -> _Lock.
_HELD: Optional[Dict[str, _Lock]] = None


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
  """The Config a run folder was trained with.

  Raises:
    UserError: config.json is missing, cannot be read or is not a run's
      record; the message deletes nothing (the checkpoints may be intact).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  keep = ("so the run's settings are unknown; nothing was changed (its "
          "checkpoints and logs are untouched): ")
  try:
    with open(path) as f:
      record = json.load(f)
    settings = record["config"]
    if not isinstance(settings, dict):
      raise TypeError("config is no dict")
  except (FileNotFoundError, NotADirectoryError):
    raise UserError(f"{path} does not exist: --workdir must be a run folder "
                    "written by launch.py") from None
  except PermissionError:
    raise UserError(f"{path} cannot be read by this user (permission denied), "
                    f"{keep}give read access to it (chmod u+r {path}), or "
                    "pass another --workdir") from None
  except OSError as e:
    raise UserError(f"{path} cannot be read ({e.strerror or e}), {keep}"
                    "restore it from a copy, or pass another --workdir"
                    ) from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    where = f" at line {e.lineno}" if hasattr(e, "lineno") else ""
    raise UserError(f"{path} is not valid JSON{where}, {keep}restore it from "
                    "a copy, or pass another --workdir") from None
  except (KeyError, TypeError):
    raise UserError(f"{path} holds no run settings (no \"config\" object), "
                    f"{keep}restore it from a copy, or pass another --workdir"
                    ) from None
  try:
    return config_lib.from_dict(settings)
  except TypeError as e:  # A value of the wrong kind, a key misspelt.
    raise UserError(f"{path} holds settings this mnist_jax cannot use ({e}), "
                    f"{keep}restore it from a copy, or pass another --workdir"
                    ) from None


def config_differences(old: config_lib.Config, new: config_lib.Config) -> List[str]:
  """`name: old -> new` for each setting that differs and matters for
  resuming (a setting only one of the models has differs too)."""
  a, b = old.to_dict(), new.to_dict()
  return [f"{k}: {a.get(k, 'unset')!r} -> {b.get(k, 'unset')!r}"
          for k in sorted(set(a) | set(b))
          if k not in RESUMABLE_DIFFERENCES and a.get(k) != b.get(k)]


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
    files.probe_writable(target)
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
    if set(os.listdir(workdir)) - {LOCK_FILE}:
      raise UserError(f"--workdir={workdir} is not empty and holds no "
                      f"{CONFIG_FILE}, so it is not a run folder; pass a new or "
                      "empty folder")
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
  """The steps of the complete checkpoints in `directory`, from its listing
  alone: orbax gives a checkpoint its step's name only once it is whole."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


def saved_model(directory: str) -> Optional[str]:
  """The model name the newest complete checkpoint in `directory` records,
  read from its meta file alone (None if there is none, or it is unreadable)."""
  for step in reversed(complete_steps(directory)):
    try:
      with open(os.path.join(directory, str(step), "meta", "metadata")) as f:
        model = json.load(f).get("model")
      return model if isinstance(model, str) else None
    except (OSError, ValueError, AttributeError):
      return None
  return None


def check_model(workdir: str, recorded: config_lib.Config) -> None:
  """Refuses a run folder whose config.json names another model than its
  checkpoints: one of them was edited or replaced (nothing is verified
  damaged, and the run is no run of other settings to start over)."""
  saved = saved_model(os.path.join(workdir, CHECKPOINT_DIR))
  if saved is not None and saved != recorded.model:
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
  """The command that trains run folder `workdir` on; for a run that
  diverged (its own command would again), one with a lower rate that
  starts it over."""
  if status(workdir)[0] != "diverged":
    return run_command(workdir)
  rate = lower_rate(read_config(workdir))
  return run_command(workdir, f"--learning_rate={rate:g}", "--overwrite")


def run_command(workdir: str, *extra: str) -> str:
  """The command that trains run folder `workdir` with its own settings:
  config.json's `repeat` with --workdir (and `extra`), with launch.py as this
  process was started with it (so it works from the same folder)."""
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
  "W's 3 epochs, 2 checkpoints and report"."""
  epochs = max([r["epoch"] for r in read_metrics(os.path.join(
      workdir, METRICS_FILE)) if _epoch_of(r)] or [0])
  try:
    checkpoints = sum(name.isdigit() for name in os.listdir(
        os.path.join(workdir, CHECKPOINT_DIR)))
  except OSError:
    checkpoints = 0
  parts = [f"{epochs} logged epoch{'s' * (epochs != 1)}",
           f"{checkpoints} checkpoint{'s' * (checkpoints != 1)}"]
  if os.path.exists(os.path.join(workdir, REPORT_FILE)):
    parts.append("report")
  return f"{workdir}'s {', '.join(parts[:-1])} and {parts[-1]}"


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
  claim(workdir)  # Refuses a run another command began meanwhile.
  if existing and not overwrite:
    record_resume(workdir, config, env, meta)
    return
  if existing:
    _empty(workdir)
  os.makedirs(workdir, exist_ok=True)
  start(workdir, config, env)


def _empty(workdir: str) -> None:
  """Deletes what a run folder holds (--overwrite), keeping the folder and
  so the lock this process holds on it."""
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name == LOCK_FILE:
      continue
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def start(workdir: str, config: config_lib.Config, env: dict) -> None:
  """Creates the folder and writes config.json with the environment.

  Its "finished" is false until `finish` records the run complete.
  """
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, CONFIG_FILE),
                    {"config": config.to_dict(), "environment": env,
                     "repeat": repeat_command(config),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "finished": False})


def record_resume(workdir: str, config: config_lib.Config, env: dict,
                  meta: Optional[dict]) -> None:
  """Appends this resumption (when, from which step, how) to config.json."""
  record = _record(workdir)
  # Compared as JSON holds them: a tuple (cnn_features) is a list there.
  settings = json.loads(json.dumps(config.to_dict()))
  record.setdefault("resumes", []).append({
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
  record["finished"] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "test_accuracy": final.get("test_accuracy")}
  files.write_json(os.path.join(workdir, CONFIG_FILE), record)


def finished(workdir: str) -> bool:
  """Whether config.json records the run complete (`finish`).

  A run folder from before that record counts as finished when it has its
  final metrics row and report.md.
  """
  try:
    record = _record(workdir)
  except (OSError, ValueError, TypeError):
    return False
  if "finished" in record:
    return bool(record["finished"])
  return (final_metrics(workdir) is not None and
          os.path.exists(os.path.join(workdir, REPORT_FILE)))


@contextlib.contextmanager
def locking() -> Iterator[Dict[str, _Lock]]:
  """Within: the run folders this process `claim`s stay locked until it ends.

  launch.py and the Python API train (and report) inside it, so `in_use`
  tells a folder a process is writing now; other callers of
  train.train_and_evaluate lock nothing.

  Yields:
    {real path: lock} of the folders claimed in the block (all released
    after it; a folder `claim` created and nothing was written to goes).
  """
  global _HELD
  outer, _HELD = _HELD, {}
  held = _HELD
  try:
    yield held
  finally:
    for key in list(held):
      _release(key, held.pop(key))
    _HELD = outer


def claim(workdir: str, mode: str = "train", create: bool = True) -> None:
  """Makes this process the one writer of run folder `workdir` (in `locking()`).

  Creates the folder if it does not exist (unless not `create`: then nothing
  is locked), takes an exclusive lock on it that ends with the process (a
  kill -9 leaves none behind), writes LOCK_FILE saying who holds it, and
  removes what killed writers left (files.remove_temporary). Outside
  `locking()`, and for a folder held already, a no-op.

  Args:
    workdir: the run folder.
    mode: what this process does there ("train" or "report"), for messages.
    create: create a folder that does not exist.

  Raises:
    UserError: another process holds it (naming it, where the system tells),
      or the folder cannot be created or read.
  """
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
  _HELD[key] = _Lock(_lock(key, workdir, mode), created)
  files.remove_temporary(key)
  try:
    files.write_json(os.path.join(key, LOCK_FILE), {
        "pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
        "command": ["python", *sys.argv],
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
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
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(key))
    except OSError:
      same = False
    if same:
      return fd
    os.close(fd)  # Deleted and made again meanwhile: lock the new folder.
  raise _in_use_error(workdir, mode)


def _release(key: str, lock: _Lock) -> None:
  """Ends this process's hold on folder `key`; removes the folder if `claim`
  created it and nothing was written to it."""
  if lock.fd is None:
    return
  try:
    os.remove(os.path.join(key, LOCK_FILE))
  except OSError:
    pass
  folder = key
  while lock.created:
    try:
      os.rmdir(folder)
    except OSError:
      break  # The run wrote something: it stays.
    if folder == lock.created:
      break
    folder = os.path.dirname(folder)
  os.close(lock.fd)


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
    return False
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    os.close(fd)


def check_not_in_use(workdir: str, mode: str = "train") -> None:
  """Refuses a run folder another process is writing now."""
  if in_use(workdir):
    raise _in_use_error(workdir, mode)


def holder(workdir: str) -> dict:
  """Who holds run folder `workdir`, as far as the system tells: {"pid",
  "command" (argv), "mode", "host"}, any of them missing ({} if unknown).

  LOCK_FILE says it; on Linux /proc/locks names the process that holds the
  lock, which wins where they differ (the file a killed holder left).
  """
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      info = json.load(f)
    info = info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    info = {}
  pids = _lock_pids(workdir)
  if pids and info.get("pid") not in pids:
    try:
      with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
      argv = None
    info = {"pid": pids[0], "command": argv}
  return info


def _lock_pids(workdir: str) -> List[int]:
  """The processes holding a flock on folder `workdir`, from /proc/locks."""
  try:
    st = os.stat(workdir)
    with open("/proc/locks") as f:
      lines = f.read().splitlines()
  except OSError:
    return []
  inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
  pids = []
  for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"
    parts = line.split()
    if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode:
      try:
        pids.append(int(parts[4]))
      except ValueError:
        pass
  return pids


def describe_holder(info: dict) -> str:
  """"pid 123 (python launch.py --model=mlp ...)" from `holder`'s dict."""
  if not info.get("pid"):
    return "another process"
  text = f"pid {info['pid']}"
  if info.get("host") and info["host"] != socket.gethostname():
    text += f" on {info['host']}"
  command = info.get("command")
  if isinstance(command, list) and command:
    line = shlex.join(str(a) for a in command)
    text += f" ({line[:157] + '...' if len(line) > 160 else line})"
  return text


def _in_use_error(workdir: str, mode: str) -> InUse:
  info = holder(workdir)
  doing = ("writing its report" if info.get("mode") == "report"
           else "training in it" if info.get("mode") == "train"
           else "writing it")
  advice = ("wait for it to end, or pass another --workdir" if mode == "train"
            else "wait for it to end, then run this again")
  return InUse(f"{workdir} is in use: {describe_holder(info)} is {doing} "
                   f"now; {advice}")


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

  finished: config.json records it (`finished`): its report is complete.
  diverged: its last row says so (resuming repeats the divergence at the same
  step). Else unfinished, also a run trained to the end whose report is not
  complete (the same command completes it).
  """
  rows = read_metrics(os.path.join(workdir, METRICS_FILE))
  last = rows[-1] if rows else None
  if finished(workdir):
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

  def resume(self, epoch: int, steps_per_epoch: Optional[int] = None,
             keep_final: bool = False) -> List[str]:
    """Keeps the rows of epochs 1..`epoch` (what the checkpoint covers).

    Later rows go (the resumed run logs them again), and the final row unless
    `keep_final` (a run whose training ended, being completed). Damage is
    repaired from what survives and said, never dropped silently: a line that
    is not a JSON row goes (silently only as the last line: a write a kill
    cut short), an epoch logged twice keeps its later row, and an epoch of
    1..`epoch` whose row is lost is written back as {"epoch": E, "step": S,
    "lost": true} (its training is in the checkpoint; its metrics are not).

    Returns:
      one line per repair, for the console.
    """
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
    with files.atomic(self.path) as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")
    notes, torn = [], [n for n in bad if n != count]
    if torn:
      notes.append(f"{self.path}: line{'s' * (len(torn) > 1)} "
                   f"{_numbers(torn)} {'were' if len(torn) > 1 else 'was'} "
                   "damaged (not a JSON row) and dropped; every other row is "
                   "kept")
    if twice:
      notes.append(f"{self.path}: epoch{'s' * (len(twice) > 1)} "
                   f"{_numbers(sorted(set(twice)))} logged twice; the later "
                   "row of each is kept")
    if lost:
      notes.append(f"{self.path}: the row{'s' * (len(lost) > 1)} of epoch"
                   f"{'s' * (len(lost) > 1)} {_numbers(lost)} "
                   f"{'were' if len(lost) > 1 else 'was'} lost; written back "
                   "marked {\"lost\": true} (the checkpoint holds the "
                   "training itself; those epochs' metrics are unknown)")
    return notes

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> List[dict]:
    return read_metrics(self.path)


def _numbers(values: Sequence[int]) -> str:
  return ", ".join(str(v) for v in values)


def _epoch_of(row: dict) -> bool:
  """Whether `row` is an epoch's row (it has a whole epoch number >= 1)."""
  epoch = row.get("epoch")
  return isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1


def _parse(path: str) -> Tuple[List[dict], List[int], int]:
  """(every JSON object row, the numbers of the other non-blank lines, the
  number of the last non-blank line) of a metrics.jsonl; a missing file has
  none."""
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
  """The rows of a metrics.jsonl, in order; damaged lines are skipped (a
  resumed run repairs and reports them: MetricsLog.resume)."""
  return _parse(path)[0]


def final_metrics(workdir: str) -> Optional[dict]:
  rows = [r for r in read_metrics(os.path.join(workdir, METRICS_FILE))
          if "test_accuracy" in r]
  return rows[-1] if rows else None


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def on_disk(directory: str) -> str:
  """Which complete checkpoint a run killed now goes back to, in words."""
  steps = complete_steps(directory)
  if not steps:
    return "no checkpoint has been saved yet, so the run starts over"
  return f"the last complete checkpoint, {directory}/{max(steps)}, is kept"


def save_array(workdir: str, name: str, array) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  with files.atomic(os.path.join(workdir, name), "wb") as f:
    np.save(f, array)


def resume_line(workdir, meta, logged, steps, resuming) -> Optional[str]:
  """Where a run in an existing folder goes on from, in one line (None: a
  new run, or one started over)."""
  if meta is None:
    if not resuming:
      return None
    epochs = [r["epoch"] for r in MetricsLog(workdir).read() if "train_loss" in r]
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

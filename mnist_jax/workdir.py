"""The run folder: config.json, metrics.jsonl and the environment they record."""

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
from typing import Iterable, List, Optional

import jax

from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax.errors import UserError

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


def default_workdir(model: str) -> str:
  return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


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
  if existing and not overwrite:
    record_resume(workdir, config, env, meta)
    return
  if existing:
    shutil.rmtree(workdir)
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

"""The run folder: config.json, metrics.jsonl and the environment they record."""

import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from typing import Iterable, List, Optional

from mnist_jax import config as config_lib
from mnist_jax.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "numpy", "matplotlib", "absl-py")
# Settings that may differ when resuming a run: where to find data, how to log.
RESUMABLE_DIFFERENCES = ("data_dir", "mnist_dir", "workdir", "chunk_steps",
                         "parallel", "coordinator_address", "num_processes",
                         "process_id")


def default_workdir(model: str) -> str:
  return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def environment() -> dict:
  """Package versions, Python, platform and the JAX devices of this process."""
  import jax  # pylint: disable=g-import-not-at-top
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
  }


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON through a temporary file and a rename: never half a file."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


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
    raise UserError(f"{path} is unreadable ({type(e).__name__}); it is not a "
                    "run folder written by launch.py") from None


def config_differences(old: config_lib.Config, new: config_lib.Config) -> List[str]:
  """`name: old -> new` for each setting that differs and matters for resuming."""
  a, b = old.to_dict(), new.to_dict()
  return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a)
          if k not in RESUMABLE_DIFFERENCES and a[k] != b[k]]


def check_writable(workdir: str) -> None:
  """Fails early, before anything is written, when the folder cannot be used."""
  parent = os.path.dirname(os.path.abspath(workdir)) or "."
  target = workdir if os.path.exists(workdir) else parent
  while not os.path.exists(target):
    target = os.path.dirname(target)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a folder; pass a folder")
  if not os.access(target, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir} is not writable (no write permission "
                    f"on {target}); pass a folder you can write to")


def start(workdir: str, config: config_lib.Config, env: dict) -> None:
  """Creates the folder and writes config.json with the environment."""
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, CONFIG_FILE),
                    {"config": config.to_dict(), "environment": env,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl, flushed each time."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def truncate_after(self, epoch: int) -> None:
    """Drops epoch lines after `epoch` (and any final line): for resuming."""
    rows = [r for r in self.read() if r.get("epoch", 10**9) <= epoch
            and "test_accuracy" not in r]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)

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

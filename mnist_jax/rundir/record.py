"""config.json: a run's record: settings, environment, the command that
repeats it, each resumption, and whether it finished (written last).
"""

import json
import os
import platform
import shlex
import shutil
import sys
from importlib import metadata
from typing import Dict, List, Optional, Tuple

import jax

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import BadFlag, UserError, first_line
from mnist_jax import files
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import process

CONFIG_FILE = "config.json"
PERMUTATION_FILE = "permutation.npy"  # --sequence=permuted: the pixel order.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "numpy", "matplotlib", "absl-py",
            "tensorboardX")


def environment() -> dict:
  """Package versions, Python, platform, JAX devices, and code.record()
  (`begin` writes its "diff" into the run folder)."""
  versions: Dict[str, Optional[str]] = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "cpu": cpu(),
      "packages": versions,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "command": sys.argv,
      "cwd": os.getcwd(),
      "code": code_lib.record(),
      "env": {k: v for k, v in os.environ.items() if k.startswith(
          ("XLA_", "JAX_", "TFDS_", "CUDA_VISIBLE", "TPU_"))},
  }


def cpu() -> str:
  """This machine's CPU in words: its model name and the cores this process
  may use."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(l.split(":", 1)[1].strip() for l in f
                   if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{model}, {process.cores()} cores"


def read_record(workdir: str) -> dict:
  """config.json as a dict (OSError, ValueError or TypeError if it is not)."""
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    record = json.load(f)
  if not isinstance(record, dict):
    raise TypeError(f"{CONFIG_FILE} holds a {type(record).__name__}")
  return record


def _record_or_empty(workdir: str) -> dict:
  """config.json as a dict, {} where it is missing or not one."""
  try:
    return read_record(workdir)
  except (OSError, ValueError, TypeError):
    return {}


def read_config(workdir: str) -> config_lib.Config:
  """The Config a run folder was trained with; a UserError that deletes
  nothing if config.json is no run's record."""
  path = os.path.join(workdir, CONFIG_FILE)
  keep = ("so the run's settings are unknown; nothing was changed (its "
          "checkpoints and logs are untouched): ")
  try:
    settings = read_record(workdir)["config"]
    if not isinstance(settings, dict):
      raise TypeError(f"its \"config\" is a {type(settings).__name__}")
    return models.from_dict(settings)
  except (FileNotFoundError, NotADirectoryError):
    raise UserError(f"{path} does not exist: --workdir must be a run folder "
                    f"written by launch.py{_runs_within(workdir)}") from None
  except OSError as e:
    raise UserError(f"{path} cannot be read ({e.strerror or e}), {keep}give "
                    "this user read access to it, or pass another --workdir"
                    ) from None
  except (ValueError, KeyError, TypeError, BadFlag) as e:
    why = e if isinstance(e, BadFlag) else (
        f"{type(e).__name__}: {first_line(e)}")
    raise UserError(f"{path} holds settings this mnist_jax cannot use ({why}), "
                    f"{keep}restore it from a copy, or pass another --workdir"
                    ) from None


def is_run(path: str) -> bool:
  """Whether `path` is a run folder (it holds config.json)."""
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def runs_in(folder: str) -> List[str]:
  """The run folders in `folder`, sorted ([] where it cannot be listed)."""
  try:
    return sorted(e.path for e in os.scandir(folder) if is_run(e.path))
  except OSError:
    return []


def _runs_within(workdir: str) -> str:
  """For a --workdir that holds run folders (`runs`): which to pass."""
  runs = runs_in(workdir)
  newest = max(runs, key=lambda p: os.path.getmtime(
      os.path.join(p, CONFIG_FILE)), default=None)
  return (f"; {workdir} holds {len(runs)} run folder(s): pass one, e.g. "
          f"--workdir={newest} (the newest)") if newest else ""


def used_config(workdir: str, **overrides) -> config_lib.Config:
  """The Config that evaluates or predicts with a run: its own, less the data
  folders this machine lacks (a moved run reads this machine's data), then
  `overrides`."""
  config = read_config(workdir)
  env = read_record(workdir).get("environment")
  cwd = env.get("cwd") if isinstance(env, dict) else None
  here = {}
  for name in ("data_dir", "mnist_dir"):
    if getattr(config, name):
      path = os.path.join(cwd if isinstance(cwd, str) else os.getcwd(),
                          os.path.expanduser(getattr(config, name)))
      here[name] = path if os.path.isdir(path) else None
  return config.replace(**{**here, **overrides})


def repeat_command(config: config_lib.Config) -> str:
  """A launch.py command line of every setting (a swept one by --sweep only)."""
  parts = ["python", "launch.py"]
  swept = {part.partition("=")[0] for part in config.sweep.split(";")}
  for name, value in config.to_dict().items():
    if value is None or value == "" or name == "workdir" or name in swept:
      continue
    parts.append((f"--{name}" if value else f"--no{name}") if isinstance(
        value, bool) else f"--{name}={config_lib.typed(value)}")
  return shlex.join(parts)


def begin(workdir: str, config: config_lib.Config, env: dict, *,
          existing: bool = False, overwrite: bool = False,
          meta: Optional[dict] = None) -> None:
  """Writes config.json as a run starts: a resumption from checkpoint `meta`
  appended to its record (when, from which step, what changed, how), or a new
  run's record (`overwrite`: emptying the folder first), "finished" false."""
  lock.claim(workdir)  # Refuses a run another command began meanwhile.
  env = {**env, "code": dict(env.get("code") or {})}
  diff = env["code"].pop("diff", None)
  if existing and not overwrite:
    record = read_record(workdir)
    # Compared as JSON holds them: a tuple (cnn_features) is a list there.
    settings = json.loads(json.dumps(config.to_dict()))
    record.setdefault("resumes", []).append({
        "time": files.now(),
        "from_step": meta["step"] if meta else 0,
        "changed": {k: v for k, v in settings.items()
                    if record["config"].get(k) != v},
        "environment": env})
  else:
    if existing:  # Keeps the folder, and so the lock this process holds.
      for name in set(os.listdir(workdir)) - {lock.LOCK_FILE}:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    record = {"config": config.to_dict(), "environment": env,
              "repeat": repeat_command(config),
              "started": files.now()}
  if diff:  # The edits it trains with (a resume's: the latest).
    files.write_text(os.path.join(workdir, code_lib.DIFF_FILE), diff)
  files.write_json(os.path.join(workdir, CONFIG_FILE),
                   {**record, "finished": False})


def trained_code(workdir: str) -> dict:
  """The code a run last trained with (its latest resumption's, else its
  start's): code.py's record, {} where unknown."""
  record = _record_or_empty(workdir)
  envs = [record.get("environment")] + [
      r.get("environment") for r in record.get("resumes") or []
      if isinstance(r, dict)]
  codes = [e.get("code") for e in envs if isinstance(e, dict)]
  return next((c for c in reversed(codes) if isinstance(c, dict)), {})


def finish(workdir: str, final: dict) -> None:
  """Records that the run is complete: the last thing a run writes."""
  record = read_record(workdir)
  record["finished"] = {"time": files.now(),
                        "test_accuracy": final.get("test_accuracy")}
  files.write_json(os.path.join(workdir, CONFIG_FILE), record)


def finished(workdir: str) -> bool:
  """Whether config.json records the run complete (`finish`)."""
  return bool(_record_or_empty(workdir).get("finished"))


def diverged_at(row: Optional[dict]) -> str:
  """Where a diverged run's last row says it diverged, in words."""
  row = row or {}
  return f"at step {row.get('step')}, epoch {row.get('epoch')}"


def status(workdir: str) -> Tuple[str, Optional[dict]]:
  """(state, last metrics row): "finished", "diverged" (its last row says
  so) or "unfinished" (also trained to the end, its report incomplete)."""
  rows = metrics_log.MetricsLog(workdir).read()
  last = rows[-1] if rows else None
  if finished(workdir):
    return "finished", last
  if last is not None and last.get("diverged"):
    return "diverged", last
  return "unfinished", last

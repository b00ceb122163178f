"""One run's devices and compiled programs: the process, --parallel, the engine.

The process: `setup_process` turns on JAX's persistent compilation cache;
`split_host` makes a CPU-only host one XLA:CPU device per core, so that
--parallel=auto can run data parallel there (the layout a run measures
fastest on its own train step, `Engine.choose`); `initialize` starts
`jax.distributed` for several processes, of which only process 0 writes files.

Data parallelism over devices and hosts (`setup` -> `Parallel`): one step
body, three ways to run it.

  none     one device runs the jitted chunk of steps (`train.make_train_chunk`).
  pmap     the same chunk mapped over the local devices with `jax.pmap`; each
           device takes B / D examples of the global batch B and `lax.pmean`
           averages the gradients (`train.train_step(axis_name=AXIS)`).
  sharded  one `jax.jit` over a mesh of every device: parameters replicated,
           the batch sharded along the `data` axis; XLA inserts the reductions.

Every device holds the whole (small) uint8 dataset; what is split is the
[C, B] array of example indices of a chunk, along its batch axis B. So the
device-resident scanned epoch is the same in every mode, and the same global
batches give the same updates on any device count. With several processes,
each process feeds the columns of the global batch that belong to its own
devices.

`Engine`, built once per run, is the one object the loop calls. It puts the
dataset and the batch indices on the devices as the mode wants them, stacks
the members' axis of several models and, on a split CPU host, splits it over
the devices (members.py), compiles the train chunk and the evaluation that
train.py defines, runs them, and hands metrics back as host numbers. The loop
never sees a device layout.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax.config import PARALLEL as MODES
from mnist_jax.data import batches as batches_lib
from mnist_jax.errors import UserError
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import files
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics as metrics_lib

AXIS = "data"  # The pmap axis name and the mesh axis the batch is sharded along.


# The process.

def user_cache(*names: str) -> str:
  """A path in mnist_jax's folder of the user's cache ($XDG_CACHE_HOME, else
  ~/.cache): compiled programs, the layouts --parallel=auto measured."""
  root = (os.environ.get("XDG_CACHE_HOME") or
          os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(root, "mnist_jax", *names)


def setup_process(cache_dir: Optional[str] = None) -> None:
  """Turns on JAX's persistent compilation cache (unless cache_dir is empty).

  A second run of the same model and shapes then loads its compiled epoch
  from disk instead of compiling it again. Default: user_cache("jax").
  """
  if cache_dir is None:
    cache_dir = user_cache("jax")
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR", cache_dir)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # tfds warns once about decoding PNGs with PIL instead of OpenCV: that is
  # the intended path here, and it runs once per dataset.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").setLevel(logging.ERROR)


# Host devices --parallel=auto makes on a CPU-only machine: one per core, at
# most this many (only 2-core hosts have been measured).
MAX_HOST_DEVICES = 8
_split = 0  # The CPU device count split_host set in this process, or 0.


def _accelerator_possible() -> bool:
  """True when JAX may pick a GPU or TPU: a plugin is installed or asked for."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] != "cpu"
  if importlib.util.find_spec("libtpu") is not None:
    return True
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  return importlib.util.find_spec("jax_plugins") is not None


def _cores() -> int:
  """The CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def split_host(parallel: str = "auto", multi_process: bool = False) -> int:
  """Makes XLA:CPU one device per core so --parallel=auto can run data parallel.

  Small MNIST models leave a core idle: their matmuls are too small for XLA to
  split, so two single-batch-half devices may run side by side instead (same
  function: the gradient is the mean over the global batch); whether they do
  is measured per run setting (Engine.choose), whatever the model. Only on a host
  where JAX will run on the CPU, when --parallel is auto (several members
  split over the devices too: members.mesh), the user has not chosen a CPU
  device count (XLA_FLAGS --xla_force_host_platform_device_count or
  JAX_NUM_CPU_DEVICES), and JAX has not started its backends yet; never for
  several processes (`multi_process` or a SLURM job of several tasks).
  Returns the device count set, else 0.
  """
  global _split
  if parallel != "auto" or _split:
    return _split
  if multi_process or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return 0
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return 0
  if _accelerator_possible():
    return 0
  devices = min(_cores(), MAX_HOST_DEVICES)
  if devices < 2:
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", devices)
  except RuntimeError:  # JAX has started its backends: too late to split.
    return 0
  _split = devices
  return devices


def host_split() -> int:
  """The CPU device count split_host set in this process (0 if none)."""
  return _split


GCE_PRODUCT_FILE = "/sys/class/dmi/id/product_name"


def _slurm_job_of_several_tasks() -> bool:
  return ("SLURM_JOB_ID" in os.environ and
          int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1)


def _cloud_tpu_vm() -> bool:
  """A Google Compute Engine VM with libtpu installed: likely a Cloud TPU VM.

  Only a hint: `jax.distributed.initialize()` then reads the TPU workers from
  the VM's metadata itself, and finds no cluster on any other VM.
  """
  if importlib.util.find_spec("libtpu") is None:
    return False
  try:
    with open(GCE_PRODUCT_FILE) as f:
      return f.read().strip() == "Google Compute Engine"
  except OSError:
    return False


def initialize(config) -> None:
  """Starts `jax.distributed` when the flags or the cluster ask for it.

  Must run before anything touches a JAX device. Explicit flags win; without
  them, SLURM jobs of several tasks and Cloud TPU VMs are detected, and JAX
  reads the coordinator, process count and index from the cluster
  (`jax.distributed.initialize()` with no arguments).
  """
  if jax.distributed.is_initialized():
    return
  if config.coordinator_address or config.num_processes > 1:
    if not config.coordinator_address:
      raise UserError("--num_processes needs --coordinator_address=HOST:PORT "
                      "(process 0's address, the same on every process)")
    if config.num_processes < 1 or config.process_id < 0:
      raise UserError("--coordinator_address needs --num_processes=N and "
                      "--process_id=I (0 <= I < N, a different I per process)")
    if config.process_id >= config.num_processes:
      raise UserError(f"--process_id={config.process_id} must be below "
                      f"--num_processes={config.num_processes}")
    jax.distributed.initialize(config.coordinator_address, config.num_processes,
                               config.process_id)
  elif _slurm_job_of_several_tasks():
    jax.distributed.initialize()
  elif _cloud_tpu_vm():
    try:
      jax.distributed.initialize()
    except ValueError:  # JAX found no TPU cluster here: one process.
      pass


def is_main() -> bool:
  """Whether this process writes files (process 0)."""
  return jax.process_index() == 0


def log_prefix() -> str:
  """What this process's console lines start with: "" for a single process."""
  if jax.process_count() == 1:
    return ""
  return f"[process {jax.process_index()}/{jax.process_count()}] "


def from_main(tree):
  """Process 0's values of a pytree, on every process (resuming, many hosts)."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)


def main_first(fn: Callable[[], Any]) -> Any:
  """Runs fn on process 0, then on the others (e.g. preparing shared data)."""
  if jax.process_count() == 1:
    return fn()
  if is_main():
    result = fn()
    multihost_utils.sync_global_devices("mnist_jax:main_first")
    return result
  multihost_utils.sync_global_devices("mnist_jax:main_first")
  return fn()


# Data parallel layouts.

@dataclasses.dataclass(frozen=True)
class Parallel:
  """How a run spreads over devices, and the array layouts that go with it.

  Layouts: "replicated" data (state, dataset, masks of valid steps) and
  "sharded" data (index arrays [..., B], split along the last axis):
    none:    single-device arrays as they are.
    pmap:    [L, ...] over the L local devices; sharded ones [L, ..., B / D].
    sharded: global arrays on the mesh, replicated or sharded along `data`.
  """
  mode: str  # "none", "pmap" or "sharded".
  num_devices: int  # D: devices taking part, over all processes.
  mesh: Optional[Mesh]  # pmap: the local devices; sharded: every device.

  @property
  def axis_name(self) -> Optional[str]:
    """The collective axis the step body averages over (pmap only)."""
    return AXIS if self.mode == "pmap" else None

  def _sharding(self, ndim: int, batch: bool) -> NamedSharding:
    if self.mode == "pmap":
      return NamedSharding(self.mesh, P(AXIS))
    spec = [None] * ndim
    if batch:
      spec[-1] = AXIS
    return NamedSharding(self.mesh, P(*spec))

  def replicate(self, tree):
    """Puts a pytree (host or device arrays) on every device, whole."""
    if self.mode == "none":
      return jax.device_put(tree)
    local = self.mode == "pmap"

    def put(x):
      x = np.asarray(x)
      shape = ((self.mesh.size,) if local else ()) + x.shape
      return jax.make_array_from_callback(
          shape, self._sharding(x.ndim, batch=False),
          (lambda _: x[None]) if local else (lambda index: x[index]))

    return jax.tree.map(put, jax.device_get(tree))

  def shard(self, index):
    """Splits an index (or mask) array [..., B] of the global batch over devices.

    pmap: this process's B / P columns, as [L, ..., B / D] on its L devices.
    sharded: a global array whose devices each hold their B / D columns.
    """
    if self.mode == "none":
      return jax.device_put(index)
    index = np.asarray(index)
    if self.mode == "sharded":
      return jax.make_array_from_callback(
          index.shape, self._sharding(index.ndim, batch=True),
          lambda i: index[i])
    local = self.mesh.size
    per_process = index.shape[-1] // jax.process_count()
    start = jax.process_index() * per_process
    mine = index[..., start:start + per_process]
    mine = mine.reshape(mine.shape[:-1] + (local, per_process // local))
    return jax.device_put(np.moveaxis(mine, -2, 0), self._sharding(0, batch=True))

  def shard_chunks(self, index):
    """`shard` for each chunk of [num_chunks, ..., B]; indexable by chunk."""
    if self.mode == "none":
      return jax.device_put(index)
    return [self.shard(c) for c in np.asarray(index)]

  def replicate_chunks(self, x):
    """`replicate` for each chunk of [num_chunks, ...]; indexable by chunk."""
    if self.mode == "none":
      return jax.device_put(x)
    return [self.replicate(c) for c in np.asarray(x)]

  def unreplicate(self, tree):
    """This process's copy of replicated arrays, each on one local device."""
    if self.mode == "none":
      return tree

    def first(x):
      if not isinstance(x, jax.Array):
        return x
      shard = x.addressable_data(0)
      return shard.reshape(x.shape[1:]) if self.mode == "pmap" else shard

    return jax.tree.map(first, tree)

  def compile_train(self, chunk: Callable, *example_args,
                    compiler_options: Optional[Dict[str, str]] = None
                    ) -> Callable:
    """Compiles a raw train chunk (`train.make_train_chunk(jit=False)`).

    With `compiler_options` (XLA's), dropped if this jaxlib does not know one.

    Returns fn(state, images, labels, batch_idx, valid) -> (state, sums, bad,
    rate), the state in this mode's layout, the metric sums (over the global
    batch), the first non-finite step and the learning rate
    (train.make_train_chunk) as this process's scalars.
    """
    if self.mode == "pmap":
      fn = jax.pmap(chunk, axis_name=AXIS, donate_argnums=(0,))
    elif self.mode == "sharded":
      replicated = NamedSharding(self.mesh, P())
      fn = jax.jit(chunk, out_shardings=replicated, donate_argnums=(0,))
    else:
      fn = jax.jit(chunk, donate_argnums=(0,))
    if self.mode == "pmap" and jax.process_count() > 1:
      # pmap's AOT executable takes global shapes, its call local ones: the
      # chunk compiles on its first call instead.
      compiled = fn
    else:
      lowered = fn.lower(*example_args)
      options = dict(compiler_options or {})
      try:
        compiled = lowered.compile(options or None)
      except jax.errors.JaxRuntimeError as e:
        if not options or "option" not in str(e):
          raise
        compiled = lowered.compile()
    if self.mode == "none":
      return compiled

    def run(*args):
      state, *rest = compiled(*args)
      return (state, *self.unreplicate(tuple(rest)))

    return run

  def wrap_evaluate(self, evaluate: Callable) -> Callable:
    """Maps a raw `train.make_evaluate(jit=False)`: fn(params, images, labels,
    batch_idx, mask) -> metric sums over every device, as local scalars."""
    if self.mode == "none":
      return jax.jit(evaluate)
    if self.mode == "pmap":
      fn = jax.pmap(lambda *a: jax.lax.psum(evaluate(*a), AXIS), axis_name=AXIS)
    else:
      fn = jax.jit(evaluate, out_shardings=NamedSharding(self.mesh, P()))
    return lambda *args: self.unreplicate(fn(*args))


def resolve_mode(requested: str, device_count: int, process_count: int) -> str:
  """The mode `auto` stands for, and a check that the request can run."""
  if requested not in MODES:
    raise UserError(f"--parallel must be one of {', '.join(MODES)}, got "
                    f"{requested!r}")
  if requested == "auto":
    return "pmap" if device_count > 1 else "none"
  if requested == "none" and process_count > 1:
    raise UserError(f"--parallel=none runs on one device, but {process_count} "
                    "processes were started; pass --parallel=pmap or sharded")
  return requested


def check_batch(batch_size: int, num_devices: int) -> None:
  """A global batch must split evenly over the devices."""
  if batch_size % num_devices:
    lower = batch_size // num_devices * num_devices
    options = [s for s in (lower, lower + num_devices) if s > 0]
    raise UserError(
        f"--batch_size={batch_size} does not split over {num_devices} devices; "
        f"pass a multiple of {num_devices} (e.g. "
        f"{' or '.join(map(str, options))}), or --parallel=none")


# --parallel=auto on a CPU host that split_host cut into one device per
# core: the candidate layouts of a run are timed on its own train chunk
# (Engine.choose), the fastest kept per setting in the user's cache.
MIN_DEVICE_BATCH = 32  # Below this many examples per device, use fewer devices.
MEASURED_STEPS = 10  # Train steps timed per layout, after one untimed run.
REPEATS = 3  # Timed runs per layout; the fastest counts.
MARGIN = 0.05  # How much faster than a simpler layout another must be to win.
# A host whose load average is above its cores plus this is busy with other
# work: a device per core gains nothing there, and times measured would mislead.
BUSY_LOAD = 1.0
LAYOUT_CACHE = "parallel.json"  # In user_cache(): {setting key: choice}.


def split_host_layouts(batch_size: int, devices: int) -> List[Tuple[str, int]]:
  """The (mode, device count)s --parallel=auto chooses among on a split host,
  closest to one device first: `sharded` draws the one-device run's dropout
  masks, `pmap` one mask per device.

  Data parallel over the most devices, up to `devices`, that split the batch
  evenly into parts of at least MIN_DEVICE_BATCH; one device always.
  """
  usable = [d for d in range(2, devices + 1)
            if batch_size % d == 0 and batch_size // d >= MIN_DEVICE_BATCH]
  if not usable:
    return [("none", 1)]
  return [("none", 1), ("sharded", max(usable)), ("pmap", max(usable))]


def choose_layout(layouts: Sequence[Tuple[str, int]],
                  prepare: Callable[[str, int], Callable[[], float]],
                  setting: dict) -> Tuple[Tuple[str, int], dict]:
  """The layout cached for `setting`, else the one measured fastest; the
  simplest, unmeasured, while the host is busy (BUSY_LOAD).

  prepare(mode, device count) -> run() -> seconds per step of one timed run
  in that layout. Each layout runs once untimed, then REPEATS times in turn
  with the others (a load that comes and goes slows them all), its fastest
  run counting. A layout later in `layouts` (less simple) wins only when it
  is MARGIN faster, so that noise keeps the simpler one. The choice is
  cached under a hash of `setting` (what the step's speed depends on).

  Returns:
    ((mode, device count), how it was chosen: {"how": "cached"},
    {"how": "busy", "load": load average, "cores": cores} or
    {"how": "measured", "seconds": cost, "ms_per_step": {mode: ms}}).
  """
  key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()
  path = user_cache(LAYOUT_CACHE)
  cache = _read_json(path)
  entry = cache.get(key)
  cached = entry.get("layout") if isinstance(entry, dict) else None
  if isinstance(cached, list) and tuple(cached) in layouts:
    return tuple(cached), {"how": "cached"}
  load, cores = os.getloadavg()[0], _cores()
  if load > cores + BUSY_LOAD:
    return layouts[0], {"how": "busy", "load": round(load, 1), "cores": cores}
  start = time.perf_counter()
  runs = {layout: prepare(*layout) for layout in layouts}
  for run in runs.values():
    run()
  rounds = [{layout: run() for layout, run in runs.items()}
            for _ in range(REPEATS)]
  times = {layout: min(r[layout] for r in rounds) for layout in layouts}
  best = layouts[0]
  for layout in layouts[1:]:
    if times[layout] < times[best] * (1 - MARGIN):
      best = layout
  how = {"how": "measured", "seconds": round(time.perf_counter() - start, 2),
         "ms_per_step": {m: round(t * 1e3, 3) for (m, _), t in times.items()}}
  cache[key] = {"layout": list(best), "ms_per_step": how["ms_per_step"],
                "setting": setting}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_json(path, cache)
  except OSError:  # An unwritable cache: the next run measures again.
    pass
  return best, how


def _read_json(path: str) -> dict:
  """A JSON object file's contents; {} if it is missing or not one."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) else {}


def local_parallel(mode: str, count: int = 1) -> Parallel:
  """A single-process Parallel over the first `count` local devices."""
  if mode == "none":
    return Parallel("none", 1, None)
  return Parallel(mode, count, Mesh(np.array(jax.local_devices()[:count]),
                                    (AXIS,)))


def auto_layouts(config, num_members: int = 1) -> List[Tuple[str, int]]:
  """The layouts --parallel=auto chooses among on a CPU host split_host split
  (split_host_layouts; one device for several members), else []."""
  if not (config.parallel == "auto" and host_split() and
          jax.process_count() == 1 and jax.default_backend() == "cpu"):
    return []
  return split_host_layouts(
      config.batch_size, 1 if num_members > 1 else jax.local_device_count())


def setup(config, num_members: int = 1) -> Parallel:
  """Starts jax.distributed if asked, resolves --parallel and checks the batch.

  --parallel=auto on a split CPU host is one device here, until
  Engine.choose picks among `auto_layouts`.
  Several members (members.py) train on one device, or on a split CPU host
  over its devices along their own axis (members.mesh): never data parallel.
  """
  initialize(config)
  if auto_layouts(config, num_members):
    return local_parallel("none")
  mode = resolve_mode(config.parallel, jax.device_count(), jax.process_count())
  if mode == "none":
    return Parallel("none", 1, None)
  if mode == "pmap":
    mesh = Mesh(np.array(jax.local_devices()), (AXIS,))
  else:
    mesh = Mesh(np.array(jax.devices()), (AXIS,))
  par = Parallel(mode, jax.device_count(), mesh)
  if num_members > 1:
    raise UserError(f"the {num_members} members of --num_seeds and --sweep "
                    f"train on one device; with {par.num_devices} devices pass "
                    "--parallel=none (or one member, --num_seeds=1 and no "
                    "--sweep, to spread one model over the devices)")
  check_batch(config.batch_size, par.num_devices)
  return par


# The engine.

@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One epoch's batches on the devices, chunk by chunk.

  batches[c] and valid[c] are chunk c's indices [(M,) C, B] and which of its
  steps run [C]; `chunks` are the chunks still to run, `chunk_len` their
  length C.
  """
  batches: Sequence
  valid: Sequence
  chunks: List[int]
  num_chunks: int
  chunk_len: int
  steps: int  # Steps per epoch.

  def steps_after(self, c: int) -> int:
    """Steps of the epoch done once chunk c has run."""
    return min((c + 1) * self.chunk_len, self.steps)

  def is_last(self, c: int) -> bool:
    return c == self.num_chunks - 1


class Engine:
  """Places a run's data and state on its devices and runs its programs.

  In a run's order: `place` the dataset, `init_state` (or `restored`, for a
  checkpoint's), `start` on every process, `compile`; then per epoch
  `epoch_plan`, `train_chunk` for each chunk, `metrics` and `evaluate`.
  """

  def __init__(self, config, members: Sequence[members_lib.Member]):
    """Starts jax.distributed if asked and resolves --parallel (setup).

    Raises:
      UserError: a --parallel request these devices or members cannot run.
    """
    self.config = config
    self.members = tuple(members)
    num = len(self.members)
    self.par = setup(config, num_members=num)
    self._layouts = auto_layouts(config, num)  # Still to choose among.
    self._choice = None  # How --parallel=auto chose (choose), if it did.
    self._in_turn = members_lib.in_turn(num)
    self._member_mesh = members_lib.mesh(num)
    self._options = members_lib.compiler_options(num)
    self.steps = self.chunk_len = 0  # Set by place().
    self.images = self.labels = self._plan = self._positions = self._valid = None
    self._eval = {}
    self._data_rng = None  # Set by init_state().
    self._chunk = self._evaluate = None  # Set by compile().

  # Processes.

  @property
  def is_main(self) -> bool:
    """Whether this process writes the run folder (process 0)."""
    return is_main()

  @property
  def log_prefix(self) -> str:
    return log_prefix()

  def main_first(self, fn: Callable):
    """fn() on process 0 first, then on the others (main_first)."""
    return main_first(fn)

  def description(self) -> Optional[str]:
    """A line on how the run spreads over devices and how --parallel=auto
    chose that; None for one device not chosen among others."""
    backend = jax.default_backend().upper()
    if self.par.num_devices > 1:
      line = (f"data parallel ({self.par.mode}) over {self.par.num_devices} "
              f"{backend} devices")
    elif self._choice is None:
      return None
    else:
      line = f"one {backend} device"
    how = (self._choice or {}).get("how")
    if how == "measured":
      times = ", ".join(f"{m} {ms:.3g}" for m, ms in
                        self._choice["ms_per_step"].items())
      return (f"{line} (--parallel=auto: measured fastest in "
              f"{self._choice['seconds']:.1f} s; ms/step {times})")
    if how == "cached":
      return f"{line} (--parallel=auto: measured fastest before, cached)"
    if how == "recorded":
      return f"{line} (--parallel=auto: as this run has trained so far)"
    if how == "busy":
      return (f"{line} (--parallel=auto: not measured, the host is busy: load "
              f"{self._choice['load']:g} on {self._choice['cores']} cores)")
    return line

  def environment(self) -> dict:
    """What config.json records of the devices, besides folder.environment."""
    env = {"parallel": {"mode": self.par.mode, "devices": self.par.num_devices}}
    if self._choice is not None:
      env["parallel_choice"] = self._choice
    if self._member_mesh is not None:  # The members split over these devices.
      env["member_devices"] = self._member_mesh.devices.size
    if self._options:
      env["compiler_options"] = dict(sorted(self._options.items()))
    return env

  @property
  def axis_name(self) -> Optional[str]:
    """The collective axis the train step averages over (pmap), or None."""
    return self.par.axis_name

  def choose(self, dataset, steps: int, create: Callable,
             make_chunk: Callable[[Optional[str]], Callable], model: str,
             recorded: Optional[dict] = None) -> None:
    """Settles --parallel=auto on a split CPU host; elsewhere does nothing.

    The layout `recorded` for the run being resumed ({"mode", "devices"} of
    its config.json), so that it goes on as it began; else the one cached or
    measured fastest for this setting (choose_layout), timed on the run's own
    train chunk and first batches (`_timed_run`).

    create: as for init_state. make_chunk: fn(axis_name) -> one member's raw
      train chunk (train.make_train_chunk(config, axis_name, jit=False)).
    model: the module's repr, what the step's speed depends on with the
      config's shapes.
    """
    if len(self._layouts) < 2:
      return
    mine = recorded and (recorded.get("mode"), recorded.get("devices"))
    if mine in self._layouts:
      chosen, self._choice = mine, {"how": "recorded"}
    else:
      c = self.config
      setting = {"model": re.sub(r" at 0x[0-9a-f]+", "", model),
                 "name": c.model, "optimizer": c.optimizer,
                 "augment": c.augment, "dtype": c.dtype, "impl": c.impl,
                 "batch_size": c.batch_size,
                 "input": list(dataset.train.images.shape[1:]),
                 "cpus": _cores(), "jax": jax.__version__,
                 "layouts": [list(x) for x in self._layouts]}
      chosen, self._choice = choose_layout(
          self._layouts, functools.partial(self._timed_run, dataset, steps,
                                           create, make_chunk), setting)
    self.par = local_parallel(*chosen)

  def _timed_run(self, dataset, steps, create, make_chunk, mode: str,
                 count: int) -> Callable[[], float]:
    """The run's own train chunk laid out as (mode, count), compiled for the
    run's real shapes (so that the chosen one's compile is then found in the
    compilation cache): fn() -> seconds per step of its first MEASURED_STEPS
    steps on the first batches (the chunk's other steps are skipped)."""
    self.par = local_parallel(mode, count)
    self.place(dataset, steps)
    state, _ = self.start(self.init_state(create),
                          checkpoints.Start.from_meta(None))
    self._compile_chunk(state, make_chunk(self.par.axis_name))
    timed = min(MEASURED_STEPS, self.chunk_len)
    args = (self.images, self.labels, self.epoch_plan(1).batches[0],
            self.par.replicate(np.arange(self.chunk_len) < timed))
    chunk, state = self._chunk, [state]

    def run() -> float:
      start = time.perf_counter()
      state[0], _, bad, _ = chunk(state[0], *args)
      jax.device_get(bad)
      return (time.perf_counter() - start) / timed

    return run

  # Data.

  def place(self, dataset, steps: int) -> None:
    """Puts the dataset on the devices and lays out epochs of `steps` steps.

    dataset: pipeline.Dataset (uint8 images [N, 28, 28], int32 labels [N]).
    """
    config, put = self.config, self.par.replicate
    self.steps = steps
    self.num_classes = len(dataset.class_names)
    self.images = put(dataset.train.images)
    self.labels = put(dataset.train.labels)
    splits = {"test": dataset.test}
    if len(dataset.val):
      splits["val"] = dataset.val
    self._eval = {
        name: (put(s.images), put(s.labels),
               *map(self.par.shard, batches_lib.eval_batches(
                   len(s), config.eval_batch_size, self.par.num_devices)))
        for name, s in splits.items()}
    num_chunks, self.chunk_len = batches_lib.chunk_plan(steps, config.chunk_steps)
    self._positions = np.arange(num_chunks * self.chunk_len).reshape(
        num_chunks, self.chunk_len)
    self._valid = self.par.replicate_chunks(self._positions < steps)
    self._plan = jax.jit(members_lib.vmap(
        len(self.members), functools.partial(
            batches_lib.epoch_plan, n=len(dataset.train),
            batch_size=config.batch_size, num_chunks=num_chunks,
            chunk_len=self.chunk_len),
        in_axes=(0, None), out_axes=1))

  @property
  def splits(self) -> List[str]:
    """The evaluation splits: "test", and "val" when there is one."""
    return list(self._eval)

  # State.

  def init_state(self, create: Callable):
    """A fresh train state of every member, stacked [M, ...] (members.init_state).

    create: fn(init_rng, hparams=...) -> TrainState of one member
      (train.create_train_state). Also draws the members' data keys: both as
      a single run splits its seed.
    """
    init_rng, self._data_rng = members_lib.keys(self.members)
    return members_lib.init_state(self.members, create, init_rng, self.steps)

  def restored(self, state):
    """A state restored from a checkpoint, placed as the train chunk wants it."""
    return members_lib.place_restored(state, self._member_mesh)

  def zero_sums(self) -> Dict[str, np.ndarray]:
    """Host zeros shaped like the metric sums: [] or [M] float32."""
    shape = () if len(self.members) == 1 else (len(self.members),)
    return metrics_lib.zeros(lead=shape, host=True,
                             num_classes=self.num_classes)

  def start(self, state, start: checkpoints.Start):
    """Process 0's state and start, on every process, the state on its devices."""
    position, sums = start.as_arrays(self.zero_sums())
    state, position, sums = from_main((state, position, sums))
    return (self.par.replicate(state),
            checkpoints.Start.from_arrays(position, sums))

  # Programs.

  def compile(self, state, train_chunk: Callable, evaluate: Callable) -> float:
    """Compiles the train chunk and wraps the evaluation; returns the seconds.

    train_chunk: one member's raw chunk (train.make_train_chunk(jit=False)).
    evaluate: one member's raw evaluation (train.make_evaluate(jit=False)).
    """
    start = time.perf_counter()
    self._compile_chunk(state, train_chunk)
    self._evaluate = self.par.wrap_evaluate(
        members_lib.evaluate(evaluate, len(self.members), self._member_mesh))
    return time.perf_counter() - start

  def _compile_chunk(self, state, train_chunk: Callable) -> None:
    """Compiles one member's raw train chunk over the members and devices."""
    chunk = members_lib.train_chunk(train_chunk, len(self.members),
                                    self._in_turn, self._member_mesh)
    self._chunk = self.par.compile_train(
        chunk, state, self.images, self.labels,
        self.par.shard_chunks(self._plan(self._data_rng, 1))[0], self._valid[0],
        compiler_options=self._options)

  def epoch_plan(self, epoch: int, steps_done: int = 0) -> EpochPlan:
    """The epoch's batches (a pure function of the data keys and `epoch`).

    steps_done: steps of it run before a resume; they are skipped.
    """
    batches = self.par.shard_chunks(self._plan(self._data_rng, epoch))
    valid = self._valid
    if steps_done:
      valid = self.par.replicate_chunks((self._positions < self.steps) &
                                        (self._positions >= steps_done))
    chunks = [c for c in range(len(self._positions))
              if (c + 1) * self.chunk_len > steps_done]
    return EpochPlan(batches, valid, chunks, len(self._positions),
                     self.chunk_len, self.steps)

  def initial_sums(self, partial: Optional[Dict[str, np.ndarray]] = None):
    """An epoch's metric sums before its first chunk: zeros or `partial`."""
    if partial is not None:
      return jax.tree.map(jnp.asarray, partial)
    return metrics_lib.zeros(num_classes=self.num_classes)

  def train_chunk(self, state, plan: EpochPlan, c: int, sums):
    """Runs chunk c of `plan`: (state, sums + the chunk's, bad, rate).

    bad: host int32 [M] (or [1]), each member's first non-finite step or -1;
    reading it is the one wait for the device in each chunk. rate: the
    members' learning rates after the chunk, on the device (`rates`).
    """
    state, chunk_sums, bad, rate = self._chunk(
        state, self.images, self.labels, plan.batches[c], plan.valid[c])
    sums = jax.tree.map(jnp.add, sums, chunk_sums)
    return state, sums, np.asarray(jax.device_get(bad)).reshape(-1), rate

  def rates(self, rate) -> List[float]:
    """A chunk's learning rates as host numbers, one per member."""
    return [float(r) for r in np.asarray(jax.device_get(rate)).reshape(-1)]

  def metrics(self, sums) -> dict:
    """Metric sums as host means (members.host_metrics)."""
    return members_lib.host_metrics(sums)

  def evaluate(self, state, split: str) -> dict:
    """Host metrics of `state` on a split ("val" or "test")."""
    return members_lib.host_metrics(
        self._evaluate(state.params, *self._eval[split]))

  def step(self, state) -> int:
    """The state's global step, as a host number (the largest member's).

    Read on the host: a jnp.max over split members' steps would be a
    cross-device all-reduce, which before the first chunk of a resumed run
    could time out on a split CPU host.
    """
    return int(np.max(jax.device_get(self.par.unreplicate(state.step))))

  def host_copy(self, state):
    """This process's copy of the state, for a checkpoint."""
    return self.par.unreplicate(state)

  def member_params(self, state, i: int = 0):
    """Member i's parameters, on one device."""
    params = self.par.unreplicate(state.params)
    if len(self.members) > 1:
      params = jax.tree.map(lambda p: p[i], params)
    return params

  def stacked_params(self, state, indices: Sequence[int]):
    """The parameters of members `indices`, stacked [len(indices), ...] on the host."""
    params = jax.device_get(self.par.unreplicate(state.params))
    if len(self.members) == 1:
      return jax.tree.map(lambda p: np.stack([p] * len(indices)), params)
    return jax.tree.map(lambda p: np.asarray(p)[np.asarray(indices)], params)

  def num_params(self, state) -> int:
    """Parameters of one member."""
    leaves = jax.tree.leaves(self.par.unreplicate(state.params))
    return int(sum(p.size for p in leaves) // len(self.members))

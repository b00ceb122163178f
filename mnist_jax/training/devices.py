"""Data parallelism over devices and hosts: one step body, three ways to run it.

  none     one device runs the jitted chunk of steps (`train.make_train_chunk`).
  pmap     the same chunk mapped over the local devices with `jax.pmap`; each
           device takes B / D examples of the global batch B and `lax.pmean`
           averages the gradients (`train.train_step(axis_name=AXIS)`).
  sharded  one `jax.jit` over a mesh of every device: parameters replicated,
           the batch sharded along the `data` axis; XLA inserts the reductions.

Every device holds the whole (small) uint8 dataset; what is split is the
[C, B] array of example indices of a chunk, along its batch axis B. So the
device-resident scanned epoch is the same in every mode, and the same global
batches give the same updates on any device count.

With several processes (`jax.distributed`), each process feeds the columns of
the global batch that belong to its own devices; only process 0 writes files.
"""

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Dict, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax import runtime
from mnist_jax.config import PARALLEL as MODES
from mnist_jax.errors import UserError

AXIS = "data"  # The pmap axis name and the mesh axis the batch is sharded along.
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

    Returns fn(state, images, labels, batch_idx, valid) -> (state, sums, bad),
    the state in this mode's layout, the metric sums (over the global batch)
    and the first non-finite step (train.make_train_chunk) as this process's
    scalars.
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


# --parallel=auto on a CPU host that runtime.split_host cut into one device per
# core: the mode each model ran fastest in on a 2-core host with the seed
# presets. Models whose matmuls already use every core (linear, mlp) stay on
# one device; sharding the CNN's batch-last layout made XLA move data between
# devices, much slower than pmap.
SPLIT_HOST_MODES = {"rnn": "sharded", "lstm": "sharded", "gru": "sharded",
                    "cnn": "pmap"}
MIN_DEVICE_BATCH = 32  # Below this many examples per device, use fewer devices.


def split_host_devices(model: str, batch_size: int, devices: int):
  """(mode, device count) --parallel=auto uses on a host split into `devices`.

  The most devices, up to `devices`, that split the batch evenly into parts of
  at least MIN_DEVICE_BATCH; one device ("none") if that is one or the model
  does not gain from it.
  """
  mode = SPLIT_HOST_MODES.get(model, "none")
  usable = [d for d in range(2, devices + 1)
            if batch_size % d == 0 and batch_size // d >= MIN_DEVICE_BATCH]
  if mode == "none" or not usable:
    return "none", 1
  return mode, max(usable)


def setup(config, num_members: int = 1) -> Parallel:
  """Starts jax.distributed if asked, resolves --parallel and checks the batch.

  Several members (members.py) train on one device, or on a split CPU host
  over its devices along their own axis (replicas.mesh): never data parallel.
  """
  initialize(config)
  if (config.parallel == "auto" and runtime.host_split() and
      jax.process_count() == 1 and jax.default_backend() == "cpu"):
    mode, count = split_host_devices(
        config.model, config.batch_size,
        1 if num_members > 1 else jax.local_device_count())
    if mode == "none":
      return Parallel("none", 1, None)
    return Parallel(mode, count,
                    Mesh(np.array(jax.local_devices()[:count]), (AXIS,)))
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

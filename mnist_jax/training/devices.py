"""Where a run computes: the process, its devices, and the run's layout there.

`Layout` maps train.py's one-model functions over a run's members and
devices, one of:
  none     one device.
  sharded  one `jax.jit` over a mesh, each batch split along it by train.py's
           sharding constraint: one device's run, its numbers to float
           rounding (each device sums its part of the batch first).
  pmap     `jax.pmap`, gradients averaged: each device draws its own dropout
           masks and augmentation.
  members  several members vmapped, their axis split over the devices.
--parallel=auto is a rule, never a timing: one device if there is one;
`members` for several members; `sharded` on a GPU or TPU; on a CPU host,
split into a device per core by split_host (as for sharded and pmap),
`sharded` for the stock module classes in CPU_DATA_PARALLEL, else one device
(docs/performance.md measures it).
"""

import contextlib
import errno
import functools
import glob
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import re
import socket
import sys
import threading
import warnings
from typing import Any, Callable, Optional

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax import models
from mnist_jax.errors import UserError

AXIS = "data"  # The mesh (and pmap) axis a batch is split along.
MEMBERS = "members"  # The mesh axis members are split along.
MODES = ("auto", "none", "sharded", "pmap")
MAX_HOST_DEVICES = 8  # split_host's most CPU devices.
JOIN_TIMEOUT_S = 300  # How long processes wait for each other (jax's default).
# auto on a CPU host: fewer examples per device, fewer devices.
MIN_DEVICE_BATCH = 32
CPU_DATA_PARALLEL = ("Recurrent",)  # Stock module classes, see the module doc.


def setup_process(cache_dir: Optional[str] = None) -> None:
  """Turns on JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR,
  else the user's cache; "" turns it off)."""
  if cache_dir is None:
    cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"), "mnist_jax", "jax")
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR", cache_dir)
  with contextlib.suppress(OSError):
    os.makedirs(cache_dir, exist_ok=True)
  # No cache where it cannot be written (a read-only HOME): JAX would warn at
  # each compile (jax takes JAX_COMPILATION_CACHE_DIR itself, so unset it).
  if not (cache_dir and os.access(cache_dir, os.W_OK)):
    jax.config.update("jax_compilation_cache_dir", None)
  else:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _repair_damaged_cache_entries(cache_dir)
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").setLevel(logging.ERROR)


def _repair_damaged_cache_entries(cache_dir: str) -> None:
  """JAX warns of a damaged cache entry at every start and never replaces it:
  that program's entries go, so this compile writes them; one line says so."""
  shown, said = warnings.showwarning, []
  pattern = re.compile(r"Error reading persistent compilation cache entry "
                       r"for '([^']+)'")

  def show(message, category, *args, **kwargs):
    found = pattern.search(str(message))
    if not found:
      return shown(message, category, *args, **kwargs)
    for path in glob.glob(os.path.join(cache_dir, f"{found[1]}-*")):
      with contextlib.suppress(OSError):
        os.remove(path)
    if not said:
      said.append(found[1])
      print(f"warning: the compilation cache {cache_dir} holds damaged "
            "entries; each found is removed and written again",
            file=sys.stderr)
    return None

  warnings.showwarning = show


def _accelerator_possible() -> bool:
  """Whether JAX may pick a GPU or TPU: a plugin is installed or asked for."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] != "cpu"
  return (importlib.util.find_spec("libtpu") is not None or
          bool(importlib.metadata.entry_points(group="jax_plugins")) or
          importlib.util.find_spec("jax_plugins") is not None)


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def split_host(parallel: str = "auto", multi_process: bool = False) -> int:
  """Makes a CPU-only host one XLA device per core (at most 8), before JAX
  starts, for every --parallel but none (one device), unless the user set a
  device count or several processes run. Returns the device count set, else 0."""
  if (parallel == "none" or multi_process or _accelerator_possible() or
      int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 or
      "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return 0
  count = min(cores(), MAX_HOST_DEVICES)
  if count < 2:
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX has started its backends: too late.
    return 0
  return count


def _cloud_tpu_vm() -> bool:
  """A Google Compute Engine VM with libtpu: likely a Cloud TPU VM."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  try:
    with open("/sys/class/dmi/id/product_name") as f:
      return f.read().strip() == "Google Compute Engine"
  except OSError:
    return False


def initialize(config) -> None:
  """Starts `jax.distributed` when the flags or the cluster (SLURM, a Cloud
  TPU VM) ask for it, before anything touches a device."""
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
    _join(config.coordinator_address, config.num_processes, config.process_id)
  elif ("SLURM_JOB_ID" in os.environ and
        int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1):
    jax.distributed.initialize()
  elif _cloud_tpu_vm():
    with contextlib.suppress(ValueError):  # No TPU cluster here: one process.
      jax.distributed.initialize()


def _join(address: str, num_processes: int, process_id: int) -> None:
  """jax.distributed.initialize, ended by one line instead of jax's abort and
  C++ stack trace when not every process joins within JOIN_TIMEOUT_S, and
  by a UserError where process 0's port is in use (jax segfaults)."""
  port = address.rpartition(":")[2]
  if process_id == 0 and port.isdigit():
    try:  # As jax's coordinator will: [::] with SO_REUSEADDR (IPv4 too).
      with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", int(port)))
    except OSError as e:  # Any other error: jax's to report.
      if e.errno == errno.EADDRINUSE:
        raise UserError(f"process 0 cannot listen on port {port} of this "
                        f"host ({e.strerror}; another job?): pass a free "
                        "port in --coordinator_address, the same on every "
                        "process") from None
  def never_joined():
    print(f"error: not all {num_processes} processes joined at {address} in "
          f"{JOIN_TIMEOUT_S} s: start each with the same --coordinator_address "
          "(process 0's host, reachable from every process) and "
          "--num_processes, and its own --process_id (0 to "
          f"{num_processes - 1})", file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access
  watchdog = threading.Timer(JOIN_TIMEOUT_S, never_joined)
  watchdog.daemon = True
  watchdog.start()
  try:  # jax's own deadline comes later: the watchdog says it first.
    jax.distributed.initialize(address, num_processes, process_id,
                               initialization_timeout=JOIN_TIMEOUT_S + 30)
  finally:
    watchdog.cancel()


def is_main() -> bool:
  return jax.process_index() == 0


def from_main(tree):
  """Process 0's values of a pytree, on every process."""
  return (tree if jax.process_count() == 1
          else multihost_utils.broadcast_one_to_all(tree))


def main_first(fn: Callable[[], Any]) -> Any:
  """fn() on process 0, then on the others (preparing shared data)."""
  if jax.process_count() == 1:
    return fn()
  if is_main():
    result = fn()
  multihost_utils.sync_global_devices("mnist_jax:main_first")
  return result if is_main() else fn()


def _batch_devices(batch_size: int, available: int, least: int = 1) -> int:
  """The most devices, up to `available`, that split the batch evenly into
  parts of at least `least` examples (1 for a smaller batch)."""
  return max((d for d in range(1, available + 1)
              if batch_size % d == 0 and batch_size // d >= least), default=1)


def resolve(config, num_members: int = 1):
  """(mode, device count) of the run's layout, or a one-line refusal of what
  these devices cannot run; joins the job's processes first."""
  initialize(config)
  requested, total = config.parallel, jax.device_count()
  if requested not in MODES:
    raise UserError(f"--parallel must be one of {', '.join(MODES)}, got "
                    f"{requested!r}")
  if requested == "none" and jax.process_count() > 1:
    raise UserError(f"--parallel=none runs on one device, but "
                    f"{jax.process_count()} processes were started; pass "
                    "--parallel=sharded")
  if num_members > 1:
    if requested == "pmap":
      raise UserError(f"the {num_members} members of --num_seeds and "
                      "--sweep are split over the devices, not pmapped; "
                      "leave out --parallel=pmap")
    count = _batch_devices(num_members, total)
    if requested == "none" or jax.process_count() > 1 or count == 1:
      return "none", 1  # (Each process of several trains every member.)
    return "members", count
  if requested == "none" or total == 1:
    return "none", 1
  cpu = jax.default_backend() == "cpu"
  if requested == "auto" and (cpu or jax.process_count() == 1):
    if cpu and (type(models.get(config.model).stock(config)).__name__
                not in CPU_DATA_PARALLEL):
      return "none", 1
    count = _batch_devices(config.batch_size, total,
                           MIN_DEVICE_BATCH if cpu else 1)
    return ("sharded", count) if count > 1 else ("none", 1)
  count = total  # pmap: each process maps its local devices, of these.
  if config.batch_size % count:
    lower = config.batch_size // count * count
    options = [s for s in (lower, lower + count) if s > 0]
    raise UserError(
        f"--batch_size={config.batch_size} does not split over {count} "
        f"devices; pass a multiple of {count} (e.g. "
        f"{' or '.join(map(str, options))}), or --parallel=none")
  return ("sharded" if requested == "auto" else requested), count


class Layout:
  """How one run's programs map over its members and devices (module doc)."""

  def __init__(self, config, num_members: int = 1, say=print):
    self.num_members = num_members
    self.mode, count = resolve(config, num_members)
    devices = (jax.local_devices() if self.mode == "pmap" else
               jax.devices()[:count])
    self.mesh = (Mesh(np.array(devices), (MEMBERS if self.mode == "members"
                                          else AXIS,))
                 if self.mode != "none" else None)
    self.num_devices = count
    backend = jax.default_backend().upper()
    if count > 1:
      say({"sharded": f"data parallel over {count} {backend} devices (one "
                      "jit over a mesh)",
           "pmap": f"data parallel over {count} {backend} devices (pmap: "
                   "each device draws its own dropout masks and "
                   "augmentation)",
           "members": f"{num_members} members split over {count} {backend} "
                      "devices"}[self.mode])

  def record(self) -> dict:
    """What config.json records of the layout."""
    return {"mode": self.mode, "devices": self.num_devices}

  @property
  def axis_name(self) -> Optional[str]:
    """The pmap axis train.py averages over, or None."""
    return AXIS if self.mode == "pmap" else None

  @property
  def batch_sharding(self) -> Optional[NamedSharding]:
    """How train.py splits a chunk's batches [C, B, ...] over the mesh."""
    return (NamedSharding(self.mesh, P(None, AXIS))
            if self.mode == "sharded" else None)

  def eval_batch_size(self, batch_size: int) -> int:
    """A batch that splits over the data-parallel devices."""
    if self.mode in ("sharded", "pmap"):
      return -(-batch_size // self.num_devices) * self.num_devices
    return batch_size

  def _put(self, tree, spec: P):
    if self.mode == "none":
      return jax.device_put(tree)
    if self.mode == "pmap":  # A copy per local device: [L, ...].
      return jax.device_put(
          jax.tree.map(lambda x: jnp.broadcast_to(x, (self.mesh.size,
                                                      *x.shape)), tree),
          NamedSharding(self.mesh, P(AXIS)))
    sharding = NamedSharding(self.mesh, spec)
    if jax.process_count() == 1:
      return jax.device_put(tree, sharding)

    def put(x):  # Each process holds the whole value: global arrays.
      data = jax.random.key_data(x) if jnp.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x
      array = jax.make_array_from_callback(
          np.shape(data), sharding, lambda i, d=np.asarray(data): d[i])
      return jax.random.wrap_key_data(array) if data is not x else array
    return jax.tree.map(put, tree)

  def put(self, split):
    """(images, labels) of a data split, whole on every device."""
    return self._put((np.asarray(split.images), np.asarray(split.labels)), P())

  def put_state(self, state):
    """A (stacked) train state, or a tree laid out as one (an epoch's metric
    sums), placed for the programs (from host or device)."""
    return self._put(state, P(MEMBERS) if self.mode == "members" else P())

  def map(self, fn: Callable, per_member: Optional[dict] = None,
          donate: bool = True, mapped: int = 1) -> Callable:
    """`fn` of one model, jitted over the members and devices: its first
    `mapped` arguments (the state, ...) and the keyword arguments
    `per_member` ([M] arrays) mapped over the members, the others shared;
    the state donated unless not `donate`."""
    given = sum(p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty
                for p in inspect.signature(fn).parameters.values())
    if self.num_members > 1:
      fn = functools.partial(
          jax.vmap(fn, in_axes=(0,) * mapped + (None,) * (given - mapped)),
          **(per_member or {}))
    donated = (0,) if donate else ()
    if self.mode == "pmap":  # Arrays are laid out [L, ...]; numbers shared.
      arrays = mapped + (2 if given - mapped >= 2 else 0)
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=donated,
                      in_axes=(0,) * arrays + (None,) * (given - arrays))
    if self.mode in ("sharded", "members"):
      state = NamedSharding(self.mesh, P(MEMBERS) if self.mode == "members"
                            else P())
      return jax.jit(fn, donate_argnums=donated, out_shardings=state)
    return jax.jit(fn, donate_argnums=donated)

  def unreplicated(self, tree):
    """This process's copy of replicated arrays (on one device, without
    pmap's device axis); the members' arrays as they are."""
    if self.mode not in ("pmap", "sharded"):
      return tree
    pmap = self.mode == "pmap"
    return jax.tree.map(lambda x: x.addressable_data(0)[0] if pmap else
                        x.addressable_data(0), tree)

  def host(self, tree):
    """Program outputs as host numpy: this process's copy."""
    return jax.tree.map(np.asarray, self.unreplicated(tree))

  def num_params(self, state) -> int:
    """Parameters of one member."""
    shapes = jax.tree.leaves(jax.eval_shape(lambda s: s, state.params))
    lead = (self.num_members > 1) + (self.mode == "pmap")
    return int(sum(np.prod(s.shape[lead:]) for s in shapes))

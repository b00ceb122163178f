"""Process-wide JAX settings: CPU devices, the persistent compilation cache, logs."""

import importlib.metadata
import importlib.util
import logging
import os

from absl import logging as absl_logging
import jax

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mnist_jax", "jax")


def setup(cache_dir: str = DEFAULT_CACHE) -> None:
  """Turns on JAX's persistent compilation cache (unless cache_dir is empty).

  A second run of the same model and shapes then loads its compiled epoch
  from disk instead of compiling it again.
  """
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


def split_host(parallel: str = "auto", multi_process: bool = False) -> int:
  """Makes XLA:CPU one device per core so --parallel=auto can run data parallel.

  Small MNIST models leave a core idle: their matmuls are too small for XLA to
  split, so two single-batch-half devices run side by side instead (same
  function: the gradient is the mean over the global batch). Only on a host
  where JAX will run on the CPU, when --parallel is auto (several members
  split over the devices too: replicas.mesh), the user has not chosen a CPU
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
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  devices = min(cores, MAX_HOST_DEVICES)
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

"""Setting up the process before JAX starts (its CPU devices, logging) and
joining the job's other processes. JAX's compilation cache stays off unless
JAX_COMPILATION_CACHE_DIR names a folder (a killed process's half-written
entry warns at every later start).
"""

import errno
import importlib.metadata
import importlib.util
import os
import socket
import sys
import threading
import warnings

from absl import logging as absl_logging
import jax

from mnist_jax.errors import UserError, first_line

# Whether this process is one of a SLURM job's several tasks.
slurm_tasks = lambda: int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
MAX_HOST_DEVICES = 8  # split_host's most CPU devices.
JOIN_TIMEOUT_S = 300  # How long processes wait for each other (jax's default).


def setup_process() -> None:
  """Before JAX starts: GPU kernels in a fixed order (XLA's default picks
  atomics whose order varies, so the same command gave other numbers), unless
  XLA_FLAGS says otherwise; absl logs errors only; with a compilation
  cache, caches compiles of 0.2 s or more (not JAX's 1 s)."""
  xla = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_deterministic_ops" not in xla:
    os.environ["XLA_FLAGS"] = f"{xla} --xla_gpu_deterministic_ops=true".strip()
  if jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  absl_logging.set_verbosity(absl_logging.ERROR)


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
  """Makes a CPU-only host one XLA device per core (at most 8) before JAX
  starts, unless --parallel=none, a device count is set or several processes
  run. Returns the device count set, else 0."""
  if (parallel == "none" or multi_process or _accelerator_possible() or
      slurm_tasks() or
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


def initialize(config, detect: bool = True) -> None:
  """Joins the job's processes (jax.distributed): those the flags name, else,
  with `detect`, those of a cluster JAX detects; none: one process."""
  named = bool(config.coordinator_address or config.num_processes > 1)
  if jax.distributed.is_initialized() or not (named or detect):
    return
  address, count = config.coordinator_address, config.num_processes
  advice = ("give every process the same --coordinator_address=HOST:PORT "
            "(process 0's, reachable from every process, on a free port) and "
            "--num_processes=N, and its own --process_id (0 to N-1)")
  port = (address or "").rpartition(":")[2]
  if config.process_id == 0 and port.isdigit():
    try:  # As jax's coordinator will bind (jax segfaults where it cannot).
      with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", int(port)))
    except OSError as e:  # Any other error: jax's to report.
      if e.errno == errno.EADDRINUSE:
        raise UserError(f"process 0 cannot listen on port {port} of this "
                        f"host ({e.strerror}; another job?): {advice}") from None

  def never_joined():  # Before jax's abort with a C++ stack trace.
    print(f"error: not all processes joined in {JOIN_TIMEOUT_S} s: {advice}",
          file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access
  watchdog = threading.Timer(JOIN_TIMEOUT_S, never_joined)
  watchdog.daemon = True
  watchdog.start()
  try:
    with warnings.catch_warnings():  # Kubernetes without its package, ...
      warnings.simplefilter("ignore")
      jax.distributed.initialize(
          address or None, count or None,
          config.process_id if config.process_id >= 0 else None,
          initialization_timeout=JOIN_TIMEOUT_S + 30)
  except (ValueError, TypeError, RuntimeError) as e:
    if not named and isinstance(e, ValueError):
      return  # No cluster detected: one process.
    raise UserError(f"cannot join this job's processes ({first_line(e)}); "
                    f"{advice}") from None
  finally:
    watchdog.cancel()


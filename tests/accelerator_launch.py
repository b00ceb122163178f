"""launch.py in a process whose JAX backend reports a GPU, on the CPU devices
underneath (--xla_force_host_platform_device_count): the accelerator's choices
(--parallel=auto's rule, members vmapped, stock layers under --impl=auto)."""

import os
import runpy
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
  jax.default_backend = lambda: "gpu"  # What every choice of the project asks.
  sys.argv = [os.path.join(ROOT, "launch.py"), *sys.argv[1:]]
  sys.path.insert(0, ROOT)
  runpy.run_path(sys.argv[0], run_name="__main__")

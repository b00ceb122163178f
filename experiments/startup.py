r"""How long a run takes to start training: process start to the first train step.

  python experiments/startup.py --model=gru --mnist_dir=DIR

Each run is a fresh `python` process on launch.py's own path, stopped at the
first call of the compiled train chunk. A round runs each model --repeats times
with a new, empty compilation cache: the first run compiles, later ones start
warm. Prints a JSON line per run: each phase's time since the process started
and the kernel check's `check_s` (tables.py's start-up table).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_jax import models
from experiments.tables import parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the child: time phases of launch.py's main up to the first step.
_PROBE = r"""
import time
T0 = time.perf_counter()
import json, os, sys
sys.path.insert(0, {root!r})
marks = {{}}
def mark(name):
  marks.setdefault(name, round(time.perf_counter() - T0, 3))
import launch
from mnist_jax.data import pipeline
from mnist_jax.models import kernels
from mnist_jax.training import devices, train
mark("imported_train")
marks["check_s"] = 0.0

_check = kernels._check
def check(*args, **kwargs):
  why, record = _check(*args, **kwargs)
  marks["check_s"] = round(marks["check_s"] + record["check_s"], 3)
  return why, record
kernels._check = check

_load = pipeline.load
def load(config):
  out = _load(config)
  mark("data_loaded")
  return out
pipeline.load = load

# loop.train_and_evaluate maps train.train_chunk over the layout, lowers and
# compiles it, then calls it: the first call is the first train step.
_map = devices.Layout.map
def layout_map(self, fn, *args, **kwargs):
  mapped = _map(self, fn, *args, **kwargs)
  if getattr(fn, "func", None) is not train.train_chunk:
    return mapped
  def first_call(*args):
    mark("first_step")
    marks["first_step_unix"] = time.time()
    print("STARTUP " + json.dumps(marks), flush=True)
    os._exit(0)
  class Chunk:
    def lower(self, *args):
      mark("state_ready")
      self.lowered = mapped.lower(*args)
      return self
    def compile(self):
      self.lowered.compile()
      mark("compiled")
      return first_call
  return Chunk()
devices.Layout.map = layout_map

launch.FLAGS(sys.argv)
launch.main([sys.argv[0]])
"""


def measure(names: str, preset: str, rounds: int, repeats: int, data_flags):
  """A record per run: rounds x models (`names`: all, or a,b) x repeats."""
  probe = _PROBE.format(root=ROOT)
  for rnd in range(1, rounds + 1):
    with tempfile.TemporaryDirectory(prefix="jit_") as cache:
      env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
      for name in models.MODELS if names == "all" else names.split(","):
        for run in range(1, repeats + 1):
          with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, "-c", probe, f"--model={name}",
                   f"--preset={preset}", f"--workdir={work}/run", *data_flags]
            launched = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 cwd=ROOT, env=env, check=False)
          lines = [l for l in out.stdout.splitlines()
                   if l.startswith("STARTUP ")]
          if out.returncode or not lines:
            sys.exit(f"error: {name} run {run} failed:\n{out.stderr[-2000:]}")
          marks = json.loads(lines[-1][len("STARTUP "):])
          # From the parent's launch of `python`, interpreter start included.
          yield {"model": name, "preset": preset, "round": rnd, "run": run,
                 "start_training_s": round(marks.pop("first_step_unix")
                                           - launched, 3), **marks}


def main(argv=None):
  p = parser(__doc__)
  p.add_argument("--model", default="all")
  p.add_argument("--preset", default="seed")
  p.add_argument("--repeats", type=int, default=2, help="runs per model and "
                 "round: the first compiles, later ones are warm")
  p.add_argument("--rounds", type=int, default=1,
                 help="each with a new, empty compilation cache")
  args = p.parse_args(argv)
  for record in measure(args.model, args.preset, args.rounds, args.repeats, [
      f"--{k}={v}" for k in ("data_dir", "mnist_dir")
      if (v := getattr(args, k))]):
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()

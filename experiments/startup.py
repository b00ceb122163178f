"""How long a run takes to start training: process start to the first train step.

  python experiments/startup.py --model=gru --mnist_dir=DIR
  python experiments/startup.py --model=all --repeats=2 --mnist_dir=DIR

Each measurement is a fresh `python` process that goes through launch.py's own
path (flags, imports, data load, state init, compile or cache load) and stops
at the first call of the compiled train chunk. Run twice: the first run fills
a persistent compilation cache (a fresh one, unless JAX_COMPILATION_CACHE_DIR
names one; launch.py enables none by itself), the second shows a warm start.
Prints one JSON line per run with the time of each phase since the process
started.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mnist_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position

# Runs in the child: time phases of launch.py's main up to the first step.
_PROBE = r"""
import time
T0 = time.perf_counter()
import functools, json, sys
sys.path.insert(0, {root!r})
marks = {{}}
def mark(name):
  marks.setdefault(name, round(time.perf_counter() - T0, 3))
import launch
mark("imported_launch")
from mnist_jax.data import pipeline
from mnist_jax.training import devices, train
mark("imported_train")

class _Started(Exception):
  pass

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
    marks["heavy_modules_loaded"] = sorted(
        m for m in ("tensorflow_datasets", "orbax.checkpoint", "matplotlib",
                    "scipy.ndimage")
        if m in sys.modules)
    raise _Started()
  class Compiled:
    def __init__(self, lowered):
      self.lowered = lowered
    def compile(self):
      self.lowered.compile()
      mark("compiled")
      return first_call
  class Chunk:
    def lower(self, *args):
      mark("state_ready")
      return Compiled(mapped.lower(*args))
  return Chunk()
devices.Layout.map = layout_map

try:
  launch.FLAGS(sys.argv)
  launch.main([sys.argv[0]])
except _Started:
  pass
print("STARTUP " + json.dumps(marks))
"""


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="all")
  p.add_argument("--preset", default="seed")
  p.add_argument("--repeats", type=int, default=2,
                 help="runs per model; the first may compile, later ones are warm")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--mnist_dir", default=None)
  args = p.parse_args(argv)
  names = list(models.MODELS) if args.model == "all" else args.model.split(",")
  probe = _PROBE.format(root=ROOT)
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jit_"))
  for name in names:
    for run in range(1, args.repeats + 1):
      with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-c", probe, f"--model={name}",
               f"--preset={args.preset}", f"--workdir={work}/run"]
        cmd += [f"--{k}={v}" for k in ("data_dir", "mnist_dir")
                if (v := getattr(args, k))]
        launched = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env=env, check=False)
      lines = [l for l in out.stdout.splitlines() if l.startswith("STARTUP ")]
      if out.returncode or not lines:
        print(f"error: {name} run {run} failed:\n{out.stderr[-2000:]}",
              file=sys.stderr)
        sys.exit(1)
      marks = json.loads(lines[-1][len("STARTUP "):])
      # From the parent's launch of `python`, interpreter start included.
      since_launch = round(marks.pop("first_step_unix") - launched, 3)
      print(json.dumps({"model": name, "preset": args.preset, "run": run,
                        "start_training_s": since_launch, **marks}),
            flush=True)


if __name__ == "__main__":
  main()

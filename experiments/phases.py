r"""Where the wall time of one launch.py training run goes, phase by phase.

  python experiments/phases.py -- --model=mlp --num_seeds=4 --epochs=2 \
      --mnist_dir=DIR --workdir=runs/phases --overwrite

Runs launch.py's own main in this process with timers wrapped around its
phases (imports, data, state init, compile, each train chunk, each epoch's
batch order, evaluation, checkpoints, report, learning curves) and prints one
JSON line of seconds. The programs are the loop's own: the wrappers go around
what devices.Layout.map makes of train.py's functions.
Device work is waited for inside each timer, so phases do not overlap.
`process_start_s` is the interpreter's start-up before this file runs
(from /proc, Linux only). Every argument but --help goes to launch.py.
"""

import argparse
import collections
import json
import os
import sys
import time

T0 = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _process_age() -> float:
  """Seconds since this process started (Linux /proc), else 0."""
  try:
    with open("/proc/self/stat") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return 0.0


START_AGE = _process_age()
totals = collections.defaultdict(float)
counts = collections.defaultdict(int)


# The imports are the first phase timed: they happen inside main().
# pylint: disable=g-import-not-at-top


def timed(name, fn, block=True):
  def wrapper(*args, **kwargs):
    import jax
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if block:
      out = jax.block_until_ready(out)
    totals[name] += time.perf_counter() - start
    counts[name] += 1
    return out
  return wrapper


def _launch_argv():
  """launch.py's argv: this command's arguments after --help is handled."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      usage="%(prog)s [-h] -- LAUNCH_FLAGS")
  _, rest = parser.parse_known_args()
  return [sys.argv[0]] + [a for a in rest if a != "--"]


def main():
  argv = _launch_argv()
  t = time.perf_counter()
  import launch
  from mnist_jax.data import pipeline
  from mnist_jax.results import plots
  from mnist_jax.results import report
  from mnist_jax.rundir import checkpoints
  from mnist_jax.training import devices
  from mnist_jax.training import members
  from mnist_jax.training import train
  totals["imports"] = time.perf_counter() - t

  pipeline.load = timed("data_load", pipeline.load, block=False)
  members.init_state = timed("init_state", members.init_state)
  # The loop's programs, as devices.Layout.map makes them for
  # loop.train_and_evaluate: the train chunk (its compilation apart),
  # each epoch's batch order and the evaluation passes.
  layout_map = devices.Layout.map

  def timed_map(self, fn, *args, **kwargs):
    mapped = layout_map(self, fn, *args, **kwargs)
    program = getattr(fn, "func", None)
    if program is train.evaluate:
      return timed("evaluate", mapped)
    if program is train.epoch_order:
      return timed("epoch_order", mapped)
    if program is not train.train_chunk:
      return mapped

    class Compiled:
      def __init__(self, lowered):
        self.lowered = lowered

      def compile(self):
        start = time.perf_counter()
        compiled = self.lowered.compile()
        totals["compile_train"] += time.perf_counter() - start
        counts["compile_train"] += 1
        return timed("train_chunks", compiled)

    class Chunk:
      def lower(self, *args):
        start = time.perf_counter()
        lowered = mapped.lower(*args)
        totals["compile_train"] += time.perf_counter() - start
        return Compiled(lowered)

      def __call__(self, *args):  # Not compiled ahead: timed whole.
        return timed("train_chunks", mapped)(*args)
    return Chunk()
  devices.Layout.map = timed_map
  checkpoints.save = timed("checkpoint_save", checkpoints.save, block=False)
  manager = checkpoints._ocp().CheckpointManager  # pylint: disable=protected-access
  manager.close = timed("checkpoint_close", manager.close, block=False)
  report.write = timed("report", report.write, block=False)
  plots.learning_curves = timed("learning_curves", plots.learning_curves,
                                block=False)
  t = time.perf_counter()
  launch.FLAGS(argv)
  launch.main([argv[0]])
  totals["launch_main"] = time.perf_counter() - t
  out = {"process_start_s": round(START_AGE, 3)}
  out.update({k: round(v, 3) for k, v in totals.items()})
  out["calls"] = dict(counts)
  out["total_in_process_s"] = round(time.perf_counter() - T0, 3)
  print(json.dumps(out))


if __name__ == "__main__":
  main()

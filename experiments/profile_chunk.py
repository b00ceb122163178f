r"""Per-op profile of one scanned train chunk, exactly as train.py runs it.

  python experiments/profile_chunk.py --model=cnn --preset=seed \
      --mnist_dir=DIR --parallel=none --top=20

Prints ms per train step for the chunk, then the XLA ops (fusions, dots)
that took the most time per step, from a jax.profiler trace: where to look
first when a model's step is slow. Tracing can itself slow some ops (on
XLA:CPU, the LSTM's and GRU's forward matmuls most), so the traced chunk's
ms per step comes second: where it is well above the first, the op times
are the traced run's, not a run's.

The chunk is the run's own: `laid_out_chunk` is the loop's population.Population,
its state placed as loop.train_and_evaluate places it.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from experiments import benchmark
from mnist_jax.training import population
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.rundir import process
# pylint: enable=g-import-not-at-top,wrong-import-position


def laid_out_chunk(config, data, say=print):
  """(the run's population.Population, its state placed): the train chunk of
  a run of `config` on `data` (pipeline.Dataset) as loop.train_and_evaluate
  sets it up, compiled (`program`)."""
  model, _ = models.build(config, say)
  run = population.Population(config, model, data, say)
  return run, run.place(run.init_state())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="cnn")
  p.add_argument("--preset", default="seed")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--mnist_dir", default=None)
  p.add_argument("--parallel", default="none",
                 help="auto (launch.py's default), none, sharded or pmap")
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override any Config field, as benchmark.py's --set")
  args = p.parse_args(argv)
  process.split_host(args.parallel)
  process.setup_process()

  overrides = {k: getattr(args, k) for k in ("data_dir", "mnist_dir")
               if getattr(args, k) is not None}
  try:
    overrides.update(benchmark.parse_sets(args.set))
    config = models.get_config(args.model, args.preset, epochs=1,
                               parallel=args.parallel, **overrides)
    chunk, state = laid_out_chunk(config, pipeline.load(config))
  except UserError as e:
    sys.exit(f"error: {e}")
  order = chunk.epoch_order(state, 1)
  run = lambda s: jax.block_until_ready(chunk.train_chunk(s, order, 1, 0))[0]
  state = run(state)
  t = time.perf_counter()
  state = run(state)
  print(f"{(time.perf_counter() - t) / chunk.chunk_len * 1e3:.2f} ms per step "
        f"({chunk.chunk_len}-step chunk, {chunk.layout.mode}, "
        f"{chunk.layout.num_devices} device(s))")
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      t = time.perf_counter()
      run(state)
      traced = (time.perf_counter() - t) / chunk.chunk_len * 1e3
    path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  print(f"{traced:.2f} ms per step while traced (the ops below)")
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(
        ("$", "ThunkExecutor", "SlinkyThreadPool")):
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  for name, us in total.most_common(args.top):
    print(f"{us / chunk.chunk_len / 1e3:8.3f} ms/step  "
          f"x{count[name] / chunk.chunk_len:4.1f}  {name}")


if __name__ == "__main__":
  main()

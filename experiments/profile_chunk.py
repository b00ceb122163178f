"""Per-op profile of one scanned train chunk, exactly as train.py runs it.

  python experiments/profile_chunk.py --model=cnn --preset=seed \
      --mnist_dir=DIR --parallel=none --top=20

Prints ms per train step for the chunk, then the XLA ops (fusions, dots)
that took the most time per step, from a jax.profiler trace: where to look
first when a model's step is slow.
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
import numpy as np

from mnist_jax import models
from mnist_jax.data import batches as batches_lib
from mnist_jax.data import pipeline
from mnist_jax.training import devices
from mnist_jax.training import members
from mnist_jax.training import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="cnn")
  p.add_argument("--preset", default="seed")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--mnist_dir", default=None)
  p.add_argument("--parallel", default="none")
  p.add_argument("--top", type=int, default=20)
  args = p.parse_args(argv)
  devices.split_host(args.parallel)

  overrides = {k: getattr(args, k) for k in ("data_dir", "mnist_dir")
               if getattr(args, k) is not None}
  config = models.get_config(args.model, args.preset, epochs=1,
                             parallel=args.parallel, **overrides)
  par = devices.setup(config)
  dataset = pipeline.load(config)
  n = len(dataset.train)
  steps = n // config.batch_size
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model = models.build(config)
  if devices.auto_layouts(config):  # A split CPU host: as launch.py chooses.
    engine = devices.Engine(config, members.from_config(config))
    train.layout_for(engine, config, model, dataset, steps)
    par = engine.par
  state = par.replicate(train.create_train_state(init_rng, config, model, steps))
  images = par.replicate(dataset.train.images)
  labels = par.replicate(dataset.train.labels)
  num_chunks, chunk_len = batches_lib.chunk_plan(steps, config.chunk_steps)
  valid = par.replicate_chunks((np.arange(num_chunks * chunk_len) < steps)
                               .reshape(num_chunks, chunk_len))
  batches = par.shard_chunks(batches_lib.epoch_plan(
      data_rng, 1, n=n, batch_size=config.batch_size, num_chunks=num_chunks,
      chunk_len=chunk_len))
  chunk = par.compile_train(train.make_train_chunk(config, par.axis_name,
                                                   jit=False),
                            state, images, labels, batches[0], valid[0])
  run = lambda s: jax.block_until_ready(
      chunk(s, images, labels, batches[0], valid[0]))[0]
  state = run(state)
  t = time.perf_counter()
  state = run(state)
  print(f"{(time.perf_counter() - t) / chunk_len * 1e3:.2f} ms per step "
        f"({chunk_len}-step chunk, {par.mode}, {par.num_devices} device(s))")
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      run(state)
    path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(
        ("$", "ThunkExecutor", "SlinkyThreadPool")):
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  for name, us in total.most_common(args.top):
    print(f"{us / chunk_len / 1e3:8.3f} ms/step  x{count[name] / chunk_len:4.1f}"
          f"  {name}")


if __name__ == "__main__":
  main()

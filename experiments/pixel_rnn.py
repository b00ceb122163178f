"""Cost of pixel-level (784-step) recurrent training on this machine.

For each setting prints the compiled train step's temporary memory (XLA's
memory analysis), the median time of a scanned train step on random data, and
the epoch time that implies for 54,000 training images (MNIST less the 10%
validation split). Run it on an otherwise idle machine:

  python experiments/pixel_rnn.py --model=lstm --steps=5
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import profile_chunk
from mnist_jax import models
from mnist_jax.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position


def measure(model: str, steps: int, repeats: int, **overrides):
  """Compiles the run's own train chunk (profile_chunk.laid_out_chunk: as
  loop.train_and_evaluate lays it out) of `steps` steps on random images and
  times it."""
  config = models.get_config(model, "pixels", chunk_steps=steps, **overrides)
  n = steps * config.batch_size
  rng = np.random.default_rng(0)
  split = pipeline.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                         rng.integers(0, 10, n).astype(np.int32))
  chunk = profile_chunk.laid_out_chunk(config, split, say=lambda _: None)
  assert chunk.chunk_len == steps == chunk.steps_per_epoch
  memory = chunk.compiled.memory_analysis()
  temp_mb = (getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory
             else float("nan"))
  order = chunk.order_fn(chunk.state, 1)
  state, times = chunk.state, []
  for _ in range(repeats):
    start = time.perf_counter()
    state, sums, _, _ = chunk.compiled(state, order, chunk.images,
                                       chunk.labels, 0)
    jax.block_until_ready(sums)
    times.append((time.perf_counter() - start) / steps)
  step_s = float(np.median(times))
  epoch_s = step_s * (54000 // config.batch_size)
  print(f"{model} {overrides}: temp memory {temp_mb:.0f} MiB, compile "
        f"{chunk.compile_time_s:.1f}s, {1e3 * step_s:.0f} ms/step (median of "
        f"{repeats} x {steps} steps), epoch of 54k ~ {epoch_s:.0f}s",
        flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="lstm")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()
  for remat in (False, True):
    measure(args.model, args.steps, args.repeats, remat=remat,
            batch_size=args.batch_size)


if __name__ == "__main__":
  main()

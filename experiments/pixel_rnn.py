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
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from mnist_jax import models
from mnist_jax.data import batches as batches_lib
from mnist_jax.training import train


def measure(model: str, steps: int, repeats: int, **overrides):
  config = models.get_config(model, "pixels", **overrides)
  n = steps * config.batch_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), steps)
  batches = batches_lib.epoch_plan(
      jax.random.PRNGKey(1), 1, n=n, batch_size=config.batch_size,
      num_chunks=1, chunk_len=steps)[0]
  valid = jnp.ones((steps,), bool)
  start = time.perf_counter()
  compiled = train.make_train_chunk(config).lower(
      state, images, labels, batches, valid).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else float("nan")
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, sums, _, _ = compiled(state, images, labels, batches, valid)
    jax.block_until_ready(sums)
    times.append((time.perf_counter() - start) / steps)
  step_s = float(np.median(times))
  epoch_s = step_s * (54000 // config.batch_size)
  print(f"{model} {overrides}: temp memory {temp_mb:.0f} MiB, compile "
        f"{compile_s:.1f}s, {1e3 * step_s:.0f} ms/step (median of {repeats} x "
        f"{steps} steps), epoch of 54k ~ {epoch_s:.0f}s", flush=True)


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

"""Trains and evaluates tiny models in every --parallel mode, in one process.

Run by tests/test_parallel.py in a subprocess, because simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) must be set before JAX
starts. Writes an npz of per-chunk losses, final parameters and eval sums.

  python tests/parallel_worker.py OUT.npz
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from conftest import synthetic_digits  # pylint: disable=wrong-import-position
from mnist_jax import models  # pylint: disable=wrong-import-position
from mnist_jax.data import batches  # pylint: disable=wrong-import-position
from mnist_jax.training import devices  # pylint: disable=wrong-import-position
from mnist_jax.training import members  # pylint: disable=wrong-import-position
from mnist_jax.training import train  # pylint: disable=wrong-import-position

MODES = ("none", "pmap", "sharded")
# Dropout is on only in "mlp_drop": pmap draws a different mask on each device,
# while sharded draws the same global mask as one device, so it must match.
CONFIGS = {
    "mlp": dict(mlp_hidden=(32,), dropout=0.0),
    "mlp_drop": dict(mlp_hidden=(32,), dropout=0.3),  # none and sharded only.
    "cnn": dict(cnn_features=(4, 8), cnn_dense=16, dropout=0.0),
    "gru": dict(hidden=16, dropout=0.0),
}
STEPS, CHUNK, BATCH = 8, 3, 32  # 3 chunks of 3 steps, the last step padded.
# The MLP evaluates 10,000 examples in batches of 300 (304 on 8 devices), the
# others 203: both leave a partial last batch.
EVAL_SIZES = {"mlp": (10_000, 300)}
EVAL_DEFAULT = (203, 50)


def run(name, mode, train_x, train_y, test_x, test_y):
  """Trains STEPS steps on fixed global batches, then evaluates the test set."""
  base = "mlp" if name.startswith("mlp") else name
  config = models.get_config(base, "seed", batch_size=BATCH, epochs=1,
                             optimizer="adam", learning_rate=3e-3,
                             label_smoothing=0.1, grad_clip=1.0, parallel=mode,
                             **CONFIGS[name])
  par = devices.setup(config)
  assert par.mode == mode, (par.mode, mode)
  state = train.create_train_state(jax.random.PRNGKey(1), config,
                                   models.build(config), STEPS)
  state = par.replicate(state)
  images, labels = par.replicate(train_x), par.replicate(train_y)
  num_chunks, chunk_len = batches.chunk_plan(STEPS, CHUNK)
  plan = batches.epoch_plan(jax.random.PRNGKey(2), 1, n=len(train_y),
                            batch_size=BATCH, num_chunks=num_chunks,
                            chunk_len=chunk_len)
  chunks = par.shard_chunks(plan)
  valid = par.replicate_chunks(
      (np.arange(num_chunks * chunk_len) < STEPS).reshape(num_chunks, chunk_len))
  chunk_fn = par.compile_train(
      train.make_train_chunk(config, par.axis_name, jit=False), state, images,
      labels, chunks[0], valid[0])
  losses = []
  for c in range(num_chunks):
    state, sums, _, _ = chunk_fn(state, images, labels, chunks[c], valid[c])
    m = members.host_metrics(sums)
    losses += [m["loss"], m["accuracy"], m["count"]]
  params = jax.device_get(par.unreplicate(state.params))
  flat = np.concatenate([np.ravel(p) for p in jax.tree.leaves(params)])

  n_test, eval_batch = EVAL_SIZES.get(name, EVAL_DEFAULT)
  test_x, test_y = test_x[:n_test], test_y[:n_test]
  idx, mask = batches.eval_batches(n_test, eval_batch, par.num_devices)
  evaluate = par.wrap_evaluate(
      train.make_evaluate(config, state.apply_fn, jit=False))
  sums = jax.device_get(evaluate(state.params, par.replicate(test_x),
                                 par.replicate(test_y), par.shard(idx),
                                 par.shard(mask)))
  return {"losses": np.array(losses), "params": flat,
          "eval": np.array([sums["loss"], sums["correct"], sums["count"]]),
          "eval_batch": np.array(idx.shape[1]),
          "step": np.array(jax.device_get(par.unreplicate(state.step)))}


def main(out):
  train_x, train_y = synthetic_digits(96, seed=3)
  test_x, test_y = synthetic_digits(EVAL_SIZES["mlp"][0], seed=4)
  train_y, test_y = train_y.astype(np.int32), test_y.astype(np.int32)
  results = {"device_count": np.array(jax.device_count())}
  for name in CONFIGS:
    for mode in MODES:
      if name == "mlp_drop" and mode == "pmap":
        continue
      for key, value in run(name, mode, train_x, train_y, test_x, test_y).items():
        results[f"{name}/{mode}/{key}"] = value
  np.savez(out, **results)


if __name__ == "__main__":
  main(sys.argv[1])

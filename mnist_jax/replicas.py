"""Many seeds in one compiled program: `--num_seeds=N` replicas at once.

Replica i is the run `--seed=seed+i`: its parameter init, dropout keys and
data order come from PRNGKey(seed + i) exactly as a single run's do, so a
replica reproduces the single-seed run with that seed (up to float rounding of
batched matmuls). On a CPU the train step of each replica is unrolled in one
scan (see `unroll`); elsewhere it is vmapped. The train state, the per-epoch batch order and the metric
sums gain a leading replica axis [N, ...]; the dataset itself is shared.

metrics.jsonl keeps its single-seed keys, holding the mean over replicas, and
adds `<key>_std` (sample standard deviation, ddof=1) and `replicas`: one dict
per replica with its seed and metrics. With N = 1 nothing changes.
"""

from typing import Callable, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METRIC_KEYS = ("loss", "accuracy")


def seeds(config) -> List[int]:
  """The seed of each replica: seed, seed+1, ..., seed+N-1."""
  return [config.seed + i for i in range(config.num_seeds)]


def keys(config):
  """(init_rng, data_rng) as a single run splits them; stacked [N, 2] for N > 1."""
  if config.num_seeds == 1:
    return tuple(jax.random.split(jax.random.PRNGKey(config.seed)))
  pairs = jnp.stack([jax.random.split(jax.random.PRNGKey(s)) for s in seeds(config)])
  return pairs[:, 0], pairs[:, 1]


def vmap(config, fn: Callable, in_axes=0, out_axes=0) -> Callable:
  """`fn` mapped over the replica axis, or `fn` itself for a single seed."""
  if config.num_seeds == 1:
    return fn
  return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)


def fetch(metrics, fetch_one: Callable) -> Dict:
  """Host metrics of a single run, or for stacked [N] sums the replica mean.

  Returns:
    fetch_one's dict (loss, accuracy, count); for N replicas the means under
    those keys plus `per_replica`, the list of each replica's dict.
  """
  m = jax.device_get(metrics)
  if np.ndim(m["count"]) == 0:
    return fetch_one(m)
  per = [fetch_one(jax.tree.map(lambda a, i=i: a[i], m))
         for i in range(len(m["count"]))]
  out = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
  out["per_replica"] = per
  return out


def _std(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def row_extras(config, **splits) -> Dict:
  """The replica part of a metrics row: `<split>_<key>_std` and `replicas`.

  Args:
    config: the run's Config.
    **splits: split name -> `fetch` result (None for a split not evaluated).

  Returns:
    {} for a single seed; else the std of each metric over replicas and
    `replicas`: [{"seed", "<split>_loss", "<split>_accuracy", ...}] per replica.
  """
  if config.num_seeds == 1:
    return {}
  extras = {}
  per_replica = [{"seed": s} for s in seeds(config)]
  for split, fetched in splits.items():
    if fetched is None:
      continue
    for key in METRIC_KEYS:
      values = [p[key] for p in fetched["per_replica"]]
      extras[f"{split}_{key}_std"] = _std(values)
      for replica, value in zip(per_replica, values):
        replica[f"{split}_{key}"] = value
  extras["replicas"] = per_replica
  return extras


# Most replicas whose train steps are unrolled side by side on a CPU.
MAX_UNROLLED = 8


def unroll(config) -> bool:
  """Whether the train chunk runs the replicas as N unbatched steps.

  On a CPU, N copies of the single-seed step in one scan body ran 22% faster
  than the vmapped step (tuned MLP, 4 replicas: 37 vs 47 ms per step): XLA:CPU
  runs N small matmuls faster than one batched matmul, and the vmapped step's
  per-replica `lax.cond` (skip padding and diverged steps) becomes a select
  that reads and writes the whole train state every step. Accelerators, and
  many replicas (compile time grows with N), keep the vmapped step.
  """
  return (1 < config.num_seeds <= MAX_UNROLLED and
          jax.default_backend() == "cpu")


def unrolled_chunk(n: int, body: Callable, finish: Callable, zeros: Callable):
  """A train chunk over N replicas: one scan whose body is N unbatched steps.

  Each replica runs exactly the single-seed step, so replica i computes what
  the run with seed+i computes.

  Args:
    n: the number of replicas.
    body: fn(images, labels, carry, (idx [B], ok)) -> carry, one replica's step
      with carry (state, metric sums, bad).
    finish: fn(state, sums, bad) -> (state, sums, bad) after the scan.
    zeros: fn() -> zero metric sums.

  Returns:
    fn(state [N, ...], images, labels, batch_idx [N, C, B], valid [C]) ->
    (state [N, ...], sums [N], bad [N]).
  """
  def chunk(state, images, labels, batch_idx, valid):
    states = [jax.tree.map(lambda a, i=i: a[i], state) for i in range(n)]

    def scan_body(carries, inputs):
      idx, ok = inputs
      return tuple(body(images, labels, c, (idx[i], ok))
                   for i, c in enumerate(carries)), None

    init = tuple((s, zeros(), jnp.full((), -1, jnp.int32)) for s in states)
    carries, _ = jax.lax.scan(scan_body, init,
                              (jnp.swapaxes(batch_idx, 0, 1), valid))
    out = [finish(*c) for c in carries]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)

  return chunk


"""Many seeds in one compiled program: `--num_seeds=N` replicas under jax.vmap.

Replica i is the run `--seed=seed+i`: its parameter init, dropout keys and
data order come from PRNGKey(seed + i) exactly as a single run's do, so a
replica reproduces the single-seed run with that seed (up to float rounding of
batched matmuls). The train state, the per-epoch batch order and the metric
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

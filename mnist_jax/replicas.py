"""Many seeds in one compiled program: `--num_seeds=N` replicas at once.

Replica i is the run `--seed=seed+i`: its parameter init, dropout keys and
data order come from PRNGKey(seed + i) exactly as a single run's do, so a
replica reproduces the single-seed run with that seed (up to float rounding of
batched matmuls). On a CPU each replica runs the single-seed chunk of steps
in turn, the replicas split over the host's devices (see `sequential`, `mesh`);
elsewhere the step is vmapped. The train state, the per-epoch batch order and
the metric sums gain a leading replica axis [N, ...]; the dataset is shared.

metrics.jsonl keeps its single-seed keys, holding the mean over replicas, and
adds `<key>_std` (sample standard deviation, ddof=1) and `replicas`: one dict
per replica with its seed and metrics. With N = 1 nothing changes.
"""

from typing import Callable, Dict, List, Optional, Sequence

import jax
from jax import shard_map
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
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


AXIS = "replica"  # The mesh axis the replicas are split along.


def sequential(config) -> bool:
  """Whether the train chunk runs the replicas one after another (CPU).

  On a CPU, N replicas as a `lax.scan` over the replica axis of the
  single-seed chunk (replica 0's steps, then replica 1's, ...) ran at 4x the
  single-seed step, while the vmapped step ran at 5.5x (tuned MLP): XLA:CPU
  runs N small matmuls faster than one batched matmul, and the vmapped step's
  per-replica `lax.cond` (skip padding and diverged steps) becomes a select
  that reads and writes the whole train state every step. Accelerators keep
  the vmapped step, which fills the device better.
  """
  return config.num_seeds > 1 and jax.default_backend() == "cpu"


def compiler_options(config) -> Optional[Dict[str, str]]:
  """XLA options for the train chunk: on a CPU with replicas, region analysis.

  XLA:CPU's copy insertion otherwise copies loop-carried buffers every step:
  a [1024, 1024] kernel after the step's `lax.cond`, the threefry state in
  each dropout mask's round loop. With region analysis those copies go: the
  tuned MLP's 4-replica step 32.4 -> 30.7 ms, the same bits. Other runs keep
  XLA's defaults (a single seed gains ~2%; not measured for the other models).
  """
  if not sequential(config):
    return None
  return {"xla_cpu_copy_insertion_use_region_analysis": "True"}


def mesh(config) -> Optional[Mesh]:
  """The CPU devices the replicas are split over, or None for one device.

  With a host split into one device per core (runtime.split_host), each
  device trains N / D replicas, its own core running their steps, where one
  device would spread every small matmul over both cores. The most devices
  that divide N are used.
  """
  if not sequential(config):
    return None
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if config.num_seeds % d == 0)
  if count == 1 or jax.process_count() > 1:
    return None
  return Mesh(np.array(devices[:count]), (AXIS,))


def restored(config, state):
  """A restored stacked state, split along its replica axis on `mesh(config)`.

  orbax restores it onto one device, which the split train chunk refuses
  ("incompatible devices"). It goes through the host: moving device arrays
  between the split host's CPU devices before the first chunk could hang.
  """
  replica_mesh = mesh(config)
  if replica_mesh is None:
    return state
  return jax.device_put(jax.device_get(state),
                        NamedSharding(replica_mesh, P(AXIS)))


def split(config, fn: Callable, per_replica: Sequence[bool]) -> Callable:
  """`fn` with its replica axis split across `mesh(config)` (or `fn` itself).

  per_replica: for each argument, whether it has the leading replica axis
  (else every device gets all of it). Every output has the replica axis.
  """
  replica_mesh = mesh(config)
  if replica_mesh is None:
    return fn
  return shard_map(fn, mesh=replica_mesh,
                   in_specs=tuple(P(AXIS) if r else P() for r in per_replica),
                   out_specs=P(AXIS), check_vma=False)


def sequential_chunk(config, chunk: Callable) -> Callable:
  """The single-seed train chunk run for each replica in turn.

  Each replica runs exactly the single-seed program, so replica i computes
  what the run with seed+i computes.

  Args:
    config: the run's Config.
    chunk: fn(state, images, labels, batch_idx [C, B], valid [C]) ->
      (state, sums, bad), one replica's chunk of steps.

  Returns:
    fn(state [N, ...], images, labels, batch_idx [N, C, B], valid [C]) ->
    (state [N, ...], sums [N], bad [N]), split over `mesh(config)`.
  """
  def run(state, images, labels, batch_idx, valid):
    def body(_, replica):
      state, idx = replica
      return None, chunk(state, images, labels, idx, valid)
    return jax.lax.scan(body, None, (state, batch_idx))[1]

  return split(config, run, (True, False, False, True, False))

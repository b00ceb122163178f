"""The models one run trains together: its members.

A run trains one member, or with `--num_seeds=N` the members seed, seed+1,
..., seed+N-1 in one compiled program. Member i's parameter init, dropout keys
and data order come from PRNGKey(its seed) exactly as a single run's do, so it
reproduces the single run with that seed. With several members the train
state, the per-epoch batch order and the metric sums gain a leading member
axis [M, ...] (how that axis runs on devices: replicas.py); the dataset is
shared.

metrics.jsonl keeps its single-run keys, holding the mean over members, and
adds `<key>_std` (sample standard deviation, ddof=1) and `replicas`: one dict
per member with what identifies it (`Member.label`) and its metrics. With one
member nothing changes.
"""

import dataclasses
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

METRIC_KEYS = ("loss", "accuracy")


@dataclasses.dataclass(frozen=True)
class Member:
  """One model of the run's program, and what tells it from the others."""
  seed: int

  def label(self) -> Dict:
    """The fields that name this member in metrics.jsonl."""
    return {"seed": self.seed}


def from_config(config) -> Tuple[Member, ...]:
  """The members `config` asks for: one per seed, seed .. seed+num_seeds-1."""
  return tuple(Member(config.seed + i) for i in range(config.num_seeds))


def keys(members: Sequence[Member]):
  """(init_rng, data_rng) as a single run splits them; stacked [M, 2] for M > 1."""
  if len(members) == 1:
    return tuple(jax.random.split(jax.random.PRNGKey(members[0].seed)))
  pairs = jnp.stack([jax.random.split(jax.random.PRNGKey(m.seed))
                     for m in members])
  return pairs[:, 0], pairs[:, 1]


def means(sums) -> Dict[str, float]:
  """Host means of one member's metric sums: loss, accuracy, count."""
  count = float(sums["count"])
  return {"loss": float(sums["loss"]) / max(count, 1.0),
          "accuracy": float(sums["correct"]) / max(count, 1.0), "count": count}


def host_metrics(sums) -> Dict:
  """Metric sums {"loss", "correct", "count"} (on a device) as host means.

  Returns:
    `means` of a single member; for stacked [M] sums the mean over members
    under the same keys, plus `per_member`, the list of each member's `means`.
  """
  m = jax.device_get(sums)
  if np.ndim(m["count"]) == 0:
    return means(m)
  per = [means(jax.tree.map(lambda a, i=i: a[i], m))
         for i in range(len(m["count"]))]
  out = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
  out["per_member"] = per
  return out


def _std(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def row_extras(members: Sequence[Member], **splits) -> Dict:
  """The members' part of a metrics row: `<split>_<key>_std` and `replicas`.

  Args:
    members: the run's members.
    **splits: split name -> `host_metrics` result (None: not evaluated).

  Returns:
    {} for one member; else the std of each metric over the members and
    `replicas`: [{**member.label(), "<split>_loss", "<split>_accuracy"}, ...].
  """
  if len(members) == 1:
    return {}
  extras = {}
  rows = [m.label() for m in members]
  for split, fetched in splits.items():
    if fetched is None:
      continue
    for key in METRIC_KEYS:
      values = [p[key] for p in fetched["per_member"]]
      extras[f"{split}_{key}_std"] = _std(values)
      for row, value in zip(rows, values):
        row[f"{split}_{key}"] = value
  extras["replicas"] = rows
  return extras

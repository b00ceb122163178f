"""The models one run trains together: its members, and which one is chosen.

A run trains the members `sweep.members(config)` lists: every point of the
`--sweep` grid times the seeds seed .. seed+num_seeds-1, grid point major;
without a sweep, the one point's seeds; by default a single member. Member i's
parameter init, dropout keys and data order come from PRNGKey(its seed), and
its optimizer state holds its swept values, exactly as in the single run with
those values and seed, so it reproduces that run. With several members the
train state, the per-epoch batch order and the metric sums gain a leading
member axis [M, ...] (how that axis runs on devices: replicas.py); the dataset
is shared.

Choosing (`choose`), by validation metrics and never by test: the grid point
with the highest mean validation accuracy over its seeds (ties: the lower mean
validation loss, then the lower index), then that point's seed with the
highest validation accuracy (same ties). Without a validation split (never
with a sweep), member 0.

A metrics.jsonl row (`row`) keeps the single run's keys, holding one member's
metrics: after each epoch the leading member's (the one chosen if the run
stopped there, named in `leader`), at the end the chosen member's (named in
`chosen`). When that member's grid point has several seeds, `<key>_mean` and
`<key>_std` (sample standard deviation, ddof=1) over them follow, and
`members` lists every member: its `index`, `seed`, swept `values`,
`learning_rate` at the row's step, and its metrics (a member that diverged,
divergence.py, has `diverged` and None for its non-finite losses). With one
member the row is the single run's.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import optim
from mnist_jax import sweep

METRIC_KEYS = ("loss", "accuracy")
# Keys of a member's dict in a row that say which member it is.
IDENTITY_KEYS = ("index", "seed", "values")
Member = sweep.Member


class Choice(NamedTuple):
  """A grid point (index into `points`) and one of its members (member index)."""
  point: int
  member: int


def from_config(config) -> Tuple[Member, ...]:
  """The members `config` asks for (sweep.members), in member order."""
  return tuple(sweep.members(config))


def keys(members: Sequence[Member]):
  """(init_rng, data_rng) as a single run splits them; stacked [M, 2] for M > 1."""
  if len(members) == 1:
    return tuple(jax.random.split(jax.random.PRNGKey(members[0].seed)))
  pairs = jnp.stack([jax.random.split(jax.random.PRNGKey(m.seed))
                     for m in members])
  return pairs[:, 0], pairs[:, 1]


def init_state(members: Sequence[Member], create: Callable, init_rng,
               steps_per_epoch: int):
  """Every member's fresh train state, stacked [M, ...] when M > 1.

  create: fn(init_rng, hparams=...) -> one member's TrainState
    (train.create_train_state), given each member's key and its row of the
    swept hyperparameters (sweep.hyperparams).

  The members run one jitted `create` in turn: it compiles in a fraction of
  the time the vmapped initialisers take, and gives the same bits.
  """
  hparams = sweep.hyperparams(members, steps_per_epoch)
  rows = [{k: v[i] for k, v in hparams.items()} for i in range(len(members))]
  if len(members) == 1:
    return create(init_rng, hparams=rows[0])
  one = jax.jit(lambda rng, h: create(rng, hparams=h))
  states = [one(init_rng[i], row) for i, row in enumerate(rows)]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def points(members: Sequence[Member]) -> List[Tuple[int, ...]]:
  """The member indices of each grid point (its seeds), in grid order."""
  out = []
  for m in members:
    if out and members[out[-1][0]].values == m.values:
      out[-1].append(m.index)
    else:
      out.append([m.index])
  return [tuple(p) for p in out]


def means(sums) -> Dict[str, float]:
  """Host means of one member's metric sums: loss, accuracy, count.

  NaN for sums over no example (a diverged member's skipped steps).
  """
  count = float(sums["count"])
  if count == 0:
    return {"loss": float("nan"), "accuracy": float("nan"), "count": count}
  return {"loss": float(sums["loss"]) / count,
          "accuracy": float(sums["correct"]) / count, "count": count}


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


def per_member(fetched: Dict) -> List[Dict]:
  """Each member's means from a `host_metrics` result, also for one member."""
  return fetched.get("per_member", [fetched])


def _best(scored) -> int:
  """The index among (index, accuracy, loss) with the highest accuracy, then
  the lowest loss, then the lowest index; a non-finite loss (a diverged
  member) ranks last."""
  return min(scored, key=lambda s: (not np.isfinite(s[2]), -s[1], s[2],
                                    s[0]))[0]


def choose(members: Sequence[Member], val: Optional[Dict]) -> Choice:
  """The leading grid point and member by validation metrics (module doc).

  val: `host_metrics` of the validation split; None without one (the first
  point and member).
  """
  if val is None:
    return Choice(0, 0)
  per = per_member(val)
  groups = points(members)
  point = _best([(p, np.mean([per[i]["accuracy"] for i in seeds]),
                  np.mean([per[i]["loss"] for i in seeds]))
                 for p, seeds in enumerate(groups)])
  member = _best([(i, per[i]["accuracy"], per[i]["loss"])
                  for i in groups[point]])
  return Choice(point, member)


def learning_rates(members: Sequence[Member], steps_per_epoch: int,
                   step: int) -> List[float]:
  """Each member's learning rate after `step` updates (one per grid point)."""
  by_point = {}
  for seeds in points(members):
    by_point[seeds] = optim.learning_rate(members[seeds[0]].config,
                                          steps_per_epoch, step)
  return [by_point[seeds] for seeds in points(members) for _ in seeds]


def _std(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _json(value: float) -> Optional[float]:
  """A metric for metrics.jsonl: None where it is not finite (a diverged
  member's loss), which JSON cannot hold."""
  return float(value) if np.isfinite(value) else None


def identity(member: Member) -> Dict:
  """What names a member in a metrics row: index, seed, swept values."""
  return {"index": member.index, "seed": member.seed,
          "values": dict(member.values)}


def row(members: Sequence[Member], choice: Choice,
        splits: Dict[str, Optional[Dict]],
        rates: Optional[Sequence[float]] = None) -> Tuple[Dict, Dict]:
  """The members' part of a metrics row: (top-level metrics, extras).

  Args:
    members: the run's members.
    choice: the member whose metrics are the row's own, and its grid point.
    splits: split name -> `host_metrics` result (None: not evaluated).
    rates: each member's learning rate at the row's step (`learning_rates`).

  Returns:
    top: `<split>_loss`, `<split>_accuracy` of the chosen member (None for a
      split not evaluated). extras: {} for one member; else
      `<split>_<key>_mean` and `_std` over the grid point's seeds when it has
      several, and `members`.
  """
  per = {split: per_member(f) for split, f in splits.items() if f}
  if len(members) == 1:  # The single run's row, as it always was.
    return {f"{split}_{key}": per[split][0][key] if split in per else None
            for split in splits for key in METRIC_KEYS}, {}
  top = {f"{split}_{key}": _json(per[split][choice.member][key])
         if split in per else None for split in splits for key in METRIC_KEYS}
  seeds = points(members)[choice.point]
  extras = {}
  if len(seeds) > 1:
    for split, values in per.items():
      for key in METRIC_KEYS:
        of_seeds = [values[i][key] for i in seeds]
        extras[f"{split}_{key}_mean"] = _json(np.mean(of_seeds))
        extras[f"{split}_{key}_std"] = _json(_std(of_seeds))
  rows = []
  for m in members:
    entry = identity(m)
    if rates is not None:
      entry["learning_rate"] = rates[m.index]
    for split, values in per.items():
      for key in METRIC_KEYS:
        entry[f"{split}_{key}"] = _json(values[m.index][key])
    if any(not np.isfinite(values[m.index]["loss"]) for values in per.values()):
      entry["diverged"] = True
    rows.append(entry)
  extras["members"] = rows
  return top, extras


def member_rows(rows: Sequence[Dict], index: int) -> List[Dict]:
  """metrics.jsonl rows as member `index`'s own run would have written them.

  Each row's top-level metrics become that member's; what describes the
  members as a group (`_mean`, `_std`, `members`, `leader`, `chosen`, the
  ensemble) goes. Rows without `members` (a single-member run) are kept.
  """
  out = []
  for r in rows:
    entries = r.get("members")
    if not entries:
      out.append(r)
      continue
    plain = {k: v for k, v in r.items()
             if k not in ("members", "leader", "chosen")
             and not k.endswith(("_mean", "_std"))
             and not k.startswith("ensemble_")}
    plain.update({k: v for k, v in entries[index].items()
                  if k not in IDENTITY_KEYS})
    out.append(plain)
  return out

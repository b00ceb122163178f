"""The models a run trains together (--num_seeds, --sweep; docs/design.md's
Members), and which is chosen: by validation (never test), the point of the
highest mean accuracy over its seeds (ties: lower mean loss, lower index),
then its best seed; member 0 without validation. A metrics.jsonl row holds
the chosen member's metrics, `<key>_mean`/`_std` over its point's seeds and
`members` (each one's metrics)."""

import dataclasses
import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from mnist_jax.errors import Diverged
from mnist_jax.training import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class Member:
  index: int
  seed: int
  values: Dict[str, Any]
  config: Any  # config.Config: the member's single run's.


def _short(value) -> str:
  """0.003, 1e-05, 2: the shortest text that reads back as the value."""
  text = f"{value:g}"
  return text if float(text) == value else repr(value)


def from_config(config) -> Tuple[Member, ...]:
  """Every member of a (validated) config, grid point major, seed minor."""
  grid: Dict[str, Any] = config.sweep_grid()
  out: List[Member] = []
  for point in itertools.product(*grid.values()):
    values = dict(zip(grid, point))
    for seed in range(config.seed, config.seed + config.num_seeds):
      out.append(Member(len(out), seed, values, config.replace(
          seed=seed, num_seeds=1, sweep="", **values)))
  return tuple(out)


def per_member(members: Sequence[Member], reads: Sequence[str]
               ) -> Dict[str, np.ndarray]:
  """The numbers of `reads` (a loss's) a sweep gives each member, [M] each."""
  return {name: np.asarray([getattr(m.config, name) for m in members],
                           np.float32)
          for name in reads if name in members[0].values}


def points(members: Sequence[Member]) -> List[Tuple[int, ...]]:
  """The member indices of each grid point (its seeds), in grid order."""
  return [tuple(m.index for m in point) for _, point in
          itertools.groupby(members, key=lambda m: m.values)]


def values_text(values: Dict[str, Any], seed: Optional[int] = None) -> str:
  """`learning_rate=0.003, seed=1`."""
  return ", ".join([f"{k}={_short(v)}" for k, v in values.items()] +
                   ([f"seed={seed}"] if seed is not None else []))


def label(member: Member) -> str:  # `learning_rate=0.003, seed=1`.
  return values_text(member.values, member.seed)


def identity(member: Member) -> Dict:
  return {"index": member.index, "seed": member.seed,
          "values": dict(member.values)}


def check_finite(members, splits: Dict[str, Optional[List[Dict]]], epoch: int,
                 step: int, steps: int) -> None:
  """Raises Diverged where every member has a non-finite metric in `splits`
  ({split: each member's metrics}): each step's loss can stay finite while
  their mean overflows. A member that has alone ranks last (`row`)."""
  def bad(i):
    return [(s, k, v) for s, per in splits.items() if per and per[i]["count"]
            for k, v in per[i].items() if not np.isfinite(v)]

  if members and all(bad(i) for i in range(len(members))):
    split, name, value = bad(0)[0]
    _diverge(f"training diverged: the mean {split} {name} of epoch {epoch} "
             f"is {value} at {_where(step, epoch, steps)}", epoch, step)


def host_metrics(sums) -> List[Dict[str, float]]:
  """Metric sums (on a device; [] or stacked [M]) as each member's values."""
  m = jax.device_get(sums)
  if np.ndim(m["count"]) == 0:
    return [metrics_lib.values(m)]
  return [metrics_lib.values(jax.tree.map(lambda a, i=i: a[i], m))
          for i in range(len(m["count"]))]


def _best(scored) -> int:
  """The index among (index, accuracy, loss): highest accuracy, then lowest
  loss, then lowest index; a non-finite loss (diverged) ranks last."""
  return min(scored, key=lambda s: (not np.isfinite(s[2]), -s[1], s[2],
                                    s[0]))[0]


def choose(members: Sequence[Member], val: Optional[List[Dict]]
           ) -> Tuple[int, int]:
  """(grid point, member) leading by validation metrics (see the module)."""
  if val is None:
    return 0, 0
  groups = points(members)
  point = _best([(p, np.mean([val[i]["accuracy"] for i in seeds]),
                  np.mean([val[i]["loss"] for i in seeds]))
                 for p, seeds in enumerate(groups)])
  return point, _best([(i, val[i]["accuracy"], val[i]["loss"])
                       for i in groups[point]])


def _json(value) -> Optional[float]:
  """A metric for JSON: None where it is not finite."""
  return float(value) if np.isfinite(value) else None


def row(members, choice, splits: Dict[str, Optional[List[Dict]]],
        rates=None) -> Dict:
  """The members' part of a row: `<split>_<metric>` of the chosen member,
  and with several members `_mean`/`_std` over its point's seeds and
  `members` (each with its learning rate from `rates`)."""
  names = {s: [m.name for m in metrics_lib.of(s)] for s in splits}
  point, member = choice
  out: Dict[str, Any] = {f"{s}_{k}": _json(per[member][k]) if per else None
                         for s, per in splits.items() for k in names[s]}
  if len(members) == 1:
    return out
  seeds = points(members)[point]
  for s, per in splits.items():
    for k in names[s] if per and len(seeds) > 1 else ():
      of_seeds = [per[i][k] for i in seeds]  # type: ignore[index]  # per: set.
      out[f"{s}_{k}_mean"] = _json(np.mean(of_seeds))
      out[f"{s}_{k}_std"] = _json(np.std(of_seeds, ddof=1))
  out["members"] = []
  for m in members:
    entry = identity(m)
    if rates is not None:
      entry["learning_rate"] = float(rates[m.index])
    for s, per in splits.items():
      entry.update({f"{s}_{k}": _json(per[m.index][k]) for k in names[s]}
                   if per else {})
    if any(per and not np.isfinite(per[m.index]["loss"])
           for per in splits.values()):
      entry["diverged"] = True
    out["members"].append(entry)
  return out


def epoch_row(members, epoch: int, step: int, train, val, rates,
              **fields) -> Dict:
  """The metrics.jsonl row of an epoch: the leading member's metrics."""
  rates = np.reshape(rates, -1)
  choice = choose(members, val)
  out = {"epoch": epoch, "step": step,
         **row(members, choice, {"train": train, "val": val},
               rates if len(members) > 1 else None),
         "learning_rate": float(rates[choice[1]])}
  if len(members) > 1:
    out["leader"] = identity(members[choice[1]])
  return {**out, **fields}


def final_row(members, test, val, **fields) -> Dict:
  """The final metrics.jsonl row: the chosen member's test metrics."""
  choice = choose(members, val)
  out = row(members, choice, {"test": test})
  out["test_examples"] = int(test[0]["count"])
  if len(members) > 1:
    out["chosen"] = identity(members[choice[1]])
  return {**out, **fields}


def member_rows(rows: Sequence[Dict], index: int) -> List[Dict]:
  """metrics.jsonl rows as member `index`'s own run would have written them."""
  out = []
  for r in rows:
    entries = r.get("members")
    if entries:  # Its own metrics in place of the chosen member's.
      r = {k: v for k, v in r.items()
           if k not in ("members", "leader", "chosen")
           and not k.endswith(("_mean", "_std"))
           and not k.startswith("ensemble_")}
      r.update((k, v) for k, v in entries[index].items()
               if k not in ("index", "seed", "values"))
    out.append(r)
  return out


def _where(step: int, epoch: int, steps: int) -> str:
  return (f"step {step} (epoch {epoch}, step {step - (epoch - 1) * steps} "
          f"of {steps})")


def _diverge(text: str, epoch: int, step: int) -> None:
  raise Diverged(text, {"epoch": epoch, "step": step, "diverged": True,
                        "message": text})


def check_divergence(members, bad, epoch, first, steps, say) -> None:
  """Says which members diverged in the chunk run from step `first` of
  `epoch`; raises Diverged once every member has."""
  if (bad >= 0).all():
    step = int(bad.max())
    _diverge("training diverged: the loss became non-finite at "
             f"{_where(step, epoch, steps)}", epoch, step)
  for i in np.flatnonzero(bad > (epoch - 1) * steps + first):
    say(f"member {label(members[i])} diverged at "
        f"{_where(int(bad[i]), epoch, steps)}; it stops, the others go on")

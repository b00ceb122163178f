"""The models one run trains together: who they are, how their axis runs on
devices, and which one is chosen.

Who. `--sweep=learning_rate=3e-4,1e-3 --sweep=weight_decay=0,1e-4` (or one
flag, `learning_rate=3e-4,1e-3;weight_decay=0,1e-4`) gives the grid of every
combination of the values, the names in the order given; `--num_seeds=N`
trains each grid point with the seeds seed .. seed+N-1. A member of the run is
one (values, seed) pair, in grid point major, seed minor order (`from_config`);
without a sweep the one point's seeds, by default a single member. Member i
computes what the single run with its values and seed computes:
`Member.config` is that run's validated Config, its parameter init, dropout
keys and data order come from PRNGKey(its seed), and its optimizer state holds
its swept values. Only the optimizer and loss hyperparameters in
`optim.SWEEPABLE` can be swept: they are per-member arrays in the optimizer
state (see optim.py), so the members share one compiled program. Anything else
changes shapes or the program and is refused.

On devices. With several members the train state, the per-epoch batch order
and the metric sums gain a leading member axis [M, ...]; the dataset is
shared. On a CPU each member runs the single-member chunk of steps in turn
(`in_turn`), the members split over the host's CPU devices (`mesh`);
elsewhere the step is vmapped, which fills an accelerator better. With one
member those functions return their input unchanged.

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
`learning_rate` at an epoch row's step, and its metrics (a member that diverged,
control.py, has `diverged` and None for its non-finite losses). With one
member the row is the single run's.
"""

import itertools
import math
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import jax
from jax import shard_map
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax import config as config_lib
from mnist_jax.config import Config
from mnist_jax.errors import UserError
from mnist_jax.training import metrics as metrics_lib
from mnist_jax.training import optim

# Who trains together.

Grid = Dict[str, Tuple[Any, ...]]  # Swept name -> its values, in order.


class Member(NamedTuple):
  """One member of a run: index in member order, seed, swept values, Config."""
  index: int
  seed: int
  values: Dict[str, Any]
  config: Config


def _example() -> str:
  return "e.g. --sweep=learning_rate=3e-4,1e-3,3e-3"


def _parse_value(name: str, text: str) -> Any:
  kind = config_lib.field_type(name)
  try:
    value = kind(text)
  except ValueError:
    raise UserError(f"--sweep={name}: {text!r} is not a number; "
                    f"{_example()}") from None
  message = config_lib.range_error(name, value)
  if message:
    raise UserError(f"--sweep: {message}")
  return value


def _check_name(name: str, texts: Sequence[str], model: str) -> None:
  """Refuses a name that is not sweepable, saying what trains it instead."""
  if name in optim.SWEEPABLE:
    return
  sweepable = ", ".join(optim.SWEEPABLE)
  if name == "seed":
    raise UserError("--sweep=seed: seeds are not swept; --seed=S "
                    "--num_seeds=N trains the seeds S .. S+N-1 of every point")
  if name in config_lib.flag_names():
    command = (f"--train={','.join(texts)}" if name == "model" else
               f"--train={model} --vary={name}={'/'.join(texts)}")
    raise UserError(
        f"--sweep cannot vary {name}: only the optimizer and loss settings "
        f"({sweepable}) leave shapes and the compiled program alone; train a "
        f"run per value and compare them with python experiments/compare.py "
        f"{command}")
  raise UserError(f"--sweep: unknown name {name!r}; sweepable: {sweepable}")


def parse(specs: Union[str, Sequence[str]], model: str = "MODEL") -> Grid:
  """The grid of `--sweep` specs: each `NAME=V1,V2,...`, several `;`-joined.

  model: the run's --model, for the command a refused name is pointed to.

  Raises:
    UserError: a malformed spec, a bad or repeated value, an empty list, an
      unknown, repeated or unsweepable name.
  """
  if isinstance(specs, str):
    specs = [specs]
  grid = {}
  for part in (p.strip() for spec in specs for p in spec.split(";")):
    if not part:
      continue
    name, sep, listed = (s.strip() for s in part.partition("="))
    if not sep or not name:
      raise UserError(f"--sweep={part}: expected NAME=V1,V2,...; {_example()}")
    texts = [t.strip() for t in listed.split(",") if t.strip()]
    _check_name(name, texts, model)
    if name in grid:
      raise UserError(f"--sweep names {name} twice; give it once with all its "
                      "values")
    if not texts:
      raise UserError(f"--sweep={name}= lists no values; {_example()}")
    values = tuple(_parse_value(name, t) for t in texts)
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
      raise UserError(f"--sweep={name} lists {_short(repeated[0])} twice; give "
                      "each value once")
    grid[name] = values
  return grid


def canonical(specs: Union[str, Sequence[str]], model: str = "MODEL") -> str:
  """The sweep as one string for `Config.sweep`: `a=1.0,2.0;b=0.1` ("": none).

  Parsing it again gives the same grid.
  """
  return ";".join(f"{name}={','.join(repr(v) for v in values)}"
                  for name, values in parse(specs, model).items())


def _check_applies(grid: Grid, config: Config) -> None:
  """Refuses a swept name the config's optimizer or schedule never reads."""
  for name in grid:
    field, needed = optim.ONLY_WITH.get(name, (None, ()))
    if field is not None and getattr(config, field) not in needed:
      raise UserError(
          f"--sweep={name} changes nothing with --{field}="
          f"{getattr(config, field)}: only "
          f"{' or '.join(f'--{field}={v}' for v in needed)} reads it")


def from_config(config: Config,
                spec: Optional[str] = None) -> Tuple[Member, ...]:
  """Every member of the run: the grid of `spec` times the config's seeds.

  Args:
    config: the run's Config.
    spec: the sweep, as `--sweep` flags give it or `canonical` writes it;
      None reads `config.sweep`.

  Returns:
    the Members in grid point major, seed minor order; each config
    validated.

  Raises:
    UserError: a bad sweep, or a member whose values no run accepts.
  """
  config_lib.validate(config)
  grid = parse(config.sweep if spec is None else spec, config.model)
  _check_applies(grid, config)
  if grid and config.val_fraction == 0:
    raise UserError("--sweep chooses its member by validation accuracy, and "
                    "--val_fraction=0 holds out none; pass e.g. "
                    "--val_fraction=0.1")
  count = math.prod(len(v) for v in grid.values()) * config.num_seeds
  if count > config_lib.MAX_MEMBERS:
    raise UserError(
        f"--sweep and --num_seeds make {count} members; one program trains at "
        f"most {config_lib.MAX_MEMBERS}: list fewer values or seeds")
  single = {"num_seeds": 1, "sweep": ""}  # A member is a single run.
  out = []
  for point in itertools.product(*grid.values()):
    values = dict(zip(grid, point))
    for i in range(config.num_seeds):
      seed = config.seed + i
      try:
        member = config_lib.validate(
            config.replace(seed=seed, **single, **values))
      except UserError as e:
        raise UserError(f"--sweep: {e}") from None
      out.append(Member(len(out), seed, values, member))
  return tuple(out)


def hyperparams(sweep_members: Sequence[Member],
                steps_per_epoch: int) -> Dict[str, np.ndarray]:
  """The swept hyperparameters of every member, stacked [M] in member order.

  Keys are `opt_state.hyperparams` keys (optim.SWEEPABLE); a row of the
  arrays is what `train.create_train_state(..., hparams=row)` takes for that
  member, e.g. under `jax.vmap`. {} when nothing is swept.
  """
  swept = [optim.SWEEPABLE[name] for name in sweep_members[0].values]
  rows = [optim.hyperparams(m.config, steps_per_epoch, swept)
          for m in sweep_members]
  return {key: np.stack([row[key] for row in rows]) for key in swept}


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
    swept hyperparameters (`hyperparams`).

  The members run one jitted `create` in turn: it compiles in a fraction of
  the time the vmapped initialisers take, and gives the same bits.
  """
  hparams = hyperparams(members, steps_per_epoch)
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


def label(member: Member) -> str:
  """A member's name for logs and tables: `learning_rate=0.003, seed=1`."""
  return values_text(member.values, member.seed)


def values_text(values: Dict[str, Any], seed: Optional[int] = None) -> str:
  """Swept values (and a seed) as text: `learning_rate=0.003, seed=1`."""
  return ", ".join([f"{k}={_short(v)}" for k, v in values.items()] +
                   ([f"seed={seed}"] if seed is not None else []))


def _short(value) -> str:
  """0.003, 1e-05, 2: the shortest text that reads back as the value."""
  text = f"{value:g}"
  return text if float(text) == value else repr(value)


# How their axis runs on devices.

AXIS = "replica"  # The mesh axis the members are split along.


def vmap(num: int, fn: Callable, in_axes=0, out_axes=0) -> Callable:
  """`fn` mapped over the members' axis, or `fn` itself for one member."""
  if num == 1:
    return fn
  return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)


def in_turn(num: int) -> bool:
  """Whether the train chunk runs the members one after another (CPU).

  On a CPU, M members as a `lax.scan` over the members' axis of the
  single-member chunk (member 0's steps, then member 1's, ...) ran faster than
  the vmapped step: XLA:CPU runs M small matmuls faster than one batched
  matmul, and the vmapped step's per-member `lax.cond` (skip padding and
  diverged steps) becomes a select that reads and writes the whole train state
  every step. Accelerators keep the vmapped step.
  """
  return num > 1 and jax.default_backend() == "cpu"


def compiler_options(num: int) -> Optional[Dict[str, str]]:
  """XLA options for the train chunk: with members in turn, region analysis.

  XLA:CPU's copy insertion otherwise copies loop-carried buffers every step
  (a large kernel after the step's `lax.cond`, the threefry state in each
  dropout mask's round loop); with region analysis those copies go and the
  results keep the same bits. Other runs keep XLA's defaults.
  """
  if not in_turn(num):
    return None
  return {"xla_cpu_copy_insertion_use_region_analysis": "True"}


def mesh(num: int) -> Optional[Mesh]:
  """The CPU devices the members are split over, or None for one device.

  With a host split into one device per core (devices.split_host), each
  device trains M / D members, its own core running their steps, where one
  device would spread every small matmul over both cores. The most devices
  that divide M are used.
  """
  if not in_turn(num):
    return None
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num % d == 0)
  if count == 1 or jax.process_count() > 1:
    return None
  return Mesh(np.array(devices[:count]), (AXIS,))


def place_restored(state, member_mesh: Optional[Mesh]):
  """A restored stacked state, split along the members' axis on `member_mesh`.

  orbax restores it onto one device, which the split train chunk refuses
  ("incompatible devices"). It goes through the host: moving device arrays
  between the split host's CPU devices before the first chunk could hang.
  """
  if member_mesh is None:
    return state
  return jax.device_put(jax.device_get(state),
                        NamedSharding(member_mesh, P(AXIS)))


def split(fn: Callable, member_mesh: Optional[Mesh],
          member_axis: Sequence[bool]) -> Callable:
  """`fn` with its members' axis split across `member_mesh` (or `fn` itself).

  member_axis: for each argument, whether it has the leading members' axis
  (else every device gets all of it). Every output has the members' axis.
  """
  if member_mesh is None:
    return fn
  return shard_map(fn, mesh=member_mesh,
                   in_specs=tuple(P(AXIS) if r else P() for r in member_axis),
                   out_specs=P(AXIS), check_vma=False)


def train_chunk(chunk: Callable, num: int, sequential: bool,
                member_mesh: Optional[Mesh] = None) -> Callable:
  """The single-member train chunk over the members' axis.

  Args:
    chunk: fn(state, images, labels, batch_idx [C, B], valid [C]) ->
      (state, sums, bad, rate), one member's chunk of steps
      (train.make_train_chunk).
    num: M, the number of members.
    sequential: run the members in turn (`in_turn`), else vmap the step.
    member_mesh: the devices to split the members over (`mesh`), or None.

  Returns:
    fn(state [M, ...], images, labels, batch_idx [M, C, B], valid [C]) ->
    (state [M, ...], sums [M], bad [M], rate [M]); `chunk` itself for one member. In
    turn, member i runs exactly the single-member program, so it computes
    what the single run with its seed computes.
  """
  if num == 1:
    return chunk
  if not sequential:
    return jax.vmap(chunk, in_axes=(0, None, None, 0, None))

  def run(state, images, labels, batch_idx, valid):
    def body(_, member):
      state, idx = member
      return None, chunk(state, images, labels, idx, valid)
    return jax.lax.scan(body, None, (state, batch_idx))[1]

  return split(run, member_mesh, (True, False, False, True, False))


def evaluate(fn: Callable, num: int,
             member_mesh: Optional[Mesh] = None) -> Callable:
  """The single-member evaluation (train.make_evaluate) over the members.

  fn(params [M, ...], images, labels, batch_idx, mask) -> sums [M]; `fn`
  itself for one member.
  """
  return split(vmap(num, fn, in_axes=(0, None, None, None, None)), member_mesh,
               (True, False, False, False, False))


# Their metrics, and which one is chosen.

# Keys of a member's dict in a row that say which member it is.
IDENTITY_KEYS = ("index", "seed", "values")


class Choice(NamedTuple):
  """A grid point (index into `points`) and one of its members (member index)."""
  point: int
  member: int


def host_metrics(sums) -> Dict:
  """Metric sums (metrics.batch_sums, on a device) as host values.

  Returns:
    `metrics.values` of a single member; for stacked [M] sums the mean over
    members under the same keys, plus `per_member`, each member's values.
  """
  m = jax.device_get(sums)
  if np.ndim(m["count"]) == 0:
    return metrics_lib.values(m)
  per = [metrics_lib.values(jax.tree.map(lambda a, i=i: a[i], m))
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
    rates: each member's learning rate at the row's step.

  Returns:
    top: `<split>_<metric>` of the chosen member for each metric the split
      reports (metrics.py; None for a split not evaluated). extras: {} for
      one member; else `<split>_<metric>_mean` and `_std` over the grid
      point's seeds when it has several, and `members`.
  """
  per = {split: per_member(f) for split, f in splits.items() if f}
  names = {split: [m.name for m in metrics_lib.of(split)] for split in splits}
  if len(members) == 1:  # The single run's row, as it always was.
    return {f"{split}_{key}": per[split][0][key] if split in per else None
            for split in splits for key in names[split]}, {}
  top = {f"{split}_{key}": _json(per[split][choice.member][key])
         if split in per else None for split in splits for key in names[split]}
  seeds = points(members)[choice.point]
  extras = {}
  if len(seeds) > 1:
    for split, values in per.items():
      for key in names[split]:
        of_seeds = [values[i][key] for i in seeds]
        extras[f"{split}_{key}_mean"] = _json(np.mean(of_seeds))
        extras[f"{split}_{key}_std"] = _json(_std(of_seeds))
  rows = []
  for m in members:
    entry = identity(m)
    if rates is not None:
      entry["learning_rate"] = rates[m.index]
    for split, values in per.items():
      for key in names[split]:
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

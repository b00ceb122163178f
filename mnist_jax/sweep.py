"""Sweeps: a grid of hyperparameter values times seeds, trained as one program.

`--sweep=learning_rate=3e-4,1e-3 --sweep=weight_decay=0,1e-4` (or one flag,
`learning_rate=3e-4,1e-3;weight_decay=0,1e-4`) gives the grid of every
combination of the values, the names in the order given; `--num_seeds=N`
trains each grid point with the seeds seed .. seed+N-1. A member of the run is
one (values, seed) pair, in grid point major, seed minor order, and computes
what the single run with its values and seed computes: `Member.config` is that
run's validated Config. A run without a sweep is one grid point.

Only the optimizer and loss hyperparameters in `optim.SWEEPABLE` can be swept:
they are per-member arrays in the optimizer state (see optim.py), so the
members share one compiled program. Anything else changes shapes or the
program and is refused.
"""

import itertools
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import optim
from mnist_jax.config import Config
from mnist_jax.errors import UserError

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
  if name in config_lib.FIELDS:
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
    field, needed = optim.ONLY_WITH.get(name, (None, None))
    if field is not None and getattr(config, field) != needed:
      raise UserError(
          f"--sweep={name} changes nothing with --{field}="
          f"{getattr(config, field)}: only --{field}={needed} reads it")


def members(config: Config, spec: Optional[str] = None) -> List[Member]:
  """Every member of the run: the grid of `spec` times the config's seeds.

  Args:
    config: the run's Config.
    spec: the sweep, as `--sweep` flags give it or `canonical` writes it;
      None reads `config.sweep`.

  Returns:
    [Member] in grid point major, seed minor order; each config validated.

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
  return out


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

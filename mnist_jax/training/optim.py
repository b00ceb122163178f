"""Optimizers and learning-rate schedules from a Config, built with optax.

Every numeric hyperparameter a run uses lives in its optimizer state,
`opt_state.hyperparams` (`optax.inject_hyperparams`), not in the compiled
program: the members of a sweep (members.py) share one program and differ only
in these arrays, and a single run is a sweep of one. Which hyperparameters are
held, and so the optimizer's structure, depends on the config and on the swept
names, never on the values: `--grad_clip=0` leaves the clip out, while a swept
`grad_clip` keeps it in every member and 0 turns it off there.

Each such hyperparameter is declared once, in HYPERPARAMS (the Config field it
comes from, when it is read and held); --sweep's names, what it refuses, the
held values and `make_optimizer`'s arguments all derive from that table. A new
one is an entry there, its use in `make_optimizer`'s chain, and its Config
field (flag, help, default, range) in config.py.
"""

import dataclasses
import dataclasses
import inspect
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax.config import Config

# cosine_onecycle_schedule's defaults: rise over 30% of the run from peak / 25,
# then fall to peak / 25 / 1e4.
_ONECYCLE_START, _ONECYCLE_DIV, _ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def total_steps(config: Config, steps_per_epoch: int) -> int:
  return max(1, config.epochs * steps_per_epoch)


def warmup_steps(config: Config, steps_per_epoch: int) -> int:
  """The warmup of `warmup_cosine` in steps: at least 1, less than the run."""
  total = total_steps(config, steps_per_epoch)
  return max(1, min(total - 1, int(config.warmup_epochs * steps_per_epoch)))


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
  """A number `opt_state.hyperparams` holds, per member: sweepable.

  field: the Config field (flag) it comes from; --sweep takes this name.
  reads: (Config field, value or tuple of values) a run needs for its
    optimizer or schedule to read it; None: every run reads it. --sweep
    refuses it in other runs.
  on: whether a run that reads it but does not sweep it holds it; None:
    always (a clip of 0 is left out, a swept one is held and 0 turns it off).
  value: what is held, from (config, steps_per_epoch); None: the field's value.
  dtype: of the held 0-d array.
  """
  field: str
  reads: Optional[Tuple[str, Any]] = None
  on: Optional[Callable[[Config], bool]] = None
  value: Optional[Callable[[Config, int], Any]] = None
  dtype: Any = np.float32

  def held(self, config: Config) -> bool:
    """Whether a run of `config` that does not sweep it holds it."""
    name, needed = self.reads or (None, None)
    return ((name is None or getattr(config, name) in _values(needed)) and
            (self.on is None or self.on(config)))


def _values(needed) -> tuple:
  """A `reads` value or tuple of values, as a tuple."""
  return needed if isinstance(needed, tuple) else (needed,)


# Key in `opt_state.hyperparams` -> its declaration; the order is --sweep's.
# Warmup is held in steps, counted on the host as a single run counts them.
HYPERPARAMS = {
    "learning_rate": Hyperparameter("learning_rate"),
    "weight_decay": Hyperparameter("weight_decay",
                                   on=lambda c: c.weight_decay > 0),
    "label_smoothing": Hyperparameter("label_smoothing",
                                      on=lambda c: c.label_smoothing > 0),
    "momentum": Hyperparameter("momentum", reads=("optimizer", "sgd"),
                               on=lambda c: c.momentum > 0),
    "grad_clip": Hyperparameter("grad_clip", on=lambda c: c.grad_clip > 0),
    "warmup_steps": Hyperparameter(
        "warmup_epochs", reads=("schedule", "warmup_cosine"),
        value=warmup_steps, dtype=np.int32),
    "rmsprop_decay": Hyperparameter("rmsprop_decay",
                                    reads=("optimizer", "rmsprop")),
    "eps": Hyperparameter("eps", reads=("optimizer", "rmsprop")),
}

# The Config fields a sweep may vary -> their keys in `opt_state.hyperparams`.
SWEEPABLE = {h.field: key for key, h in HYPERPARAMS.items()}
# Sweepable fields read only with some optimizers or schedules: field -> (the
# Config field that must have, the values it is read with).
ONLY_WITH = {h.field: (h.reads[0], _values(h.reads[1]))
             for h in HYPERPARAMS.values() if h.reads}


def schedule(name: str, count, peak, warmup: Optional[jax.Array],
             total: int) -> jax.Array:
  """The learning rate of the update after `count` updates, as jnp formulas.

  optax's schedules check their step counts in Python; here `peak` and
  `warmup` (steps) may be traced per-member arrays. `total` is static.
  """
  count = jnp.asarray(count)
  if name == "constant":
    return jnp.broadcast_to(peak, count.shape)
  if name == "cosine":
    return peak * _half_cosine(jnp.minimum(count, total) / total)
  if name == "warmup_cosine":
    rise = jnp.clip(count, 0, warmup) / warmup
    rest = jnp.maximum(total - warmup, 1)
    fall = _half_cosine(jnp.minimum(count - warmup, rest) / rest)
    return jnp.where(count < warmup, peak * rise, peak * fall)
  if name == "onecycle":
    top = int(_ONECYCLE_START * total)
    low = peak / _ONECYCLE_DIV
    end = peak / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
    rise = _cosine_between(low, peak, count / max(top, 1))
    fall = _cosine_between(peak, end, (count - top) / max(total - top, 1))
    return jnp.where(count < top, rise, jnp.where(count < total, fall, end))
  raise ValueError(f"unknown schedule {name!r}")


def _half_cosine(fraction):
  """1 at fraction 0, falling along half a cosine to 0 at fraction 1."""
  return 0.5 * (1 + jnp.cos(jnp.pi * fraction))


def _cosine_between(start, end, fraction):
  return end + (start - end) * _half_cosine(fraction)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's learning-rate schedule: `name` over `total` steps (static).

  The optimizer follows it (`make_optimizer`), and the train state reads its
  current rate from the optimizer's own state (`__call__`).
  """
  name: str
  total: int

  @classmethod
  def of(cls, config: Config, steps_per_epoch: int) -> "Schedule":
    return cls(config.schedule, total_steps(config, steps_per_epoch))

  def rate(self, count, peak, warmup=None) -> jax.Array:
    """The rate of the update after `count` updates (see `schedule`)."""
    return schedule(self.name, count, peak, warmup, self.total)

  def __call__(self, opt_state) -> jax.Array:
    """The rate of the next update of `opt_state` (make_optimizer's): the
    schedule at its update count, with its own (a member's) peak and warmup."""
    held = opt_state.hyperparams
    return self.rate(opt_state.count, held["learning_rate"],
                     held.get("warmup_steps"))


def hyperparams(config: Config, steps_per_epoch: int,
                swept: Iterable[str] = ()) -> Dict[str, np.ndarray]:
  """The run's hyperparameters as `opt_state.hyperparams` holds them.

  Args:
    config: the run's (or a sweep member's) Config.
    steps_per_epoch: train steps per epoch.
    swept: keys (SWEEPABLE's values) held even where the config's value turns
      their part off.

  Returns:
    key -> 0-d float32 array (int32 for warmup_steps), for every part the
    config turns on and every swept key.
  """
  swept = set(swept)
  return {key: np.asarray(h.value(config, steps_per_epoch) if h.value
                          else getattr(config, h.field), h.dtype)
          for key, h in HYPERPARAMS.items() if key in swept or h.held(config)}


def _decay_mask(params):
  """Weight decay applies to kernels (ndim >= 2), not to biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: Config, steps_per_epoch: int,
                   swept: Iterable[str] = ()) -> optax.GradientTransformation:
  """The optax chain (optional clip, optional decay, the optimizer) whose
  hyperparameters, `hyperparams(config, steps_per_epoch, swept)`, live in
  `opt_state.hyperparams`."""
  plan = Schedule.of(config, steps_per_epoch)

  def chain(**held):
    """held: every HYPERPARAMS key -> its value, None where none is held."""
    # label_smoothing is held beside the optimizer's own so that all of a
    # member's values are in one place; the loss reads it, the chain does not.
    weight_decay, grad_clip = held["weight_decay"], held["grad_clip"]

    def lr(count):
      return plan.rate(count, held["learning_rate"], held["warmup_steps"])

    if config.optimizer == "adam":
      opt = optax.adam(lr)
    elif config.optimizer == "adamw":
      opt = optax.adamw(lr, weight_decay=0.0 if weight_decay is None
                        else weight_decay, mask=_decay_mask)
    elif config.optimizer == "rmsprop":
      # eps outside the square root, as Keras' RMSprop (the LSTM seed) has it.
      opt = optax.rmsprop(lr, decay=held["rmsprop_decay"], eps=held["eps"],
                          eps_in_sqrt=False)
    elif config.optimizer == "sgd":
      opt = optax.sgd(lr, momentum=held["momentum"], nesterov=False)
    else:
      raise ValueError(f"unknown optimizer {config.optimizer!r}")
    parts = []
    if grad_clip is not None:  # A swept clip of 0 is off, as --grad_clip=0.
      parts.append(optax.clip_by_global_norm(
          jnp.where(grad_clip > 0, grad_clip, jnp.inf)))
    if weight_decay is not None and config.optimizer != "adamw":
      parts.append(optax.add_decayed_weights(weight_decay, _decay_mask))
    parts.append(opt)
    return optax.chain(*parts)

  # inject_hyperparams reads the names the chain takes from its signature.
  chain.__signature__ = inspect.Signature([
      inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None)
      for key in HYPERPARAMS])
  return optax.inject_hyperparams(chain)(
      **hyperparams(config, steps_per_epoch, swept))


def with_hyperparams(opt_state, values: Mapping[str, jax.Array]):
  """`opt_state` holding `values` (a sweep member's) in place of its own.

  values: key -> scalar, each a key `opt_state.hyperparams` already holds.
  """
  held = opt_state.hyperparams
  unknown = sorted(set(values) - set(held))
  if unknown:
    raise ValueError(f"the optimizer holds no {unknown}; it holds {sorted(held)}")
  return opt_state._replace(hyperparams={
      **held, **{k: jnp.asarray(v, held[k].dtype) for k, v in values.items()}})


def label_smoothing(opt_state, default: float = 0.0):
  """The loss's label smoothing: the state's own value when it holds one."""
  return getattr(opt_state, "hyperparams", {}).get("label_smoothing", default)


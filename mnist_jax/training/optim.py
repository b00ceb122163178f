"""Optimizers and learning-rate schedules from a Config, built with optax.

Every numeric hyperparameter a run uses lives in its optimizer state,
`opt_state.hyperparams` (`optax.inject_hyperparams`), not in the compiled
program: the members of a sweep (members.py) share one program and differ only
in these arrays, and a single run is a sweep of one. Which hyperparameters are
held, and so the optimizer's structure, depends on the config and on the swept
names, never on the values: `--grad_clip=0` leaves the clip out, while a swept
`grad_clip` keeps it in every member and 0 turns it off there.
"""

import dataclasses
from typing import Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax.config import Config

# The Config fields a sweep may vary -> their keys in `opt_state.hyperparams`.
# Warmup is held in steps, counted on the host as a single run counts them.
SWEEPABLE = {
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "label_smoothing": "label_smoothing",
    "momentum": "momentum",
    "grad_clip": "grad_clip",
    "warmup_epochs": "warmup_steps",
    "rmsprop_decay": "rmsprop_decay",
    "eps": "eps",
}

# Sweepable fields read only with one optimizer or schedule: field -> (the
# Config field that must have, the value).
ONLY_WITH = {
    "momentum": ("optimizer", "sgd"),
    "rmsprop_decay": ("optimizer", "rmsprop"),
    "eps": ("optimizer", "rmsprop"),
    "warmup_epochs": ("schedule", "warmup_cosine"),
}

# cosine_onecycle_schedule's defaults: rise over 30% of the run from peak / 25,
# then fall to peak / 25 / 1e4.
_ONECYCLE_START, _ONECYCLE_DIV, _ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def total_steps(config: Config, steps_per_epoch: int) -> int:
  return max(1, config.epochs * steps_per_epoch)


def warmup_steps(config: Config, steps_per_epoch: int) -> int:
  """The warmup of `warmup_cosine` in steps: at least 1, less than the run."""
  total = total_steps(config, steps_per_epoch)
  return max(1, min(total - 1, int(config.warmup_epochs * steps_per_epoch)))


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
  c, swept = config, set(swept)
  held = {
      "learning_rate": (True, c.learning_rate),
      "warmup_steps": (c.schedule == "warmup_cosine",
                       warmup_steps(c, steps_per_epoch)),
      "weight_decay": (c.weight_decay > 0, c.weight_decay),
      "momentum": (c.optimizer == "sgd" and c.momentum > 0, c.momentum),
      "rmsprop_decay": (c.optimizer == "rmsprop", c.rmsprop_decay),
      "eps": (c.optimizer == "rmsprop", c.eps),
      "grad_clip": (c.grad_clip > 0, c.grad_clip),
      "label_smoothing": (c.label_smoothing > 0, c.label_smoothing),
  }
  return {k: np.asarray(v, np.int32 if k == "warmup_steps" else np.float32)
          for k, (on, v) in held.items() if on or k in swept}


def _decay_mask(params):
  """Weight decay applies to kernels (ndim >= 2), not to biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: Config, steps_per_epoch: int,
                   swept: Iterable[str] = ()) -> optax.GradientTransformation:
  """The optax chain (optional clip, optional decay, the optimizer) whose
  hyperparameters, `hyperparams(config, steps_per_epoch, swept)`, live in
  `opt_state.hyperparams`."""
  plan = Schedule.of(config, steps_per_epoch)

  def chain(learning_rate, warmup_steps=None, weight_decay=None, momentum=None,
            rmsprop_decay=None, eps=None, grad_clip=None, label_smoothing=None):
    # Held beside the optimizer's own so that all of a member's values are in
    # one place; the loss reads it (train.train_step), the optimizer does not.
    del label_smoothing
    def lr(count):
      return plan.rate(count, learning_rate, warmup_steps)

    if config.optimizer == "adam":
      opt = optax.adam(lr)
    elif config.optimizer == "adamw":
      opt = optax.adamw(lr, weight_decay=0.0 if weight_decay is None
                        else weight_decay, mask=_decay_mask)
    elif config.optimizer == "rmsprop":
      # eps outside the square root, as Keras' RMSprop (the LSTM seed) has it.
      opt = optax.rmsprop(lr, decay=rmsprop_decay, eps=eps, eps_in_sqrt=False)
    elif config.optimizer == "sgd":
      opt = optax.sgd(lr, momentum=momentum, nesterov=False)
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


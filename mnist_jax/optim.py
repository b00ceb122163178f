"""The optimizer: an optax chain whose numbers (`HYPERPARAMS`) live in its
state (`optax.inject_hyperparams`), so a sweep's members share one program.
The rate is the peak times one of optax's schedules (`SCHEDULES`, peak 1)."""

import dataclasses
import functools
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The numbers the optimizer holds per member; each is a Config field.
HYPERPARAMS = ("learning_rate", "weight_decay", "grad_clip", "momentum",
               "rmsprop_decay", "eps")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """direction: fn(hyperparams) -> the optax transformation of the update's
  direction; reads: the HYPERPARAMS it reads besides the rate and decay;
  decoupled: weight decay added to the direction (AdamW), else to the
  gradient (L2)."""
  direction: Callable[[Dict], optax.GradientTransformation]
  reads: Tuple[str, ...] = ()
  decoupled: bool = False


OPTIMIZERS = {
    "adam": Optimizer(lambda h: optax.scale_by_adam()),
    "adamw": Optimizer(lambda h: optax.scale_by_adam(), decoupled=True),
    # eps outside the square root, as Keras' RMSprop (the LSTM seed) has it.
    "rmsprop": Optimizer(lambda h: optax.scale_by_rms(
        decay=h["rmsprop_decay"], eps=h["eps"], eps_in_sqrt=False),
                         reads=("rmsprop_decay", "eps")),
    "sgd": Optimizer(lambda h: optax.trace(decay=h["momentum"]),
                     reads=("momentum",)),
}

# name -> fn(total steps, warmup steps) -> the learning-rate multiplier.
SCHEDULES = {
    "constant": lambda total, warmup: optax.constant_schedule(1.0),
    "cosine": lambda total, warmup: optax.cosine_decay_schedule(1.0, total),
    "warmup_cosine": lambda total, warmup: optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup, total),
    "onecycle": lambda total, warmup: optax.cosine_onecycle_schedule(
        total, 1.0),
}


def schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The run's learning-rate multiplier of the update after `count` updates."""
  total = max(2, config.epochs * steps_per_epoch)  # Room for warmup and decay.
  warmup = max(1, min(total - 1, int(config.warmup_epochs * steps_per_epoch)))
  return SCHEDULES[config.schedule](total, warmup)


def hyperparams(config) -> Dict[str, np.ndarray]:
  """The numbers the optimizer state holds for `config`, float32."""
  return {name: np.asarray(getattr(config, name), np.float32)
          for name in HYPERPARAMS}


def _decay_mask(params):
  """Weight decay applies to kernels (ndim >= 2), not to biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _chain(learning_rate, weight_decay, grad_clip, momentum, rmsprop_decay, eps,
           *, optimizer: str, multiplier: optax.Schedule, clip: bool,
           decay: bool) -> optax.GradientTransformation:
  """One member's chain: clip, decay, direction, learning rate. Its numbers
  may be traced; `clip` and `decay` say which parts the run has at all."""
  spec = OPTIMIZERS[optimizer]
  direction = [spec.direction(dict(momentum=momentum, eps=eps,
                                   rmsprop_decay=rmsprop_decay))]
  decayed = ([optax.add_decayed_weights(weight_decay, _decay_mask)]
             if decay else [])
  # A clip of 0 is off, also for a member of a swept clip.
  clipped = ([optax.clip_by_global_norm(
      jnp.where(grad_clip > 0, grad_clip, jnp.inf))] if clip else [])
  return optax.chain(
      *clipped, *(direction + decayed if spec.decoupled else
                  decayed + direction),
      optax.scale_by_learning_rate(
          lambda count: learning_rate * multiplier(count)))


def make_optimizer(config, steps_per_epoch: int,
                   swept=()) -> optax.GradientTransformation:
  """The run's optimizer: `config`'s numbers in its state, the parts the
  config or a swept name (`swept`) turns on in its structure."""
  chain = functools.partial(
      _chain, optimizer=config.optimizer,
      multiplier=schedule(config, steps_per_epoch),
      clip=config.grad_clip > 0 or "grad_clip" in swept,
      decay=config.weight_decay > 0 or "weight_decay" in swept)
  return optax.inject_hyperparams(chain, static_args=("multiplier",))(
      **hyperparams(config))


def held(opt_state) -> Dict[str, jax.Array]:
  """The numbers `opt_state` holds (HYPERPARAMS -> array), the one way to
  them, wherever a wrapper (e.g. optax.MultiSteps) keeps the inner state."""
  return optax.tree_utils.tree_get(opt_state, "hyperparams")


def with_hyperparams(opt_state, config):
  """`opt_state` holding `config`'s numbers (a sweep member's)."""
  return optax.tree_utils.tree_set(
      opt_state, hyperparams=jax.tree.map(jnp.asarray, hyperparams(config)))


def learning_rate(opt_state, multiplier: optax.Schedule) -> jax.Array:
  """The rate of the next update, from the optimizer's own state: its held
  rate and its count of updates, which the schedule reads."""
  count = optax.tree_utils.tree_get(opt_state, "count", filtering=lambda path,
                                    _: "Inject" in getattr(path[-1],
                                                           "tuple_name", ""))
  return held(opt_state)["learning_rate"] * multiplier(count)

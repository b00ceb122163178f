"""The optimizer: an optax chain whose numbers (`HYPERPARAMS`) live in its
state (`optax.inject_hyperparams`), so a sweep's members share one program.
The rate is the peak times a schedule (`SCHEDULES`, peak 1): a function of the
update's count and the held numbers, so a schedule's own number is one more
entry of HYPERPARAMS (and sweepable)."""

import dataclasses
import inspect
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

@dataclasses.dataclass(frozen=True)
class Horizon:
  """A run's length in updates: an epoch's, all of them, the warmup's."""
  steps_per_epoch: int
  total: int
  warmup: int


# name -> fn(count, horizon, held) -> the learning-rate multiplier of the
# update after `count` updates; held: the member's HYPERPARAMS (traced).
SCHEDULES = {
    "constant": lambda count, run, held: optax.constant_schedule(1.0)(count),
    "cosine": lambda count, run, held: optax.cosine_decay_schedule(
        1.0, run.total)(count),
    "warmup_cosine": lambda count, run, held: (
        optax.warmup_cosine_decay_schedule(0.0, 1.0, run.warmup,
                                           run.total)(count)),
    "onecycle": lambda count, run, held: optax.cosine_onecycle_schedule(
        run.total, 1.0)(count),
}


def schedule(config, steps_per_epoch: int) -> Callable:
  """The run's learning-rate multiplier: fn(count, held) of the update after
  `count` updates, from the held numbers `held` (HYPERPARAMS -> array)."""
  total = max(2, config.epochs * steps_per_epoch)  # Room for warmup and decay.
  warmup = max(1, min(total - 1, int(config.warmup_epochs * steps_per_epoch)))
  fn, run = SCHEDULES[config.schedule], Horizon(steps_per_epoch, total, warmup)
  return lambda count, held: fn(count, run, held)


def hyperparams(config) -> Dict[str, np.ndarray]:
  """The numbers the optimizer state holds for `config`, float32."""
  return {name: np.asarray(getattr(config, name), np.float32)
          for name in HYPERPARAMS}


def _decay_mask(params):
  """Weight decay applies to kernels (ndim >= 2), not to biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _chain(held, *, optimizer: str, multiplier: Callable, clip: bool,
           decay: bool) -> optax.GradientTransformation:
  """One member's chain: clip, decay, direction, learning rate. Its numbers
  `held` (HYPERPARAMS -> value) may be traced; `clip` and `decay` say which
  parts the run has at all."""
  spec = OPTIMIZERS[optimizer]
  direction = [spec.direction(held)]
  decayed = ([optax.add_decayed_weights(held["weight_decay"], _decay_mask)]
             if decay else [])
  # A clip of 0 is off, also for a member of a swept clip.
  clip_norm = held["grad_clip"]
  clipped = ([optax.clip_by_global_norm(
      jnp.where(clip_norm > 0, clip_norm, jnp.inf))] if clip else [])
  return optax.chain(
      *clipped, *(direction + decayed if spec.decoupled else
                  decayed + direction),
      optax.scale_by_learning_rate(
          lambda count: held["learning_rate"] * multiplier(count, held)))


def make_optimizer(config, steps_per_epoch: int,
                   swept=()) -> optax.GradientTransformation:
  """The run's optimizer: `config`'s numbers in its state, the parts the
  config or a swept name (`swept`) turns on in its structure."""
  def chain(**held):
    return _chain(held, optimizer=config.optimizer,
                  multiplier=schedule(config, steps_per_epoch),
                  clip=config.grad_clip > 0 or "grad_clip" in swept,
                  decay=config.weight_decay > 0 or "weight_decay" in swept)
  # optax.inject_hyperparams holds the numbers its factory's signature names.
  chain.__signature__ = inspect.Signature([
      inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY)
      for name in HYPERPARAMS])
  return optax.inject_hyperparams(chain)(**hyperparams(config))


def held(opt_state) -> Dict[str, jax.Array]:
  """The numbers `opt_state` holds (HYPERPARAMS -> array), the one way to
  them, wherever a wrapper (e.g. optax.MultiSteps) keeps the inner state."""
  return optax.tree_utils.tree_get(opt_state, "hyperparams")


def with_hyperparams(opt_state, config):
  """`opt_state` holding `config`'s numbers (a sweep member's)."""
  return optax.tree_utils.tree_set(
      opt_state, hyperparams=jax.tree.map(jnp.asarray, hyperparams(config)))


def learning_rate(opt_state, multiplier: Callable) -> jax.Array:
  """The rate of the next update, from the optimizer's own state: its held
  numbers and its count of updates, which the schedule (`schedule`) reads."""
  count = optax.tree_utils.tree_get(opt_state, "count", filtering=lambda path,
                                    _: "Inject" in getattr(path[-1],
                                                           "tuple_name", ""))
  numbers = held(opt_state)
  return numbers["learning_rate"] * multiplier(count, numbers)

"""Optimizers and learning-rate schedules from a Config, built with optax."""

import jax
import optax

from mnist_jax.config import Config


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate as a function of the step, over `epochs * steps_per_epoch`."""
  lr = config.learning_rate
  total = max(1, config.epochs * steps_per_epoch)
  warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, total)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), total)
  if config.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total, lr)
  raise ValueError(f"unknown schedule {config.schedule!r}")


def _decay_mask(params):
  """Weight decay applies to kernels (ndim >= 2), not to biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: Config, steps_per_epoch: int):
  """The full optax chain: optional clipping, optional decay, the optimizer."""
  lr = make_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    opt = optax.adam(lr)
  elif config.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=config.weight_decay, mask=_decay_mask)
  elif config.optimizer == "rmsprop":
    # eps outside the square root, as Keras' RMSprop (the LSTM seed) has it.
    opt = optax.rmsprop(lr, decay=config.rmsprop_decay, eps=config.eps,
                        eps_in_sqrt=False)
  elif config.optimizer == "sgd":
    opt = optax.sgd(lr, momentum=config.momentum or None, nesterov=False)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  if config.weight_decay > 0 and config.optimizer != "adamw":
    chain.append(optax.add_decayed_weights(config.weight_decay, _decay_mask))
  chain.append(opt)
  return optax.chain(*chain)

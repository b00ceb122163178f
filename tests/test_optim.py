"""The optimizer with its numbers in its state, against plain optax chains
and optax's own schedules over whole runs; label smoothing as a loss
setting; a new optimizer as one entry of optim.OPTIMIZERS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import synthetic_digits
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.training import members as members_lib
from mnist_jax import optim
from mnist_jax.training import train

STEPS_PER_EPOCH, EPOCHS = 10, 5  # 50 steps in all; the tests run a few more.


def _reference_schedule(config, steps_per_epoch):
  """The learning rate as optax's own schedules give it, with the peak in
  the schedule (not a multiplier times a held peak)."""
  lr = config.learning_rate
  total = max(2, config.epochs * steps_per_epoch)
  warmup = max(1, min(total - 1, int(config.warmup_epochs * steps_per_epoch)))
  return {
      "constant": lambda: optax.constant_schedule(lr),
      "cosine": lambda: optax.cosine_decay_schedule(lr, total),
      "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
          0.0, lr, warmup, total),
      "onecycle": lambda: optax.cosine_onecycle_schedule(total, lr),
  }[config.schedule]()


def _mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _reference_optimizer(config, steps_per_epoch):
  """The run's optimizer as plain optax spells it."""
  lr = _reference_schedule(config, steps_per_epoch)
  opt = {
      "adam": lambda: optax.adam(lr),
      "adamw": lambda: optax.adamw(lr, weight_decay=config.weight_decay,
                                   mask=_mask),
      "rmsprop": lambda: optax.rmsprop(lr, decay=config.rmsprop_decay,
                                       eps=config.eps, eps_in_sqrt=False),
      "sgd": lambda: optax.sgd(lr, momentum=config.momentum or None),
  }[config.optimizer]()
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  if config.weight_decay > 0 and config.optimizer != "adamw":
    chain.append(optax.add_decayed_weights(config.weight_decay, _mask))
  return optax.chain(*chain, opt)


def _params():
  keys = jax.random.split(jax.random.key(0), 2)
  return {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)),
                    "bias": jax.random.normal(keys[1], (4,))}}


def _run(tx, params, steps=STEPS_PER_EPOCH * EPOCHS + 5, state=None):
  """(params, opt state, every update) after `steps` updates with fixed
  pseudo-random gradients (global norm about 5, so a clip of 1 acts), from
  `state` (default: tx.init)."""
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(1), (steps,) + p.shape),
      params)
  state = tx.init(params) if state is None else state

  def body(carry, g):
    params, state = carry
    updates, state = tx.update(g, state, params)
    return (optax.apply_updates(params, updates), state), updates

  (params, state), updates = jax.lax.scan(body, (params, state), grads)
  return params, state, updates


def _config(**values):
  return config_lib.validate(config_lib.Config(**{"epochs": EPOCHS, **values}))


def _chain_cases():
  """Every optimizer x schedule x extras; without the slow marker, four that
  still cover every optimizer, schedule and extras."""
  fast = {("adam", "constant", 0), ("adamw", "cosine", 1),
          ("rmsprop", "warmup_cosine", 1), ("sgd", "onecycle", 1)}
  return [pytest.param(o, s, extra, id=f"{o}-{s}-{k}", marks=[
      pytest.mark.slow] * ((o, s, k) not in fast))
          for o in optim.OPTIMIZERS for s in optim.SCHEDULES
          for k, extra in enumerate([{}, dict(
              grad_clip=1.0, weight_decay=1e-2, warmup_epochs=1.5)])]


@pytest.mark.parametrize("optimizer,schedule,extras", _chain_cases())
def test_equals_the_plain_optax_chain_over_a_whole_run(optimizer, schedule,
                                                      extras):
  config = _config(optimizer=optimizer, schedule=schedule, learning_rate=3e-2,
                   **extras)
  params = _params()
  new, new_state, new_updates = jax.jit(functools.partial(
      _run, optim.make_optimizer(config, STEPS_PER_EPOCH)))(params)
  ref, _, ref_updates = jax.jit(functools.partial(
      _run, _reference_optimizer(config, STEPS_PER_EPOCH)))(params)
  # The run's parts only: a clip and a decay where the config asks for them,
  # then the direction and the learning rate.
  assert len(new_state.inner_state) == 2 + (config.grad_clip > 0) + (
      config.weight_decay > 0)
  for a, b in zip(jax.tree.leaves(new_updates), jax.tree.leaves(ref_updates)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  for a, b, before in zip(jax.tree.leaves(new), jax.tree.leaves(ref),
                          jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert not np.allclose(a, before)


@pytest.mark.parametrize("schedule", list(optim.SCHEDULES))
@pytest.mark.parametrize("steps_per_epoch,epochs,warmup", [
    (10, 5, 1.5), (421, 20, 1.0), (3, 1, 0.0), (5, 2, 9.0), (1, 1, 1.0)])
def test_schedules_are_optax_s_own_times_the_peak(schedule, steps_per_epoch,
                                                  epochs, warmup):
  """Over a whole run and past its end; a warmup of 0 steps is 1, one of the
  whole run or more stops a step short of its end, and a run of one step (the
  memory check's optimizer) has room for both."""
  config = _config(schedule=schedule, learning_rate=2e-3, epochs=epochs,
                   warmup_epochs=warmup)
  total = steps_per_epoch * epochs
  counts = jnp.arange(total + 3, dtype=jnp.int32)
  multiplier = optim.schedule(config, steps_per_epoch)
  peak = optim.hyperparams(config)["learning_rate"]
  held = optim.hyperparams(config)
  ours = jax.jit(jax.vmap(lambda c: peak * multiplier(c, held)))(counts)
  theirs = jax.vmap(_reference_schedule(config, steps_per_epoch))(counts)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("schedule", list(optim.SCHEDULES))
def test_the_reported_rate_is_the_one_the_next_update_applies(schedule):
  """optim.learning_rate reads the rate from the optimizer's own state (a
  member's peak, its update count): plain SGD moves a parameter by exactly
  that rate times a unit gradient."""
  config = _config(optimizer="sgd", momentum=0.0, schedule=schedule,
                   learning_rate=2e-3, epochs=2, warmup_epochs=0.5)
  multiplier = optim.schedule(config, STEPS_PER_EPOCH)
  tx = optim.make_optimizer(config, STEPS_PER_EPOCH)
  member = config.replace(learning_rate=5e-3)  # A sweep member's peak.
  theirs = _reference_schedule(member, STEPS_PER_EPOCH)
  params = {"w": jnp.zeros((2, 2))}
  state = optim.with_hyperparams(tx.init(params), member)
  ones = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def step(params, state):
    rate = optim.learning_rate(state, multiplier)
    updates, state = tx.update(ones, state, params)
    return optax.apply_updates(params, updates), state, rate, updates["w"][0, 0]

  for count in range(2 * STEPS_PER_EPOCH + 2):
    params, state, rate, moved = step(params, state)
    assert float(rate) == pytest.approx(float(theirs(count)), rel=1e-5,
                                        abs=1e-12), count
    assert float(-moved) == pytest.approx(float(rate), rel=1e-6, abs=1e-12)


def test_a_swept_clip_or_decay_of_0_is_off_and_members_hold_their_numbers():
  """The clip and the decay are parts of the chain where the config turns
  them on (test_equals_the_plain_optax_chain_over_a_whole_run) or a sweep
  names them, a swept 0 then off; with_hyperparams sets a member's numbers
  (held float32: test_hparams.py), and nothing else."""
  params = _params()
  plain = optim.make_optimizer(_config(), STEPS_PER_EPOCH).init(params)
  swept = optim.make_optimizer(_config(), STEPS_PER_EPOCH,
                               swept=("grad_clip", "weight_decay"))
  assert len(swept.init(params).inner_state) == 4
  # Held 0: a member whose clip and decay are 0 computes the plain run.
  a, _, _ = _run(swept, params, steps=7)
  b, _, _ = _run(optim.make_optimizer(_config(), STEPS_PER_EPOCH), params,
                 steps=7)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # with_hyperparams sets a member's numbers, and nothing else.
  member = _config(optimizer="rmsprop", learning_rate=3e-2, eps=1e-3,
                   rmsprop_decay=0.5)
  moved = optim.with_hyperparams(plain, member)
  for name in optim.HYPERPARAMS:
    assert float(moved.hyperparams[name]) == pytest.approx(
        getattr(member, name), rel=1e-6)
    assert moved.hyperparams[name].dtype == jnp.float32
  assert jax.tree.structure(moved) == jax.tree.structure(plain)
  for x, y in zip(jax.tree.leaves(moved.inner_state),
                  jax.tree.leaves(plain.inner_state)):
    np.testing.assert_array_equal(x, y)


TINY = dict(mlp_hidden=(16,), dropout=0.0, batch_size=16, epochs=2,
            schedule="warmup_cosine", warmup_epochs=0.5)


def _batches(n_steps, batch=16):
  images, labels = synthetic_digits(batch * n_steps)
  images = jnp.asarray(images).reshape(n_steps, batch, 28, 28, 1)
  labels = jnp.asarray(labels, jnp.int32).reshape(n_steps, batch)
  return {"image": images, "label": labels,
          "valid": jnp.ones((n_steps,), bool)}


def test_label_smoothing_is_a_loss_setting_not_optimizer_state():
  """The optimizer holds no label smoothing; the step's argument smooths the
  loss it differentiates, while the loss it reports stays plain."""
  config = models.get_config("mlp", "seed", label_smoothing=0.3,
                             optimizer="sgd", **{**TINY, "schedule": "constant"})
  model, _ = models.build(config)
  state = train.create_train_state(jax.random.key(0), model,
                                   optim.make_optimizer(config, 4), (28, 28, 1))
  assert "label_smoothing" not in state.opt_state.hyperparams
  assert "label_smoothing" not in optim.HYPERPARAMS
  assert config_lib.sweepable() == (*optim.HYPERPARAMS, "label_smoothing")
  batch = jax.tree.map(lambda a: a[0], _batches(1))
  step = jax.jit(lambda s, ls: train.train_step(s, batch, label_smoothing=ls))
  plain, plain_sums = step(state, 0.0)
  smooth, smooth_sums = step(state, 0.3)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(plain.params),
                     jax.tree.leaves(smooth.params)))
  np.testing.assert_allclose(plain_sums["loss"], smooth_sums["loss"], rtol=1e-6)
  # cross_entropy: (plain, smoothed), the smoothed one against the uniform mix.
  logits = jax.random.normal(jax.random.key(2), (5, 10))
  labels = jnp.arange(5)
  nll, smoothed = train.cross_entropy(logits, labels, 0.3)
  target = 0.7 * jax.nn.one_hot(labels, 10) + 0.03
  np.testing.assert_allclose(
      smoothed, -(target * jax.nn.log_softmax(logits)).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(nll, train.cross_entropy(logits, labels)[0])


# A new optimizer: one entry of optim.OPTIMIZERS. Lion reads `momentum` as
# its b1, so that --sweep's rules for momentum come from the table too.
LION = optim.Optimizer(lambda h: optax.scale_by_lion(b1=h["momentum"]),
                       reads=("momentum",))


def test_a_new_optimizer_is_one_table_entry(monkeypatch):
  """Lion added to optim.OPTIMIZERS is a valid --optimizer (the choices are
  the table, not a copy taken at import), steps as optax's Lion, and --sweep's
  refusals of the numbers it does or does not read derive from the table."""
  monkeypatch.setitem(optim.OPTIMIZERS, "lion", LION)
  config = models.get_config("mlp", "seed", optimizer="lion", momentum=0.9,
                             learning_rate=3e-4, mlp_hidden=(32,), dropout=0.0,
                             epochs=2, batch_size=32, val_fraction=0.0)
  state = optim.make_optimizer(config, 10).init(_params())
  assert any(isinstance(s, optax.ScaleByLionState) for s in state.inner_state)
  # Its update is optax's Lion, scaled by the rate.
  params = _params()
  ours, _, _ = _run(optim.make_optimizer(config.replace(epochs=10), 1), params,
                    steps=6)
  theirs, _, _ = _run(optax.lion(3e-4, b1=0.9, weight_decay=0.0), params,
                     steps=6)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # --sweep: momentum is read by sgd and lion, so adam refuses it naming both;
  # lion sweeps it, and refuses what only rmsprop reads.
  swept = config.replace(val_fraction=0.1)
  assert len(members_lib.from_config(
      swept.replace(sweep="momentum=0.8,0.9"))) == 2
  with pytest.raises(UserError, match="only --optimizer=sgd or "
                     "--optimizer=lion reads it"):
    models.validate(swept.replace(optimizer="adam", sweep="momentum=0.8,0.9"))
  with pytest.raises(UserError, match="changes nothing with --optimizer=lion: "
                     "only --optimizer=rmsprop reads it"):
    models.validate(swept.replace(sweep="eps=1e-7,1e-3"))

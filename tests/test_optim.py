"""The optimizer, its numbers in its state, against plain optax chains and
schedules over whole runs; swept where read; label smoothing; a new
optimizer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_trees_equal, digits, fresh_state
import launch
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.training import members as members_lib
from mnist_jax import optim
from mnist_jax.training import train

STEPS_PER_EPOCH, EPOCHS = 10, 5  # 50 steps in all; the tests run a few more.


def _reference_schedule(config, steps_per_epoch):
  """The learning rate by optax's own schedules, the peak in them."""
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


def _reference_optimizer(config, steps_per_epoch):
  """The run's optimizer as plain optax spells it (kernels decayed)."""
  lr = _reference_schedule(config, steps_per_epoch)
  mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  opt = {
      "adam": lambda: optax.adam(lr),
      "adamw": lambda: optax.adamw(lr, weight_decay=config.weight_decay,
                                   mask=mask),
      "rmsprop": lambda: optax.rmsprop(lr, decay=config.rmsprop_decay,
                                       eps=config.eps, eps_in_sqrt=False),
      "sgd": lambda: optax.sgd(lr, momentum=config.momentum or None),
  }[config.optimizer]()
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  if config.weight_decay > 0 and config.optimizer != "adamw":
    chain.append(optax.add_decayed_weights(config.weight_decay, mask))
  return optax.chain(*chain, opt)


def _params():
  keys = jax.random.split(jax.random.key(0), 2)
  return {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)),
                    "bias": jax.random.normal(keys[1], (4,))}}


def _run(tx, params, steps=STEPS_PER_EPOCH * EPOCHS + 5):
  """(params, opt state, every update) after `steps` updates of fixed random
  gradients (global norm about 5: a clip of 1 acts)."""
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(1), (steps,) + p.shape),
      params)
  state = tx.init(params)

  def body(carry, g):
    params, state = carry
    updates, state = tx.update(g, state, params)
    return (optax.apply_updates(params, updates), state), updates

  (params, state), updates = jax.lax.scan(body, (params, state), grads)
  return params, state, updates


def _config(**values):
  return config_lib.validate(config_lib.Config(**{"epochs": EPOCHS, **values}))


def _chain_cases():
  """Every optimizer x schedule x extras; four fast ones cover each."""
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
  """Every step's update (so the parameters they move)."""
  config = _config(optimizer=optimizer, schedule=schedule, learning_rate=3e-2,
                   **extras)
  _, _, new = jax.jit(functools.partial(
      _run, optim.make_optimizer(config, STEPS_PER_EPOCH)))(_params())
  _, _, ref = jax.jit(functools.partial(
      _run, _reference_optimizer(config, STEPS_PER_EPOCH)))(_params())
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert np.any(a)


@pytest.mark.parametrize("schedule,steps_per_epoch,epochs,warmup", [
    (s, *n) for s in optim.SCHEDULES for n in [  # Lengths the schedule reads.
        (10, 2, 0.5), (421, 20, 1.0), (1, 1, 1.0), (3, 1, 0.0), (5, 2, 9.0)][
            :{"constant": 1, "warmup_cosine": 5}.get(s, 3)]])
def test_the_rate_is_optax_s_schedule_and_the_next_updates(
    schedule, steps_per_epoch, epochs, warmup):
  """optim.learning_rate, read from the state (a member's peak, the count), is
  optax's schedule past the run's end, and plain SGD moves by it (edge cases:
  no warmup, one of the whole run, a run of one step)."""
  config = _config(optimizer="sgd", momentum=0.0, schedule=schedule,
                   learning_rate=2e-3, epochs=epochs, warmup_epochs=warmup)
  multiplier = optim.schedule(config, steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch)
  member = config.replace(learning_rate=5e-3)  # A sweep member's peak.
  params = {"w": jnp.zeros((2, 2))}
  ones = jax.tree.map(jnp.ones_like, params)

  def step(carry, _):
    params, state = carry
    rate = optim.learning_rate(state, multiplier)
    updates, state = tx.update(ones, state, params)
    return (optax.apply_updates(params, updates), state), (
        rate, updates["w"][0, 0])

  counts = steps_per_epoch * epochs + 3
  start = (params, optim.with_hyperparams(tx.init(params), member))
  _, (rates, moved) = jax.jit(lambda c: jax.lax.scan(
      step, c, None, length=counts))(start)
  theirs = jax.vmap(_reference_schedule(member, steps_per_epoch))(
      jnp.arange(counts, dtype=jnp.int32))
  # To float32 rounding at the peak's scale (optax's releases round apart).
  np.testing.assert_allclose(rates, theirs, rtol=1e-5,
                             atol=1e-6 * member.learning_rate)
  np.testing.assert_allclose(-moved, rates, rtol=1e-6, atol=1e-12)


def test_a_swept_clip_or_decay_of_0_is_off_and_members_hold_their_numbers():
  """A swept clip or decay is part of the chain, a member's 0 off;
  with_hyperparams sets a member's numbers and nothing else."""
  params, tx = _params(), optim.make_optimizer(_config(), STEPS_PER_EPOCH)
  plain = tx.init(params)
  swept = optim.make_optimizer(_config(), STEPS_PER_EPOCH,
                               swept=("grad_clip", "weight_decay"))
  assert len(swept.init(params).inner_state) == 4
  a, _, _ = _run(swept, params, steps=7)
  b, _, _ = _run(tx, params, steps=7)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  member = _config(optimizer="rmsprop", learning_rate=3e-2, eps=1e-3,
                   rmsprop_decay=0.5)
  moved = optim.with_hyperparams(plain, member)
  for name in optim.HYPERPARAMS:
    assert float(moved.hyperparams[name]) == pytest.approx(
        getattr(member, name), rel=1e-6)
    assert moved.hyperparams[name].dtype == jnp.float32
  assert jax.tree.structure(moved) == jax.tree.structure(plain)
  assert_trees_equal(moved.inner_state, plain.inner_state)


@pytest.mark.parametrize("key", list(optim.HYPERPARAMS))
def test_every_hyperparameter_is_swept_where_read(key):
  """Listed by --sweep's help, swept with the optimizers that read it
  (`reads`), refused with the others (held as float32: the test above)."""
  listed = launch.FLAGS["sweep"].help.split("NAME: ")[1].split(" (default")[0]
  assert key in listed.split(", ")
  value = getattr(config_lib.Config(), key)
  readers = [o for o, spec in optim.OPTIMIZERS.items() if key in spec.reads]
  for optimizer in optim.OPTIMIZERS:
    make = lambda optimizer=optimizer: models.get_config(
        "mlp", optimizer=optimizer, sweep=f"{key}={value!r}")
    if not readers or optimizer in readers:
      assert len(members_lib.from_config(make())) == 1
      continue
    with pytest.raises(UserError) as e:
      make()
    assert str(e.value) == (
        f"--sweep={key} changes nothing with --optimizer={optimizer}: only "
        f"{' or '.join(f'--optimizer={o}' for o in readers)} reads it")


def test_label_smoothing_is_a_loss_setting_not_optimizer_state():
  """Not held by the optimizer; it smooths the loss the step differentiates,
  not the one it reports."""
  config = models.get_config("mlp", "seed", mlp_hidden=(16,), dropout=0.0,
                             optimizer="sgd", schedule="constant",
                             label_smoothing=0.3)
  state = fresh_state(config, steps_per_epoch=4)
  assert "label_smoothing" not in state.opt_state.hyperparams
  assert config_lib.sweepable() == (*optim.HYPERPARAMS, "label_smoothing")
  batch = digits(16)
  step = jax.jit(lambda s, ls: train.train_step(s, batch, label_smoothing=ls))
  plain, plain_sums = step(state, 0.0)
  smooth, smooth_sums = step(state, 0.3)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(plain.params),
                     jax.tree.leaves(smooth.params)))
  np.testing.assert_allclose(plain_sums["loss"], smooth_sums["loss"], rtol=1e-6)
  # cross_entropy: the smoothed loss is against the uniform mix.
  logits = jax.random.normal(jax.random.key(2), (5, 10))
  labels = jnp.arange(5)
  _, smoothed = train.cross_entropy(logits, labels, 0.3)
  target = 0.7 * jax.nn.one_hot(labels, 10) + 0.03
  np.testing.assert_allclose(
      smoothed, -(target * jax.nn.log_softmax(logits)).sum(-1), rtol=1e-5)


# Lion reads `momentum` as its b1: --sweep's rules come from the table too.
LION = optim.Optimizer(lambda h: optax.scale_by_lion(b1=h["momentum"]),
                       reads=("momentum",))


def test_a_new_optimizer_is_one_table_entry(monkeypatch):
  """Lion added to optim.OPTIMIZERS is an --optimizer that steps as optax's,
  and --sweep's refusals of what it does or does not read follow."""
  monkeypatch.setitem(optim.OPTIMIZERS, "lion", LION)
  config = models.get_config("mlp", "seed", optimizer="lion", momentum=0.9,
                             learning_rate=3e-4, epochs=10)
  ours, _, _ = _run(optim.make_optimizer(config, 1), _params(), steps=6)
  theirs, _, _ = _run(optax.lion(3e-4, b1=0.9, weight_decay=0.0), _params(),
                     steps=6)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  swept = config.replace(sweep="momentum=0.8,0.9")
  assert len(members_lib.from_config(swept)) == 2
  with pytest.raises(UserError, match="only --optimizer=sgd or "
                     "--optimizer=lion reads it"):
    models.validate(swept.replace(optimizer="adam"))
  with pytest.raises(UserError, match="changes nothing with --optimizer=lion: "
                     "only --optimizer=rmsprop reads it"):
    models.validate(config.replace(sweep="eps=1e-7,1e-3"))

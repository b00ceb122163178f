"""The optimizer with its hyperparameters in the state, against plain optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import synthetic_digits
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.training import members as members_lib
from mnist_jax.training import optim
from mnist_jax.training import train

STEPS_PER_EPOCH, EPOCHS = 10, 5  # 50 steps in all; the tests run a few more.


def _reference_schedule(config, steps_per_epoch):
  """The learning rate as optax's own schedules give it."""
  lr = config.learning_rate
  total = max(1, config.epochs * steps_per_epoch)
  warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))
  return {
      "constant": lambda: optax.constant_schedule(lr),
      "cosine": lambda: optax.cosine_decay_schedule(lr, total),
      "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
          0.0, lr, max(warmup, 1), total),
      "onecycle": lambda: optax.cosine_onecycle_schedule(total, lr),
  }[config.schedule]()


def _reference_optimizer(config, steps_per_epoch):
  """The optax chain as it was built before hyperparameters moved to the state."""
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
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  return {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)),
                    "bias": jax.random.normal(keys[1], (4,))}}


def _run(tx, params, steps=STEPS_PER_EPOCH * EPOCHS + 5, init=None):
  """(params, opt state) after `steps` updates with fixed pseudo-random
  gradients (global norm about 5, so a clip of 1 acts), and every update."""
  grads = jax.tree.map(
      lambda p: 1.0 * jax.random.normal(jax.random.PRNGKey(1),
                                        (steps,) + p.shape), params)

  @jax.jit
  def run(params):
    def body(carry, g):
      params, state = carry
      updates, state = tx.update(g, state, params)
      return (optax.apply_updates(params, updates), state), updates
    return jax.lax.scan(body, (params, (init or tx.init)(params)), grads)

  (params, state), updates = run(params)
  return params, state, updates


def _config(**values):
  return config_lib.validate(config_lib.Config(**{"epochs": EPOCHS, **values}))


def _chain_cases():
  """Every optimizer x schedule x extras; a quarter of them, which still
  cover every optimizer, schedule and extras, without the slow marker."""
  extras = [{}, dict(grad_clip=1.0, weight_decay=1e-2, warmup_epochs=1.5)]
  cases = []
  for i, optimizer in enumerate(config_lib.OPTIMIZERS):
    for j, schedule in enumerate(config_lib.SCHEDULES):
      for k, extra in enumerate(extras):
        slow = (i + j) % 4 != 2 * k
        cases.append(pytest.param(
            optimizer, schedule, extra, marks=[pytest.mark.slow] * slow,
            id=f"{optimizer}-{schedule}-{'extras' if extra else 'plain'}"))
  return cases


@pytest.mark.parametrize("optimizer,schedule,extras", _chain_cases())
def test_equals_the_plain_optax_chain(optimizer, schedule, extras):
  config = _config(optimizer=optimizer, schedule=schedule, learning_rate=3e-2,
                   **extras)
  params = _params()
  new, new_state, new_updates = _run(
      optim.make_optimizer(config, STEPS_PER_EPOCH), params)
  ref, ref_state, ref_updates = _run(
      _reference_optimizer(config, STEPS_PER_EPOCH), params)
  # The same transforms in the same order: no clip unless asked for.
  assert (jax.tree.structure(new_state.inner_state) ==
          jax.tree.structure(ref_state))
  for a, b in zip(jax.tree.leaves(new_updates), jax.tree.leaves(ref_updates)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  for a, b, before in zip(jax.tree.leaves(new), jax.tree.leaves(ref),
                          jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert not np.allclose(a, before)


@pytest.mark.parametrize("schedule", config_lib.SCHEDULES)
@pytest.mark.parametrize("steps_per_epoch,epochs,warmup", [
    (10, 5, 1.5), (421, 20, 1.0), (3, 1, 0.0), (469, 3, 0.3)])
def test_schedules_equal_optax_over_a_whole_run(schedule, steps_per_epoch,
                                                 epochs, warmup):
  config = _config(schedule=schedule, learning_rate=2e-3, epochs=epochs,
                   warmup_epochs=warmup)
  total = steps_per_epoch * epochs
  counts = jnp.arange(total + 3, dtype=jnp.int32)
  held = optim.hyperparams(config, steps_per_epoch)
  ours = jax.jit(jax.vmap(lambda c, peak, w: optim.schedule(
      schedule, c, peak, w, total), in_axes=(0, None, None)))(
          counts, held["learning_rate"], held.get("warmup_steps"))
  theirs = jax.vmap(_reference_schedule(config, steps_per_epoch))(counts)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("schedule", config_lib.SCHEDULES)
def test_the_state_reads_its_rate_from_its_own_optimizer(schedule):
  """TrainState.learning_rate: the schedule at the optimizer's update count,
  with the state's own (a sweep member's) peak, as optax's schedule gives it."""
  config = _config(schedule=schedule, learning_rate=2e-3, epochs=2,
                   warmup_epochs=0.5)
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), STEPS_PER_EPOCH,
                                   hparams={"learning_rate": 5e-3})
  theirs = _reference_schedule(config.replace(learning_rate=5e-3),
                               STEPS_PER_EPOCH)
  zero = jax.tree.map(jnp.zeros_like, state.params)
  update = jax.jit(lambda s: s.apply_gradients(grads=zero))
  for count in range(2 * STEPS_PER_EPOCH + 2):
    assert float(state.learning_rate()) == pytest.approx(
        float(theirs(count)), rel=1e-5, abs=1e-12), count
    state = update(state)


def test_warmup_is_a_traced_per_member_array():
  """One compiled schedule serves members with different warmups and peaks."""
  peaks = jnp.array([1e-3, 3e-3], jnp.float32)
  warmups = jnp.array([5, 20], jnp.int32)
  counts = jnp.arange(60, dtype=jnp.int32)
  ours = jax.jit(jax.vmap(jax.vmap(
      lambda c, p, w: optim.schedule("warmup_cosine", c, p, w, 50),
      in_axes=(0, None, None)), in_axes=(None, 0, 0)))(counts, peaks, warmups)
  for i in range(2):
    theirs = jax.vmap(optax.warmup_cosine_decay_schedule(
        0.0, float(peaks[i]), int(warmups[i]), 50))(counts)
    np.testing.assert_allclose(ours[i], theirs, rtol=1e-5, atol=1e-10)


def test_held_hyperparameters_follow_the_config_and_the_swept_names():
  plain = optim.hyperparams(_config(), STEPS_PER_EPOCH)
  assert set(plain) == {"learning_rate"}
  swept = optim.hyperparams(_config(), STEPS_PER_EPOCH,
                            swept=["grad_clip", "weight_decay"])
  assert set(swept) == {"learning_rate", "grad_clip", "weight_decay"}
  assert float(swept["grad_clip"]) == 0.0
  on = optim.hyperparams(_config(optimizer="sgd", schedule="warmup_cosine",
                                 warmup_epochs=2.0, grad_clip=1.0,
                                 label_smoothing=0.1), STEPS_PER_EPOCH)
  assert set(on) == {"learning_rate", "momentum", "grad_clip", "warmup_steps",
                     "label_smoothing"}
  assert on["warmup_steps"].dtype == np.int32 and int(on["warmup_steps"]) == 20
  state = optim.make_optimizer(_config(grad_clip=1.0), 10).init(_params())
  assert set(state.hyperparams) == {"learning_rate", "grad_clip"}


def _run_members(config, spec, steps=STEPS_PER_EPOCH * EPOCHS + 5):
  """Members of `spec` as one vmapped optimizer: (members, their params and
  opt states, stacked [M])."""
  members = members_lib.from_config(config, spec)
  rows = members_lib.hyperparams(members, STEPS_PER_EPOCH)
  tx = optim.make_optimizer(config, STEPS_PER_EPOCH, swept=rows)
  init = lambda params, row: optim.with_hyperparams(tx.init(params), row)
  run = jax.vmap(lambda row: _run(tx, _params(), steps,
                                  init=lambda p: init(p, row))[:2])
  return members, *run(rows)


@pytest.mark.parametrize("optimizer,spec", [
    ("adam", "learning_rate=1e-2,3e-2;grad_clip=0,1"),
    ("sgd", "warmup_epochs=0.5,1.5;momentum=0,0.9"),
    ("adamw", "weight_decay=0,1e-1;learning_rate=1e-2,3e-2"),
    ("rmsprop", "rmsprop_decay=0.8,0.95;eps=1e-7,1e-3"),
])
def test_vmapped_members_equal_their_single_optimizers(optimizer, spec):
  config = _config(optimizer=optimizer, schedule="warmup_cosine",
                   learning_rate=3e-2, weight_decay=1e-2)
  members, params, states = _run_members(config, spec)
  finals = set()
  for m in members:
    single, _, _ = _run(optim.make_optimizer(m.config, STEPS_PER_EPOCH),
                        _params())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[m.index], b, rtol=2e-5, atol=1e-6)
    finals.add(b"".join(np.asarray(p).tobytes() for p in jax.tree.leaves(single)))
  assert len(finals) == len(members)  # Every swept value took effect.


def test_state_structure_does_not_depend_on_the_values():
  config = _config(optimizer="sgd", schedule="warmup_cosine")
  spec = "grad_clip=0,1;weight_decay=0,1e-3;momentum=0,0.5"
  members, _, states = _run_members(config, spec, steps=1)
  rows = members_lib.hyperparams(members, STEPS_PER_EPOCH)
  structures = set()
  for m in members:
    tx = optim.make_optimizer(m.config, STEPS_PER_EPOCH, swept=rows)
    structures.add(jax.tree.structure(tx.init(_params())))
  assert structures == {jax.tree.structure(jax.tree.map(lambda x: x[0], states))}
  np.testing.assert_array_equal(states.hyperparams["grad_clip"],
                                [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_allclose(states.hyperparams["momentum"], [0, 0.5] * 4)
  # Not swept and off: no clip, decay or momentum held.
  plain = optim.make_optimizer(_config(optimizer="sgd", momentum=0.0),
                               STEPS_PER_EPOCH).init(_params())
  assert set(plain.hyperparams) == {"learning_rate"}


TINY = dict(mlp_hidden=(16,), dropout=0.0, batch_size=16, epochs=2,
            schedule="warmup_cosine", warmup_epochs=0.5)


@pytest.mark.slow
def test_vmapped_train_states_equal_their_single_runs():
  """Members made by create_train_state under vmap, stepped by train_step,
  equal the single runs of their configs: the loss reads each member's label
  smoothing (the optimizer's values are tested above, without a model)."""
  config = models.get_config("mlp", "seed", learning_rate=1e-2, **TINY)
  spec = "label_smoothing=0,0.2"
  members = members_lib.from_config(config, spec)
  model = models.build(config)
  rngs = jnp.stack([jax.random.PRNGKey(m.seed) for m in members])
  states = jax.jit(jax.vmap(lambda r, h: train.create_train_state(
      r, config, model, 4, hparams=h)))(rngs, members_lib.hyperparams(members, 4))
  images, labels = synthetic_digits(16 * 4)
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  batches = jnp.arange(16 * 4).reshape(4, 16)

  def run(state):
    def body(state, idx):
      state, metrics = train.train_step(state, images[idx], labels[idx],
                                        view="flat")
      return state, metrics["loss"]
    return jax.lax.scan(body, state, batches)

  states, losses = jax.jit(jax.vmap(run))(states)
  finals = set()
  for m in members:
    single, single_losses = jax.jit(run)(train.create_train_state(
        jax.random.PRNGKey(m.seed), m.config, model, 4))
    np.testing.assert_allclose(losses[m.index], single_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(states.params),
                    jax.tree.leaves(single.params)):
      np.testing.assert_allclose(a[m.index], b, rtol=1e-5, atol=1e-6)
    finals.add(b"".join(np.asarray(p).tobytes()
                        for p in jax.tree.leaves(single.params)))
  assert len(finals) == len(members)


def test_label_smoothing_is_read_from_the_state():
  config = models.get_config("mlp", "seed", label_smoothing=0.3, optimizer="sgd",
                             **{**TINY, "schedule": "constant"})
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), 4)
  assert float(optim.label_smoothing(state.opt_state)) == pytest.approx(0.3)
  images, labels = synthetic_digits(16)
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  step = jax.jit(lambda s, ls: train.train_step(s, images, labels, view="flat",
                                                label_smoothing=ls))
  # The state's value wins over the argument (a stale config's)...
  a, _ = step(state, 0.0)
  b, _ = step(state, 0.3)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  # ... and a value changed in the state changes the step.
  other = state.replace(opt_state=optim.with_hyperparams(
      state.opt_state, {"label_smoothing": 0.0}))
  c, _ = step(other, 0.3)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_with_hyperparams_refuses_a_key_the_optimizer_does_not_hold():
  state = optim.make_optimizer(_config(), 10).init(_params())
  with pytest.raises(ValueError, match="grad_clip"):
    optim.with_hyperparams(state, {"grad_clip": 1.0})

"""train.py: the optimizer step and the scanned chunk (cut anywhere); the
loop: test_resume.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_equal, digits, fresh_state, jaxpr_equations
from mnist_jax import models
from mnist_jax.data import augment as augment_lib
from mnist_jax.training import metrics
from mnist_jax.training import train
from parallel_worker import tiny


def tiny_config(name, **overrides):
  """parallel_worker's tiny `name` (dropout, if it has it) in batches of 32."""
  return models.get_config(name, "seed", **tiny(name, batch_size=32, epochs=1,
                                                **overrides))


# The optimizer step.

@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n not in ("mlp", "gru")
    else n for n in sorted(models.MODELS)])  # The MLP and GRU stand for them.
def test_train_step_lowers_loss_and_changes_every_parameter(name):
  """The stock modules (the fast paths: test_kernels.py)."""
  config = tiny_config(name, learning_rate=3e-3, impl="stock")
  state0, batch = fresh_state(config), digits(32)
  step = jax.jit(lambda s: train.train_step(s, batch))
  state, first = step(state0)
  for _ in range(10):
    state, last = step(state)
  assert float(last["loss"]) < float(first["loss"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state0.params,
                         state.params)
  assert all(jax.tree.leaves(changed)), changed


def test_dropout_masks_depend_on_the_step():
  """The step folds into the dropout key: the same state and batch at
  another step draw other masks (and without dropout, the same loss)."""
  batch = digits(16)
  step = jax.jit(lambda s: train.train_step(s, batch)[1])
  for rate, differ in ((0.5, True), (0.0, False)):
    state = fresh_state(tiny_config("mlp", dropout=rate))
    losses = [float(step(state.replace(step=jnp.asarray(s)))["loss"])
              for s in (0, 1)]
    assert (losses[0] != losses[1]) == differ, (rate, losses)


def test_the_step_warps_from_its_augment_stream():
  """Off by default, on where presets augment; the warp is the "augment"
  key's with the step (not the dropout or data key's)."""
  assert augment_lib.from_config(models.get_config("cnn", "seed")) is None
  assert augment_lib.from_config(models.get_config("cnn", "best")) is not None
  config = tiny_config("linear", augment=True, augment_shift=3.0)
  state, warp = fresh_state(config), augment_lib.from_config(config)
  batch = digits(8)
  step = jax.jit(lambda s, warp: train.train_step(s, batch, augment=warp)[0],
                 static_argnums=1)
  params = lambda s: np.concatenate([np.ravel(p) for p in
                                     jax.tree.leaves(s.params)])
  warped = params(step(state, warp))
  assert not np.allclose(params(step(state, None)), warped)
  keys = dict(state.keys)
  other = state.replace(keys={**keys, "augment": jax.random.key(9)})
  assert not np.allclose(params(step(other, warp)), warped)
  other = state.replace(keys={**keys, "data": jax.random.key(9),
                              "dropout": jax.random.key(9)})
  np.testing.assert_array_equal(params(step(other, warp)), warped)


def test_epoch_order_is_a_fresh_permutation_each_epoch():
  state = fresh_state(tiny_config("linear"))
  order = jax.jit(functools.partial(train.epoch_order, n=100, steps=3,
                                    batch_size=32))
  a, b = np.asarray(order(state, 1)), np.asarray(order(state, 2))
  assert a.shape == (3, 32) and len(set(a.ravel())) == 96
  assert not np.array_equal(a, b)
  other = fresh_state(tiny_config("linear"), seed=1)  # The seed's data key.
  assert not np.array_equal(a, order(other, 1))


# The chunk: steps in one compiled loop.

def test_chunks_equal_step_by_step_wherever_cut():
  """Chunks of 2 and 1 step end where one chunk of 3 ends, bit for bit, and
  3 plain steps to float rounding; a chunk of no steps changes nothing. The
  chunk is one loop whose body branches on no data (performance.md)."""
  config = tiny_config("mlp", dropout=0.2, label_smoothing=0.1)
  batch = digits(96)
  state = fresh_state(config, steps_per_epoch=3)
  order = train.epoch_order(state, 1, n=96, steps=3, batch_size=32)
  chunk = jax.jit(lambda state, first, count: train.train_chunk(
      state, metrics.zeros(num_classes=10), order, batch["image"],
      batch["label"], first, count, label_smoothing=0.1))
  ref, total = state, 0.0
  step = jax.jit(functools.partial(train.train_step, label_smoothing=0.1))
  for i in range(3):
    ref, sums = step(ref, jax.tree.map(lambda x, i=i: x[order[i]], batch))
    total += float(sums["loss"])
  whole, whole_sums, bad = chunk(state, 0, 3)
  assert int(bad) == -1
  [loop] = [e for e, inside in jaxpr_equations(jax.make_jaxpr(chunk)(
      state, 0, 3).jaxpr) if not inside and e.primitive.name == "while"]
  assert not {"cond", "while"} & {e.primitive.name for e, _ in jaxpr_equations(
      loop.params["body_jaxpr"].jaxpr)}
  none, none_sums, bad = chunk(state, 3, 0)  # No steps.
  assert int(bad) == -1 and float(none_sums["count"]) == 0
  assert_trees_equal(none, state)
  cut = state
  for first, count in ((0, 2), (2, 1)):
    cut, _, _ = chunk(cut, first, count)
  assert int(whole.step) == 3 and float(whole_sums["count"]) == 96
  assert_trees_equal(cut.params, whole.params)
  assert float(whole_sums["loss"]) == pytest.approx(total, rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               whole.params, ref.params)

"""On-device augmentation: affine warps with bilinear sampling, drawn by the
train step from its own random stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax import optim
from mnist_jax.data import augment
from mnist_jax.training import train


def _images(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(
      0, 256, (n, 28, 28, 1)).astype(np.uint8))


def _expected(how, x):
  """What the warp `how` makes of x (floats)."""
  x = np.asarray(x, np.float32)
  if how == "identity":
    return x
  if how == "quarter turn":
    return np.rot90(x, -1, axes=(1, 2))
  if how == "shift":  # Down by 2, left by 3: zeros where it came from outside.
    out = np.zeros_like(x)
    out[:, 2:, :-3] = x[:, :-2, 3:]
    return out
  out = x.copy()  # Half a pixel: neighbours averaged.
  out[:, :, 1:] = (x[:, :, :-1] + x[:, :, 1:]) / 2
  return out


@pytest.mark.parametrize("how,angle,shift", [
    ("identity", 0.0, (0.0, 0.0)), ("shift", 0.0, (2.0, -3.0)),
    ("quarter turn", np.pi / 2, (0.0, 0.0)), ("half pixel", 0.0, (0.0, 0.5))])
def test_the_affine_grid_samples_as_it_says(how, angle, shift):
  x = _images()
  rows, cols = augment.affine_grid(x.shape, jnp.full(4, angle), jnp.ones(4),
                                   jnp.tile(jnp.array([shift]), (4, 1)))
  out = np.asarray(augment.sample(x, rows, cols), np.float32)
  expected = _expected(how, x)
  if how == "half pixel":  # The first column reads outside on its left.
    out, expected = out[:, :, 1:], expected[:, :, 1:]
  np.testing.assert_allclose(out, expected, atol=1e-3, rtol=1e-6)
  if how == "identity":
    np.testing.assert_array_equal(augment.augment(jax.random.key(0), x), x)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_each_example_gets_its_own_warp_in_range_and_dtype(dtype):
  """The key decides the warps (typed and raw keys alike); outputs stay in
  the input's range and dtype; the elastic field is smooth."""
  x = jnp.tile(_images(1), (8, 1, 1, 1))
  x = x if dtype == jnp.uint8 else x.astype(jnp.float32) / 255.0
  kw = dict(shift=3, rotate=20, scale=0.2, elastic=34, elastic_sigma=4)
  out = np.asarray(augment.augment(jax.random.key(2), x, **kw))
  assert out.dtype == x.dtype and out.shape == x.shape
  assert out.min() >= 0 and out.max() <= (255 if dtype == jnp.uint8 else 1.0)
  assert len({o.tobytes() for o in out}) == 8
  np.testing.assert_array_equal(out, augment.augment(jax.random.PRNGKey(2), x,
                                                     **kw))
  assert not np.array_equal(out, augment.augment(jax.random.key(3), x, **kw))
  d_rows, _ = augment.elastic_field(jax.random.key(0), (2, 28, 28), 10.0, 4.0)
  d = np.asarray(d_rows)
  assert np.abs(d).max() > 0.1
  assert np.abs(np.diff(d, axis=1)).mean() < 0.25 * d.std()


def test_the_train_step_warps_from_its_augment_stream():
  """Off by default, on where presets augment; the warp is the "augment"
  key's with the step (not the dropout or data key's)."""
  assert augment.from_config(models.get_config("cnn", "seed")) is None
  assert augment.from_config(models.get_config("mlp")) is None
  assert augment.from_config(models.get_config("cnn", "best")) is not None
  config = models.get_config("linear", "seed", augment=True, augment_shift=3.0)
  model, _ = models.build(config)
  state = train.create_train_state(jax.random.key(0), model,
                                   optim.make_optimizer(config, 1), (28, 28, 1))
  batch = {"image": _images(8), "label": jnp.arange(8) % 10}
  step = jax.jit(lambda s, warp: train.train_step(s, batch, augment=warp)[0],
                 static_argnums=1)
  warp = augment.from_config(config)
  params = lambda s: np.concatenate([np.ravel(p) for p in
                                     jax.tree.leaves(s.params)])
  warped = params(step(state, warp))
  np.testing.assert_array_equal(params(step(state, warp)), warped)
  assert not np.allclose(params(step(state, None)), warped)
  keys = dict(state.keys)
  other = state.replace(keys={**keys, "augment": jax.random.key(9)})
  assert not np.allclose(params(step(other, warp)), warped)
  other = state.replace(keys={**keys, "data": jax.random.key(9),
                              "dropout": jax.random.key(9)})
  np.testing.assert_array_equal(params(step(other, warp)), warped)

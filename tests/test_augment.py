"""On-device augmentation: affine warps with bilinear sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import augment


def _images(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1))
                     .astype(np.uint8))


def test_zero_ranges_give_the_identity():
  x = _images()
  np.testing.assert_array_equal(augment.augment(jax.random.PRNGKey(0), x), x)
  rows, cols = augment.affine_grid(x.shape, jnp.zeros(4), jnp.ones(4),
                                   jnp.zeros((4, 2)))
  np.testing.assert_array_equal(augment.sample(x, rows, cols), x)


def test_shift_moves_pixels_and_fills_zeros():
  x = _images()
  rows, cols = augment.affine_grid(x.shape, jnp.zeros(4), jnp.ones(4),
                                   jnp.tile(jnp.array([[2.0, -3.0]]), (4, 1)))
  out = np.asarray(augment.sample(x, rows, cols))
  # Down by 2, left by 3: out[i, j] = x[i - 2, j + 3], zeros where it came from outside.
  np.testing.assert_array_equal(out[:, 2:, :-3], np.asarray(x)[:, :-2, 3:])
  assert not out[:, :2].any() and not out[:, :, -3:].any()


def test_quarter_turn_is_a_rotation():
  x = _images()
  rows, cols = augment.affine_grid(x.shape, jnp.full(4, jnp.pi / 2), jnp.ones(4),
                                   jnp.zeros((4, 2)))
  out = np.asarray(augment.sample(x, rows, cols))
  np.testing.assert_allclose(out, np.rot90(np.asarray(x), -1, axes=(1, 2)),
                             atol=1e-3)


def test_half_pixel_shift_averages_neighbours():
  x = _images(1)
  rows, cols = augment.affine_grid(x.shape, jnp.zeros(1), jnp.ones(1),
                                   jnp.array([[0.0, 0.5]]))
  out = np.asarray(augment.sample(x, rows, cols))
  xf = np.asarray(x, np.float32)
  np.testing.assert_allclose(out[:, :, 1:], (xf[:, :, :-1] + xf[:, :, 1:]) / 2,
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_output_stays_in_range_and_dtype(dtype):
  x = _images(16)
  if dtype == jnp.float32:
    x = x.astype(jnp.float32) / 255.0
  out = augment.augment(jax.random.PRNGKey(1), x, shift=3, rotate=20,
                        scale=0.2, elastic=34, elastic_sigma=4)
  assert out.dtype == x.dtype and out.shape == x.shape
  top = 255 if dtype == jnp.uint8 else 1.0
  assert float(out.min()) >= 0 and float(out.max()) <= top
  assert not np.array_equal(np.asarray(out), np.asarray(x))


def test_each_example_gets_its_own_warp_and_the_key_decides_it():
  x = jnp.tile(_images(1), (8, 1, 1, 1))
  warp = lambda k: np.asarray(augment.augment(k, x, shift=2, rotate=10, scale=0.1))
  out = warp(jax.random.PRNGKey(2))
  assert len({o.tobytes() for o in out}) == 8
  np.testing.assert_array_equal(out, warp(jax.random.PRNGKey(2)))
  assert not np.array_equal(out, warp(jax.random.PRNGKey(3)))


def test_elastic_field_is_smooth_and_scaled():
  d_rows, _ = augment.elastic_field(jax.random.PRNGKey(0), (2, 28, 28), 10.0, 4.0)
  d = np.asarray(d_rows)
  assert np.abs(d).max() > 0.1
  # Neighbouring displacements differ far less than the field varies overall.
  assert np.abs(np.diff(d, axis=1)).mean() < 0.25 * d.std()


def test_from_config_is_off_by_default_and_on_where_presets_augment():
  assert augment.from_config(models.get_config("cnn", "seed")) is None
  assert augment.from_config(models.get_config("mlp")) is None
  assert augment.from_config(models.get_config("cnn")) is not None  # tuned
  assert augment.from_config(models.get_config("cnn", "best")) is not None


def test_typed_keys_warp_as_raw_keys_do():
  """The train state's streams are typed keys (jax.random.key)."""
  x = _images(8)
  kw = dict(shift=2, rotate=10, scale=0.1, elastic=8, elastic_sigma=4)
  np.testing.assert_array_equal(
      augment.augment(jax.random.key(5), x, **kw),
      augment.augment(jax.random.PRNGKey(5), x, **kw))


def test_the_train_step_warps_from_its_augment_stream():
  """train_step warps the batch with the state's "augment" key folded with
  the step: the same state steps alike, another augment key (or none)
  otherwise, and the dropout and data streams do not decide the warp."""
  from mnist_jax import optim  # pylint: disable=g-import-not-at-top
  from mnist_jax.training import train  # pylint: disable=g-import-not-at-top
  config = models.get_config("linear", "seed", augment=True, augment_shift=3.0)
  model, _ = models.build(config)
  state = train.create_train_state(jax.random.key(0), model,
                                   optim.make_optimizer(config, 1), (28, 28, 1))
  batch = {"image": _images(8), "label": jnp.arange(8) % 10,
           "valid": jnp.asarray(True)}
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

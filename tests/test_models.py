"""Every model: raw images in, logits out, seed parameter counts, stacking,
the CNN's pooling and BatchNorm (every preset: test_sweep.py)."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax import optim
from mnist_jax.models import cnn
from mnist_jax.models import recurrent
from mnist_jax.training import train

# Parameter counts of the seed architectures, from the layer formulas.
SEED_PARAMS = {
    "linear": 784 * 10 + 10,
    "mlp": (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10),
    "cnn": (9 * 32 + 32) + (9 * 32 * 64 + 64) + (5 * 5 * 64 * 128 + 128) + (128 * 10 + 10),
    # SimpleRNN: input kernel + bias, recurrent kernel; then Dense(10).
    "rnn": (28 * 128 + 128 + 128 * 128) + (128 * 10 + 10),
    # LSTM (flax): 4 input kernels, 4 recurrent kernels with biases.
    "lstm": 4 * (28 * 128 + 128 * 128 + 128) + (128 * 10 + 10),
    # GRU (flax): 3 input kernels with biases, 3 recurrent kernels, one bias (n).
    "gru": 3 * (28 * 128 + 128) + 3 * 128 * 128 + 128 + (128 * 10 + 10),
}
RECURRENT = [n for n, s in models.MODELS.items() if s.module is recurrent.Recurrent]


def _images(n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(
      0, 256, (n, 28, 28, 1)).astype(np.uint8))


@pytest.mark.parametrize("name", list(models.MODELS))
def test_raw_pixels_in_logits_out_and_seed_parameter_count(name):
  """Images [B, 28, 28, 1] on the 0-255 scale, uint8 as stored or float (an
  augmented or bfloat16 batch), read alike: the model scales them itself."""
  assert set(SEED_PARAMS) <= set(models.MODELS)
  config = models.get_config(name, "seed")
  model, x = models.get(name).stock(config), _images()
  variables = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))
  count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert count == SEED_PARAMS.get(name, count)
  np.testing.assert_allclose(apply(variables, x.astype(jnp.float32)),
                             logits, rtol=1e-6, atol=1e-6)
  assert not np.allclose(apply(variables, x / 255.0), logits)


@pytest.mark.parametrize("cell", [pytest.param(c, marks=[pytest.mark.slow] * (
    c != RECURRENT[0])) for c in RECURRENT])  # The cells share the module.
@pytest.mark.parametrize("layers,bidirectional", [
    pytest.param(2, False, marks=pytest.mark.slow), (2, True)])
def test_recurrent_stacking_and_bidirectional(cell, layers, bidirectional):
  """A cell per layer and direction; the top layer's input doubles; the
  backward direction reads the whole sequence (the first row too)."""
  model = models.get(cell).stock(models.get_config(
      cell, "seed", hidden=16, num_layers=layers, bidirectional=bidirectional))
  x = _images()
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  assert sum(1 for k in params if k.startswith(cell)) == layers * (
      1 + bidirectional)
  assert params["out"]["kernel"].shape[0] == 16 * (1 + bidirectional)
  first_row = x.at[:, 0].set(255 - x[:, 0])
  assert not np.allclose(model.apply(variables, x),
                         model.apply(variables, first_row))


@pytest.mark.parametrize("height,width", [(26, 26), (11, 11), (9, 14)])
def test_the_cnns_max_pool_is_flaxs_with_ties_sharing_the_gradient(height,
                                                                  width):
  """cnn.max_pool_2x2 against nn.max_pool: the same maxima and gradient,
  exactly; a tie shares its window's gradient (the same sum per window)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, height, width, 3))
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  grad = lambda f, x: jax.grad(lambda x: jnp.sum(f(x) * w))(x)
  np.testing.assert_array_equal(cnn.max_pool_2x2(x), ref(x))
  np.testing.assert_array_equal(grad(cnn.max_pool_2x2, x), grad(ref, x))
  tied = jnp.zeros_like(x).at[:, :, 1::2].set(jnp.maximum(x[:, :, 1::2], 0))
  shared, first = grad(cnn.max_pool_2x2, tied), grad(ref, tied)
  assert not np.array_equal(shared, first)  # The ties were met.
  window_sums = lambda g: nn.avg_pool(g, (2, 2), strides=(2, 2))
  np.testing.assert_allclose(window_sums(shared), window_sums(first),
                             rtol=1e-6)


BN = dict(cnn_batch_norm=True, cnn_features=(4, 8), cnn_dense=16)


def test_batch_norm_is_described_built_and_shaped():
  """--cnn_batch_norm: the convolutions lose their bias; a step updates the
  statistics in model_state, evaluation reads them (not the batch's)."""
  config = models.get_config("cnn", "seed", impl="stock", **BN)
  assert models.get("cnn").describe(config) == (
      "Conv4 3x3, BatchNorm, max-pool, Conv8 3x3, BatchNorm, max-pool, "
      "Dense16, Dense10")
  module, _ = models.build(config)
  state = train.create_train_state(jax.random.key(0), module,
                                   optim.make_optimizer(config, 1), (28, 28, 1))
  assert set(state.params["conv_0"]) == {"kernel"}
  assert set(state.params["bn_0"]) == {"scale", "bias"}
  assert set(state.model_state["batch_stats"]["bn_1"]) == {"mean", "var"}
  x = _images(8)
  batch = {"image": x, "label": jnp.arange(8) % 10}

  @jax.jit
  def step_and_logits(state):
    state, _ = train.train_step(state, batch)
    return state, state.apply_fn(state.variables, x), state.apply_fn(
        state.variables, x[:1])

  stepped, logits, first = step_and_logits(state)
  for stats in stepped.model_state["batch_stats"].values():
    assert not np.allclose(stats["mean"], 0) and not np.allclose(
        stats["var"], 1)
  np.testing.assert_allclose(first, logits[:1], rtol=1e-5, atol=1e-6)
  other = stepped.replace(model_state=jax.tree.map(  # Evaluation reads them.
      lambda s: 2 * s + 1, stepped.model_state))
  assert not np.allclose(other.apply_fn(other.variables, x), logits)

"""Every registered model: output shape, parameter count, stacking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import views

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


def _init(config, batch=3):
  model = models.build(config)
  x = views.to_view(jnp.zeros((batch, 28, 28), jnp.uint8), models.get(config.model).view)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  return model, params, x


def test_registry_has_the_six_seed_models():
  assert set(SEED_PARAMS) <= set(models.MODELS)


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_output_shape_and_seed_parameter_count(name, impl):
  config = models.get_config(name, "seed", impl=impl)
  model, params, x = _init(config)
  logits = model.apply({"params": params}, x)
  assert logits.shape == (3, 10)
  assert bool(jnp.all(jnp.isfinite(logits)))
  n = sum(p.size for p in jax.tree.leaves(params))
  if name in SEED_PARAMS:
    assert n == SEED_PARAMS[name]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.slow] * (n == "cnn"))
    for n in sorted(models.MODELS)])
def test_every_preset_builds_and_runs(name):
  for preset in models.get(name).presets:
    config = models.get_config(name, preset)
    model, params, x = _init(config, batch=2)
    assert model.apply({"params": params}, x).shape == (2, 10)


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers,bidirectional", [
    (2, False), (1, True), pytest.param(2, True, marks=pytest.mark.slow)])
def test_recurrent_stacking_and_bidirectional(cell, layers, bidirectional, impl):
  config = models.get_config(cell, "seed", hidden=16, num_layers=layers,
                             bidirectional=bidirectional, impl=impl)
  model, params, x = _init(config)
  assert model.apply({"params": params}, x).shape == (3, 10)
  n_rnn = sum(1 for k in params if k.startswith(cell))
  assert n_rnn == layers * (2 if bidirectional else 1)
  # The top layer's input width doubles when the layer below is bidirectional.
  assert params["out"]["kernel"].shape[0] == 16 * (2 if bidirectional else 1)


def test_bidirectional_backward_sees_the_whole_sequence():
  """The backward direction's final state depends on the first row too."""
  config = models.get_config("gru", "seed", hidden=8, bidirectional=True)
  model, params, _ = _init(config)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28))
  x2 = x.at[:, 0].add(1.0)
  f = lambda v: model.apply({"params": params}, v)
  assert not np.allclose(f(x), f(x2))

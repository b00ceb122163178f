"""Every model: raw images in, logits out, seed parameter counts, stacking,
the CNN's pooling and BatchNorm (every preset: test_sweep.py); the recurrent
models' sequences; a model's settings in its runs only."""

import io
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fresh_state, one_per_module_class, random_images
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import pipeline
from mnist_jax.models import cnn
from mnist_jax.models import recurrent
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import dry_run
from mnist_jax.rundir import record as record_lib
from mnist_jax.rundir import tensorboard
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


@pytest.mark.parametrize("name", list(models.MODELS))
def test_raw_pixels_in_logits_out_and_seed_parameter_count(name):
  """Images [B, 28, 28, 1] on the 0-255 scale, uint8 as stored or float (an
  augmented or bfloat16 batch), read alike: the model scales them itself
  (run once per module class: the recurrent cells share theirs)."""
  assert set(SEED_PARAMS) <= set(models.MODELS)
  config = models.get_config(name, "seed")
  model, x = models.get(name).stock(config), random_images(3)
  count = sum(p.size for p in jax.tree.leaves(jax.eval_shape(
      model.init, jax.random.key(0), x)["params"]))
  assert count == SEED_PARAMS.get(name, count)
  if name not in one_per_module_class():
    return
  variables = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))
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
  x = random_images(3)
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


def test_batch_norm_is_described_built_and_shaped():
  """--cnn_batch_norm: the convolutions lose their bias; a step updates the
  statistics in model_state, evaluation reads them (not the batch's)."""
  config = models.get_config("cnn", "seed", impl="stock", cnn_batch_norm=True,
                             cnn_features=(4, 8), cnn_dense=16)
  assert models.get("cnn").describe(config) == (
      "Conv4 3x3, BatchNorm, max-pool, Conv8 3x3, BatchNorm, max-pool, "
      "Dense16, Dense10")
  state = jax.jit(lambda: fresh_state(config, 1))()  # 1 program.
  assert set(state.params["conv_0"]) == {"kernel"}
  x = random_images(8)
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
  assert not np.allclose(jax.jit(other.apply_fn)(other.variables, x), logits)


@pytest.mark.parametrize("seq,shape", [("rows", (3, 28, 28)),
                                       ("pixels", (3, 784, 1))])
def test_sequences_read_every_pixel_in_their_order(seq, shape):
  """In [0, 1], row-major (permuted: the pixels in the model's order, below)."""
  images = np.asarray(random_images(3))
  x = np.asarray(recurrent.as_sequence(jnp.asarray(images), seq))
  assert x.shape == shape and x.dtype == np.float32
  np.testing.assert_allclose(x.reshape(3, -1), images.reshape(3, -1) / 255,
                             rtol=1e-6)


def test_the_permutation_is_the_models_own():
  """The sequence and its seed: the module's attributes (the presets name
  them), config.json keys read back as such; a permuted model on raw images
  computes the pixel model on images permuted by hand, in the order its seed
  fixes (a permutation of the 784, another for another seed)."""
  np.testing.assert_array_equal(np.sort(recurrent.permutation(5)),
                                np.arange(784))
  assert not np.array_equal(recurrent.permutation(6), recurrent.permutation(5))
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=4)
  assert models.from_dict(json.loads(config.to_json())) == config
  for preset in ("pixels", "permuted"):
    assert models.get_config("gru", preset).sequence == preset
  assert models.get_config("gru").sequence == "rows"  # The module's default.
  permuted = models.get("gru").stock(config)
  assert (permuted.sequence, permuted.permute_seed) == ("permuted", 5)
  pixels = models.get("gru").stock(config.replace(sequence="pixels"))
  images = np.asarray(random_images(2))
  variables = permuted.init(jax.random.key(0), jnp.asarray(images))
  by_hand = images.reshape(2, -1)[:, recurrent.permutation(5)].reshape(
      2, 28, 28, 1)
  np.testing.assert_allclose(permuted.apply(variables, images),
                             pixels.apply(variables, by_hand), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
def test_remat_keeps_parameters_outputs_and_gradients():
  x = random_images(3)
  results = []
  for remat in (False, True):
    config = models.get_config("lstm", sequence="pixels", hidden=4,
                               num_layers=2, bidirectional=True, remat=remat)
    model = models.get("lstm").stock(config)
    params = model.init(jax.random.key(0), x)["params"]
    loss = lambda p, m=model: m.apply({"params": p}, x).sum()
    results.append((params, model.apply({"params": params}, x),
                    jax.grad(loss)(params)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), *results)


@pytest.mark.slow
def test_permuted_run_records_its_order_and_tests_with_it(prepared, tmp_path):
  """The run folder records the order; the model loaded back reads the test
  split in it, as the run did (the order is the model's own: above)."""
  workdir = str(tmp_path / "run")
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=8, epochs=1, batch_size=100, report=False,
                             analyses=False, val_fraction=0.0,
                             tensorboard=False, **prepared.settings)
  final = modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  order = np.load(os.path.join(workdir, record_lib.PERMUTATION_FILE))
  np.testing.assert_array_equal(order, recurrent.permutation(5))

  run = run_lib.load_run(workdir)
  assert (run.model.sequence, run.model.permute_seed) == ("permuted", 5)
  test = pipeline.load(config).test
  accuracy = run.evaluate(test.images, test.labels)["accuracy"]
  assert accuracy == pytest.approx(final["test_accuracy"])
  # --mode=report reads the test images in the run's order too.
  assert modes.rewrite_report(workdir)["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("model", list(models.MODELS))
def test_a_models_settings_appear_in_its_runs_only(model):
  """config.json, the repeat command, the dry run and TensorBoard's hparams
  of a run carry its model's settings and no other model's."""
  config = models.get_config(model)
  own = set(models.get(model).settings)
  every = set(config_lib.SETTINGS) - set(config_lib.FIELDS)  # Models' own.
  assert set(config.to_dict()) & every == own
  assert set(tensorboard.hparams(config)) & every == own
  flags = lambda text: set(re.findall(r"--(?:no)?(\w+)", text))
  assert flags(record_lib.repeat_command(config)) & every == own
  shown = "\n".join(dry_run.settings_lines(config, ()))
  assert flags(shown) & every == own
  for name in every - own:
    with pytest.raises(AttributeError):
      getattr(config, name)

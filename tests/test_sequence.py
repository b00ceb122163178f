"""Row, pixel and permuted sequences: settings of the recurrent models, read
by the models themselves from raw images."""

import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import recurrent
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import record as record_lib
from mnist_jax import modes as rundir_run


def _images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)


@pytest.mark.parametrize("seq,shape", [("rows", (3, 28, 28)),
                                       ("pixels", (3, 784, 1)),
                                       ("permuted", (3, 784, 1))])
def test_sequence_shapes_in_the_unit_interval(seq, shape):
  x = np.asarray(recurrent.as_sequence(jnp.asarray(_images()), seq, 3))
  assert x.shape == shape and x.dtype == np.float32
  assert x.min() >= 0.0 and x.max() <= 1.0
  np.testing.assert_allclose(np.sort(x.ravel()),
                             np.sort(_images().ravel() / 255), rtol=1e-6)


def test_pixels_are_row_major_and_permuted_reorders_them():
  images = jnp.asarray(_images())
  pixels = np.asarray(recurrent.as_sequence(images, "pixels"))[..., 0]
  np.testing.assert_allclose(pixels, _images().reshape(3, -1) / 255, rtol=1e-6)
  np.testing.assert_array_equal(
      np.asarray(recurrent.as_sequence(images, "rows")).reshape(3, -1), pixels)
  order = recurrent.permutation(7)
  permuted = np.asarray(recurrent.as_sequence(images, "permuted", 7))[..., 0]
  np.testing.assert_array_equal(permuted, pixels[:, order])


def test_permutation_is_fixed_by_its_seed():
  a, b, c = (recurrent.permutation(s) for s in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(np.sort(a), np.arange(784))
  assert not np.array_equal(a, np.arange(784))
  assert a.dtype == np.int32


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_sequence_and_its_seed_are_the_modules_attributes(cell):
  config = models.get_config(cell, "seed", sequence="permuted", permute_seed=9)
  module = models.get(cell).stock(config)
  assert (module.sequence, module.permute_seed) == ("permuted", 9)
  assert models.get_config(cell, "pixels").sequence == "pixels"
  assert models.get_config(cell, "permuted").sequence == "permuted"
  assert models.get_config(cell).sequence == "rows"  # The module's default.


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_and_bidirectional_cells_read_pixels(cell, bidirectional):
  config = models.get_config(cell, sequence="permuted", hidden=4, num_layers=2,
                             bidirectional=bidirectional)
  model = models.get(cell).stock(config)
  x = jnp.asarray(_images())
  variables = model.init(jax.random.key(0), x)
  # One input feature per step: the pixel.
  assert min(k.shape[0] for k in jax.tree.leaves(variables["params"][
      f"{cell}_0"]) if k.ndim == 2) == 1
  assert model.apply(variables, x).shape == (3, 10)


def test_the_permutation_is_the_models_own():
  """A permuted model on raw images computes the pixel model on images
  permuted by hand; another seed is another model."""
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=4)
  permuted = models.get("gru").stock(config)
  pixels = models.get("gru").stock(config.replace(sequence="pixels"))
  images = _images(2)
  variables = permuted.init(jax.random.key(0), jnp.asarray(images))
  by_hand = images.reshape(2, -1)[:, recurrent.permutation(5)].reshape(2, 28, 28, 1)
  apply = jax.jit(lambda m, x: m.apply(variables, x), static_argnums=0)
  np.testing.assert_allclose(apply(permuted, images), apply(pixels, by_hand),
                             rtol=1e-5, atol=1e-6)
  other = models.get("gru").stock(config.replace(permute_seed=6))
  assert not np.allclose(apply(other, images), apply(permuted, images))


@pytest.mark.slow
def test_remat_keeps_parameters_outputs_and_gradients():
  x = jnp.asarray(_images())
  results = []
  for remat in (False, True):
    config = models.get_config("lstm", sequence="pixels", hidden=4,
                               num_layers=2, bidirectional=True, remat=remat)
    model = models.get("lstm").stock(config)
    params = model.init(jax.random.key(0), x)["params"]
    loss = lambda p, m=model: m.apply({"params": p}, x).sum()
    results.append((params, model.apply({"params": params}, x),
                    jax.grad(loss)(params)))
  assert (jax.tree_util.tree_structure(results[0][0]) ==
          jax.tree_util.tree_structure(results[1][0]))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["mlp", "cnn", "linear"])
@pytest.mark.parametrize("name,value", [("sequence", "pixels"),
                                        ("permute_seed", 3)])
def test_sequence_settings_belong_to_the_recurrent_models(model, name, value):
  with pytest.raises(UserError) as e:
    models.get_config(model, **{name: value})
  assert str(e.value) == (f"--{name} is a setting of --model=rnn/lstm/gru, not "
                          f"of --model={model}; leave it out")


def test_unknown_sequences_and_seeds_are_one_line_errors():
  with pytest.raises(UserError, match=re.escape(
      "flag --sequence=columns: value should be one of <rows|pixels|permuted>")
                     ) as e:
    models.get_config("lstm", sequence="columns")
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match=re.escape(
      "flag --permute_seed=-1: -1 is not an integer in the range "
      "[0, 4294967295]")):
    models.get_config("lstm", sequence="permuted", permute_seed=-1)


def test_a_run_folder_keeps_its_sequence_settings_with_the_model():
  """config.json keys of the recurrent models only; read back as such."""
  config = models.get_config("lstm", "permuted", permute_seed=4)
  record = config.to_dict()
  assert record["sequence"] == "permuted" and record["permute_seed"] == 4
  assert "sequence" not in models.get_config("mlp").to_dict()
  assert models.from_dict(json.loads(config.to_json())) == config


@pytest.mark.slow
def test_permuted_run_records_its_order_and_tests_with_it(prepared, tmp_path):
  """The run folder records the order; the model loaded back reads the test
  split in it, as the run did."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=8, epochs=1, batch_size=100, report=False,
                             analyses=False,
                             val_fraction=0.0, tensorboard=False,
                             mnist_dir=mnist_dir, data_dir=data_dir)
  final = rundir_run.train_and_evaluate(config, workdir, stream=io.StringIO())
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = json.load(f)["config"]
  assert recorded["sequence"] == "permuted" and recorded["permute_seed"] == 5
  order = np.load(os.path.join(workdir, record_lib.PERMUTATION_FILE))
  np.testing.assert_array_equal(order, recurrent.permutation(5))

  run = run_lib.load_run(workdir)
  assert (run.model.sequence, run.model.permute_seed) == ("permuted", 5)
  test = pipeline.load(config).test
  # Permute the raw pixels by hand, then read them as plain pixel sequences.
  images = np.asarray(test.images)
  permuted = images.reshape(-1, 784)[:, order].reshape(-1, 28, 28, 1)
  pixels = models.get("gru").stock(config.replace(sequence="pixels"))
  logits = run_lib.logits(pixels.apply, run.variables, permuted)
  accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(test.labels)))
  assert accuracy == pytest.approx(final["test_accuracy"])
  assert run.evaluate(images, test.labels)["accuracy"] == pytest.approx(accuracy)
  # --mode=report reads the test images in the run's order too.
  assert rundir_run.rewrite_report(workdir)["accuracy"] == pytest.approx(accuracy)

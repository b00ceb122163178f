"""Row, pixel and permuted sequences: settings of the recurrent models, read
by the models themselves from raw images."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.models import recurrent
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import record as record_lib
from mnist_jax import modes as rundir_run


RECURRENT = [n for n, s in models.MODELS.items() if s.module is recurrent.Recurrent]


def _images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)


@pytest.mark.parametrize("seq,shape", [("rows", (3, 28, 28)),
                                       ("pixels", (3, 784, 1)),
                                       ("permuted", (3, 784, 1))])
def test_sequences_read_every_pixel_in_their_order(seq, shape):
  """In [0, 1]: rows and pixels row-major, permuted in the order its seed
  fixes (a permutation of the 784, another for another seed)."""
  images = _images()
  x = np.asarray(recurrent.as_sequence(jnp.asarray(images), seq, 7))
  assert x.shape == shape and x.dtype == np.float32
  order = (recurrent.permutation(7) if seq == "permuted" else np.arange(784))
  np.testing.assert_allclose(x.reshape(3, -1), images.reshape(3, -1)[
      :, order] / 255, rtol=1e-6)
  np.testing.assert_array_equal(np.sort(order), np.arange(784))
  np.testing.assert_array_equal(recurrent.permutation(7),
                                recurrent.permutation(7))  # Fixed by its seed.
  assert not np.array_equal(recurrent.permutation(8), recurrent.permutation(7))


@pytest.mark.parametrize("cell", RECURRENT)
def test_the_sequence_and_its_seed_are_the_modules_and_the_run_folders(cell):
  """Attributes of the module (the presets name them), config.json keys read
  back as such (the recurrent models' only: test_hparams.py)."""
  config = models.get_config(cell, "seed", sequence="permuted", permute_seed=9)
  module = models.get(cell).stock(config)
  assert (module.sequence, module.permute_seed) == ("permuted", 9)
  for preset in ("pixels", "permuted"):
    assert models.get_config(cell, preset).sequence == preset
  assert models.get_config(cell).sequence == "rows"  # The module's default.
  assert models.from_dict(json.loads(config.to_json())) == config


def test_the_permutation_is_the_models_own():
  """A permuted model on raw images computes the pixel model on images
  permuted by hand."""
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=4)
  permuted = models.get("gru").stock(config)
  pixels = models.get("gru").stock(config.replace(sequence="pixels"))
  images = _images(2)
  variables = permuted.init(jax.random.key(0), jnp.asarray(images))
  by_hand = images.reshape(2, -1)[:, recurrent.permutation(5)].reshape(
      2, 28, 28, 1)
  np.testing.assert_allclose(permuted.apply(variables, images),
                             pixels.apply(variables, by_hand), rtol=1e-5,
                             atol=1e-6)


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


@pytest.mark.slow
def test_permuted_run_records_its_order_and_tests_with_it(prepared, tmp_path):
  """The run folder records the order; the model loaded back reads the test
  split in it, as the run did (the order is the model's own: above)."""
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
  accuracy = run.evaluate(test.images, test.labels)["accuracy"]
  assert accuracy == pytest.approx(final["test_accuracy"])
  # --mode=report reads the test images in the run's order too.
  assert rundir_run.rewrite_report(workdir)["accuracy"] == pytest.approx(accuracy)

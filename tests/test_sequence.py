"""Row, pixel and permuted sequences for the recurrent models."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.data import views
from mnist_jax.errors import UserError
from mnist_jax.results import run
from mnist_jax.training import train


def _images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


@pytest.mark.parametrize("seq,shape", [("rows", (3, 28, 28)),
                                       ("pixels", (3, 784, 1)),
                                       ("permuted", (3, 784, 1))])
def test_view_shapes(seq, shape):
  config = models.get_config("lstm", sequence=seq)
  assert views.to_view(_images(), models.input_view(config)).shape == shape


def test_pixels_are_row_major_and_permuted_reorders_them():
  images = _images()
  pixels = np.asarray(views.to_view(images, views.view("pixels")))[..., 0]
  np.testing.assert_array_equal(pixels, views.to_view(images, "flat"))
  order = views.permutation(7)
  permuted = np.asarray(views.to_view(images, views.view("permuted", 7)))[..., 0]
  np.testing.assert_array_equal(permuted, pixels[:, order])


def test_permutation_is_fixed_by_its_seed():
  a, b, c = views.permutation(3), views.permutation(3), views.permutation(4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(np.sort(a), np.arange(784))
  assert not np.array_equal(a, np.arange(784))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_and_bidirectional_cells_read_pixels(cell, bidirectional):
  config = models.get_config(cell, sequence="permuted", hidden=4, num_layers=2,
                             bidirectional=bidirectional)
  model = models.build(config)
  x = views.to_view(_images(), models.input_view(config))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  assert model.apply({"params": params}, x).shape == (3, 10)


@pytest.mark.slow
def test_remat_keeps_parameters_outputs_and_gradients():
  x = views.to_view(_images(), views.view("pixels"))
  results = []
  for remat in (False, True):
    config = models.get_config("lstm", sequence="pixels", hidden=4,
                               num_layers=2, bidirectional=True, remat=remat)
    model = models.build(config)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    loss = lambda p, m=model: m.apply({"params": p}, x).sum()
    results.append((params, model.apply({"params": params}, x),
                    jax.grad(loss)(params)))
  assert (jax.tree_util.tree_structure(results[0][0]) ==
          jax.tree_util.tree_structure(results[1][0]))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sequence_is_only_for_models_reading_rows():
  with pytest.raises(UserError, match=r"read an image as a sequence \(rnn, "
                     r"lstm, gru\), not to mlp"):
    models.get_config("mlp", sequence="pixels")
  with pytest.raises(UserError, match="--sequence"):
    models.get_config("lstm", sequence="columns")


@pytest.mark.slow
def test_permuted_run_records_its_order_and_tests_with_it(prepared, tmp_path):
  """The test split is read in the order saved in the run folder."""
  from mnist_jax.rundir import checkpoints  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  config = models.get_config("gru", sequence="permuted", permute_seed=5,
                             hidden=8, epochs=1, batch_size=100,
                             val_fraction=0.0, mnist_dir=mnist_dir,
                             data_dir=data_dir)
  final = train.train_and_evaluate(config, workdir, stream=io.StringIO())
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = json.load(f)["config"]
  assert recorded["sequence"] == "permuted" and recorded["permute_seed"] == 5
  order = np.load(os.path.join(workdir, views.PERMUTATION_FILE))
  np.testing.assert_array_equal(order, views.permutation(5))

  model = models.build(config)
  template = train.create_train_state(jax.random.PRNGKey(0), config, model, 6)
  state, _ = checkpoints.Checkpointer(workdir, read_only=True).restore(template)
  test = pipeline.load(config).test
  # Permute the raw pixels by hand, then read them as plain pixel sequences.
  permuted = np.asarray(test.images).reshape(-1, 28, 28)
  permuted = permuted.reshape(-1, 784)[:, order].reshape(-1, 28, 28)
  x = views.to_view(permuted, views.view("pixels"))
  logits = model.apply({"params": state.params}, jnp.asarray(x))
  accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(test.labels)))
  assert accuracy == pytest.approx(final["test_accuracy"])
  # --mode=report reads the test images in the run's order too.
  assert run.rewrite_report(workdir)["accuracy"] == pytest.approx(accuracy)

"""A dataset of another shape declared in datasets.py goes through the same
builder, models, report and predict (MNIST's IDX-format sisters: their
names and files, test_data.py; their classes, test_classes.py)."""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest

from conftest import one_per_module_class, write_idx
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.models import recurrent
from mnist_jax.results import run as run_lib
from mnist_jax import modes


# A dataset of another shape, declared here: 16x12 images, 3 classes (a bar
# across rows 2-5, 6-9 or 10-13). It replaces kmnist's declaration, as
# --dataset's choices are read when config.py is imported.
SHAPED = datasets.DatasetInfo(  # Bars, 16x12, 3 classes.
    "kmnist", "1.0.0", "", ("top", "middle", "bottom"), (16, 12, 1))
SMALL = dict(mlp_hidden=(8,), cnn_features=(4,), cnn_dense=8, hidden=4)
# The LSTM reads the image's pixels; the MLP trains two seeds with no
# validation split (the report shows the first, and their ensemble).
EXTRA = {"lstm": dict(sequence="pixels"), "mlp": dict(num_seeds=2,
                                                      val_fraction=0.0)}


def _bars(n, seed):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  images = rng.integers(0, 40, (n, 16, 12)).astype(np.uint8)
  for i, label in enumerate(labels):
    images[i, 2 + 4 * label:6 + 4 * label, 1:11] = 255
  return images, labels


def test_the_dense_models_count_the_declared_images_pixels(monkeypatch):
  """Their one-line description: the dataset's pixels, not MNIST's 784."""
  monkeypatch.setitem(datasets.DATASETS, SHAPED.name, SHAPED)
  describe = lambda model, **values: models.get(model).describe(
      models.get_config(model, "seed", dataset=SHAPED.name, **values))
  pixels = int(np.prod(SHAPED.image_shape))
  assert describe("linear") == f"Dense(3) on the {pixels} pixels"
  assert describe("mlp", mlp_hidden=(8,)).startswith(f"{pixels}-8-3, ReLU")


# A model of each module class (a dataset's shape reaches the module, not
# its cell), and the LSTM.
@pytest.mark.parametrize("model,extra", [
    pytest.param(m, EXTRA.get(m, {}), marks=pytest.mark.slow)
    for m in [*one_per_module_class(), "lstm"]])
def test_a_dataset_of_another_shape_trains_reports_and_predicts(
    model, extra, tmp_path, monkeypatch):
  """The declaration alone: the model, its check, the report with every
  analysis, and predict (a picture made the dataset's size) follow it (the
  kernels' check on one batch of the dataset's shape: seconds, left out)."""
  monkeypatch.setitem(datasets.DATASETS, SHAPED.name, SHAPED)
  folder = tmp_path / "idx"
  folder.mkdir()
  for part, n, seed in (("train", 120, 0), ("test", 60, 1)):
    images, labels = _bars(n, seed)
    write_idx(str(folder / SHAPED.file_names[f"{part}_images"]), images)
    write_idx(str(folder / SHAPED.file_names[f"{part}_labels"]), labels)
  workdir = str(tmp_path / "run")
  config = models.get_config(
      model, "seed", dataset=SHAPED.name, mnist_dir=str(folder),
      data_dir=str(tmp_path / "tfds"), workdir=workdir, epochs=1,
      batch_size=20, tensorboard=False, impl="stock", **{
          k: v for k, v in {"val_fraction": 0.25, **SMALL, **extra}.items()
          if k in models.get(model).settings or k in config_lib.FIELDS})
  final = modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  assert final["test_examples"] == 60
  with open(os.path.join(workdir, "report.md")) as f:
    assert "## What the model learned" in f.read()
  sequence = issubclass(models.get(model).module, recurrent.Recurrent)
  for name in ("robustness", "attributions", "features_pca", "reliability",
               *["reading"] * sequence):
    assert os.path.exists(os.path.join(workdir, "analysis", name + ".png"))
  with open(os.path.join(workdir, "analysis", "summary.json")) as f:
    assert json.load(f)["names"] == list(SHAPED.class_names)
  picture = np.zeros((56, 56), np.uint8)
  picture[20:28, 8:48] = 255
  Image.fromarray(picture).save(tmp_path / "bar.png")
  out = io.StringIO()
  assert run_lib.print_predictions(workdir, [str(tmp_path / "bar.png")],
                                   as_json=True, out=out) == 0
  assert len(json.loads(out.getvalue())["probabilities"]) == 3
  loaded = run_lib.load_run(workdir)
  assert loaded.logits(_bars(5, 2)[0]).shape == (5, 3)
  assert loaded.predict(_bars(1, 2)[0][0]) in range(3)

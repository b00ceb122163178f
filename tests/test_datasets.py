"""MNIST's IDX-format sisters go through the same builder, models and plots."""

import io
import os

import pytest

from tests.conftest import write_idx_dir
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.rundir import run


@pytest.mark.slow
@pytest.mark.parametrize("dataset,model,extra", [
    ("mnist", "cnn", dict(cnn_features=(4,), cnn_dense=8, augment=True)),
    ("fashion_mnist", "lstm", dict(hidden=4, sequence="pixels")),
    ("kmnist", "mlp", dict(mlp_hidden=(8,), num_seeds=2)),
])
def test_each_dataset_prepares_trains_and_plots(dataset, model, extra, tmp_path):
  idx_dir = write_idx_dir(tmp_path / "idx", n_train=300, n_test=100, seed=3)
  data_dir = str(tmp_path / "tfds")
  config = models.get_config(model, dataset=dataset, mnist_dir=idx_dir,
                             data_dir=data_dir, epochs=1, batch_size=100,
                             val_fraction=0.0, **extra)
  loaded = pipeline.load(config)
  assert loaded.class_names == tuple(datasets.class_names(dataset))
  assert len(loaded.train) == 300 and len(loaded.test) == 100
  # Prepared under the dataset's own name, beside any other dataset.
  assert os.path.isdir(os.path.join(data_dir, dataset, "3.0.1"))
  workdir = str(tmp_path / "run")
  final = run.train_and_evaluate(config, workdir, stream=io.StringIO())
  assert final["test_examples"] == 100
  assert os.path.getsize(os.path.join(workdir, "learning_curves.png")) > 0


def test_sister_datasets_name_their_classes():
  assert datasets.class_names("fashion_mnist")[0] == "T-shirt/top"
  assert datasets.class_names("kmnist")[1] == "ki"
  assert datasets.class_names("mnist") == [str(i) for i in range(10)]


def test_every_model_has_a_valid_best_preset():
  for name in models.MODELS:
    config = models.get_config(name, "best")
    assert config.preset == "best"

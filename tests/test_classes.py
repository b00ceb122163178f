"""Datasets of other than 10 classes: EMNIST letters (26) and balanced (47).
The class count, image shape and class names come from datasets.py: the IDX
reader, the download, every model's output layer and the report follow."""

import csv
import types

import jax
import numpy as np
import pytest

from conftest import synthetic_digits, write_idx, write_idx_dir
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.data import idx
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.results import report

EMNIST = ("emnist_letters", "emnist_balanced")


@pytest.fixture(scope="module")
def emnist(tmp_path_factory):
  """{dataset: (mnist_dir, data_dir)}: synthetic EMNIST sets, prepared."""
  out = {}
  for name in EMNIST:
    folder = tmp_path_factory.mktemp(name)
    mnist_dir = write_idx_dir(folder / "idx", n_train=96, n_test=48, seed=5,
                              dataset=name)
    pipeline.prepare(name, str(folder / "tfds"), mnist_dir)
    out[name] = (mnist_dir, str(folder / "tfds"))
  return out


def test_datasets_declare_their_class_names():
  """As each dataset publishes them (EMNIST's read upright: below)."""
  letters, balanced = (datasets.get(name) for name in EMNIST)
  assert letters.num_classes == 26 and letters.class_names[0] == "A"
  assert "".join(balanced.class_names[:11] + balanced.class_names[36:]) == (
      "0123456789Aabdefghnqrt")
  assert datasets.get("fashion_mnist").class_names[0] == "T-shirt/top"
  assert datasets.get("kmnist").class_names[1] == "ki"
  assert datasets.get("mnist").class_names == tuple(map(str, range(10)))


@pytest.mark.parametrize("dataset,label,says", [
    ("emnist_letters", 0, "labels must be 1-26"),
    ("emnist_letters", 27, "labels must be 1-26"),
    ("emnist_balanced", 47, "has a label 47; labels must be 0-46 "
     r"\(emnist_balanced\)$"),
    ("emnist_letters", 26, None), ("emnist_balanced", 26, None),
    ("mnist", 9, None)])
def test_the_idx_reader_follows_the_dataset(tmp_path, dataset, label, says):
  """Labels outside the dataset's are refused in one line (fewer labels than
  images: test_refusals.py); EMNIST's images read upright (row 5,
  column 0 here), its letters labelled from 0; MNIST's read as stored."""
  images = np.zeros((2, 28, 28), np.uint8)
  images[:, 0, 5] = 255
  write_idx(str(tmp_path / "x"), images)
  write_idx(str(tmp_path / "y"), np.array([1, label], np.uint8))
  read = lambda: idx.read_pair(str(tmp_path / "x"), str(tmp_path / "y"),
                               datasets.get(dataset))
  if says:
    with pytest.raises(idx.IdxError, match=says) as e:
      read()
    assert "\n" not in str(e.value)
    return
  images, labels = read()
  first = datasets.get(dataset).first_label
  assert labels.tolist() == [1 - first, label - first]
  assert labels.dtype == np.int32 and images.sum() == 2 * 255
  assert images[:, *((5, 0) if dataset != "mnist" else (0, 5)), 0].tolist() == [
      255, 255]


def test_downloads_are_checked_against_recorded_checksums(tmp_path,
                                                          monkeypatch):
  """Every declared download has a recorded checksum (a download checked:
  test_data.py); one without is refused, nothing written."""
  published = pipeline._published()  # pylint: disable=protected-access
  for name in datasets.DATASETS:
    assert set(pipeline.download_urls(name)) <= set(published), name
  info = datasets.DatasetInfo("unchecked", "1.0.0", "https://example.invalid/x/")
  monkeypatch.setitem(datasets.DATASETS, "unchecked", info)
  with pytest.raises(UserError, match="no checksum of https://example.invalid/x/"
                     "train-images-idx3-ubyte.gz is recorded"):
    pipeline.prepare("unchecked", str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds" / "unchecked").exists()


# Each model at one class count, alternating (26, 47, 26...).
@pytest.mark.parametrize("model,dataset", [
    (model, EMNIST[i % 2]) for i, model in enumerate(models.MODELS)])
def test_every_model_has_a_logit_per_class(emnist, dataset, model):
  """Prepared, the split keeps the dataset's classes, upright (each image
  lights its label's cell of the 7x7 grid); the model has a logit per class
  (traced; trained at 3 classes: test_everyday_changes.py's colour dataset)."""
  mnist_dir, data_dir = emnist[dataset]
  config = models.get_config(model, "seed", dataset=dataset, batch_size=16,
                             mnist_dir=mnist_dir, data_dir=data_dir,
                             val_fraction=0.25, impl="stock")
  data, k = pipeline.load(config), datasets.get(dataset).num_classes
  assert data.class_names == datasets.get(dataset).class_names
  assert (len(data.train), len(data.val), len(data.test)) == (72, 24, 48)
  cells = data.test.images.reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4))
  np.testing.assert_array_equal(cells.reshape(-1, 49).argmax(-1),
                                data.test.labels)
  module, _ = models.build(config)
  variables = jax.eval_shape(module.init, jax.random.key(0),
                             data.test.images[:1])
  assert jax.eval_shape(module.apply, variables, data.test.images).shape == (
      len(data.test), k)


@pytest.mark.slow
def test_report_at_47_classes_names_every_class(tmp_path):
  info = datasets.get("emnist_balanced")
  images, labels = synthetic_digits(94, seed=1, num_classes=47)
  logits = np.eye(47, dtype=np.float32)[labels] * 5
  logits[0] = np.eye(47)[(labels[0] + 1) % 47] * 5  # One mistake.
  config = models.get_config("linear", dataset="emnist_balanced",
                             analyses=False)
  run = types.SimpleNamespace(config=config, seeds=(0,),  # Logits only.
                              logits=lambda x, batch_size=None: logits)
  test = pipeline.Split(images, labels.astype(np.int32))
  out = report.write(str(tmp_path), run, test, info.class_names)
  assert out["confusion"].shape == (47, 47) and out["accuracy"] == 93 / 94
  with open(tmp_path / "confusion_matrix.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["true\\predicted", *info.class_names] and len(rows) == 48
  with open(tmp_path / "per_class.csv") as f:
    assert [row[1] for row in csv.reader(f)][1:] == list(info.class_names)
  text = (tmp_path / "report.md").read_text()
  assert "| t | 2 |" in text and "| Z | 2 |" in text
  assert [(p["true"], p["predicted"]) for p in report.confused_pairs(
      out["confusion"])] == [(labels[0], (labels[0] + 1) % 47)]

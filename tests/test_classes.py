"""Datasets of other than 10 classes: EMNIST letters (26) and balanced (47).

The class count, image shape and class names come from datasets.py: the IDX
reader, the download, every model's output layer and the report follow.
"""

import csv
import json
import os
import re
import subprocess
import sys

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import synthetic_classes
from tests.conftest import write_idx, write_idx_dir
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.data import idx
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.results import report
from mnist_jax import optim
from mnist_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMNIST = ("emnist_letters", "emnist_balanced")
# Each model at its smallest, so that a step compiles in about a second.
TINY = {"linear": {}, "mlp": dict(mlp_hidden=(8,)),
        "cnn": dict(cnn_features=(4,), cnn_dense=8),
        "rnn": dict(hidden=4), "lstm": dict(hidden=4), "gru": dict(hidden=4)}


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


def test_emnist_declares_its_classes():
  letters, balanced = (datasets.get(name) for name in EMNIST)
  assert letters.num_classes == 26 and letters.class_names[0] == "A"
  assert balanced.num_classes == 47
  assert balanced.class_names[:11] == tuple("0123456789A")
  assert "".join(balanced.class_names[36:]) == "abdefghnqrt"
  assert letters.image_shape == balanced.image_shape == (28, 28, 1)


def test_letters_labels_start_at_zero_and_images_read_upright(tmp_path):
  images = np.zeros((3, 28, 28), np.uint8)
  images[:, 0, 5] = 255  # Stored transposed: upright, this is row 5, column 0.
  write_idx(str(tmp_path / "x"), images)
  write_idx(str(tmp_path / "y"), np.array([1, 2, 26], np.uint8))
  read, labels = idx.read_pair(str(tmp_path / "x"), str(tmp_path / "y"),
                               datasets.get("emnist_letters"))
  assert labels.tolist() == [0, 1, 25] and labels.dtype == np.int32
  assert read[:, 5, 0, 0].tolist() == [255] * 3 and read.sum() == 3 * 255
  # Balanced is transposed too, but its labels start at 0.
  read, labels = idx.read_pair(str(tmp_path / "x"), str(tmp_path / "y"),
                               datasets.get("emnist_balanced"))
  assert labels.tolist() == [1, 2, 26] and read[:, 5, 0, 0].sum() == 3 * 255
  # MNIST's files are read as stored.
  write_idx(str(tmp_path / "digits"), np.array([1, 2, 9], np.uint8))
  read, labels = idx.read_pair(str(tmp_path / "x"), str(tmp_path / "digits"))
  assert read[:, 0, 5, 0].tolist() == [255] * 3 and labels.tolist() == [1, 2, 9]


@pytest.mark.parametrize("dataset,label,says", [
    ("emnist_letters", 0, "labels must be 1-26"),
    ("emnist_letters", 27, "labels must be 1-26"),
    ("emnist_balanced", 47, "labels must be 0-46"),
    ("mnist", 10, "labels must be 0-9"),
])
def test_labels_outside_the_dataset_are_refused(tmp_path, dataset, label, says):
  write_idx(str(tmp_path / "x"), np.zeros((2, 28, 28), np.uint8))
  write_idx(str(tmp_path / "y"), np.array([1, label], np.uint8))
  with pytest.raises(idx.IdxError, match=says):
    idx.read_pair(str(tmp_path / "x"), str(tmp_path / "y"),
                  datasets.get(dataset))


def test_emnist_file_names_are_named_when_missing(tmp_path):
  write_idx_dir(tmp_path, n_train=8, n_test=8)  # MNIST's names, not EMNIST's.
  with pytest.raises(idx.IdxError, match=re.escape(
      "emnist-balanced-train-images-idx3-ubyte[.gz] is missing")):
    pipeline.find_idx_files(str(tmp_path), "emnist_balanced")


def test_every_declared_download_has_a_recorded_checksum():
  """Four .gz files, or EMNIST's one archive (its download: test_data.py)."""
  assert pipeline.download_urls("emnist_letters") == [datasets.EMNIST_URL]
  published = pipeline._published()  # pylint: disable=protected-access
  for name in datasets.DATASETS:
    assert set(pipeline.download_urls(name)) <= set(published), name


def test_a_download_without_a_recorded_checksum_is_refused(tmp_path,
                                                           monkeypatch):
  info = datasets.DatasetInfo("unchecked", "1.0.0",
                              "https://example.invalid/x/")
  monkeypatch.setitem(datasets.DATASETS, "unchecked", info)
  with pytest.raises(UserError, match="no checksum of https://example.invalid/x/"
                     "train-images-idx3-ubyte.gz is recorded"):
    pipeline.prepare("unchecked", str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds" / "unchecked").exists()


@pytest.mark.parametrize("dataset", EMNIST)
def test_prepared_emnist_keeps_its_classes(emnist, dataset):
  mnist_dir, data_dir = emnist[dataset]
  config = models.get_config("linear", dataset=dataset, mnist_dir=mnist_dir,
                             data_dir=data_dir, val_fraction=0.25)
  data = pipeline.load(config)
  k = datasets.num_classes(dataset)
  assert data.class_names == datasets.get(dataset).class_names
  assert len(data.train) == 72 and len(data.val) == 24 and len(data.test) == 48
  assert set(np.unique(data.test.labels)) <= set(range(k))
  # Upright and labelled from 0 as synthetic_classes made them: the cell of
  # the 7x7 grid each image lights up is its label's (in tfds's order).
  cells = data.test.images.reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4))
  np.testing.assert_array_equal(cells.reshape(-1, 49).argmax(-1),
                                data.test.labels)


# Each model at one class count, alternating (26, 47, 26...); every model at
# a third (3 classes, 16x12 images): test_datasets.py.
@pytest.mark.parametrize("model,dataset", [
    (model, EMNIST[i % 2]) for i, model in enumerate(sorted(TINY))])
def test_every_model_trains_a_step_and_evaluates(emnist, dataset, model):
  assert set(TINY) == set(models.MODELS)
  mnist_dir, data_dir = emnist[dataset]
  config = models.get_config(model, "seed", dataset=dataset, batch_size=16,
                             mnist_dir=mnist_dir, data_dir=data_dir,
                             val_fraction=0.0, impl="stock", **TINY[model])
  data = pipeline.load(config)
  k = datasets.num_classes(dataset)
  module, _ = models.build(config)
  assert module.num_classes == k
  state = train.create_train_state(jax.random.key(0), module,
                                   optim.make_optimizer(config, 1),
                                   data.train.images.shape[1:])
  assert state.params["out"]["kernel"].shape[-1] == k
  test = data.test
  train_batch = {"image": jnp.asarray(data.train.images[:16]),
                 "label": jnp.asarray(data.train.labels[:16]),
                 "valid": jnp.asarray(True)}
  test_images, test_labels = jnp.asarray(test.images), jnp.asarray(test.labels)

  @jax.jit  # One program: a compile per model and class count.
  def step_and_evaluate(state):
    state, train_sums = train.train_step(state, train_batch)
    test_sums = train.evaluate(state, test_images, test_labels,
                               batch_size=len(test))
    logits = state.apply_fn(state.variables, test_images)
    return train_sums, test_sums, logits

  train_sums, test_sums, logits = step_and_evaluate(state)
  assert int(train_sums["count"]) == 16
  assert np.isfinite(float(train_sums["loss"]))
  assert int(test_sums["count"]) == len(test) and logits.shape == (len(test), k)
  assert float(test_sums["correct"]) == float(
      np.sum(np.argmax(logits, -1) == test.labels))


@pytest.mark.slow
def test_report_at_47_classes_names_every_class(tmp_path):
  info = datasets.get("emnist_balanced")
  images, labels = synthetic_classes(94, 47, seed=1)
  logits = np.eye(47, dtype=np.float32)[labels] * 5
  logits[0] = np.eye(47)[(labels[0] + 1) % 47] * 5  # One mistake.
  config = models.get_config("linear", dataset="emnist_balanced",
                             analyses=False)  # A fake Run: logits only.
  # A trained model whose test logits are these (report.write asks a Run).
  run = types.SimpleNamespace(config=config, seeds=(0,),
                              logits=lambda x, batch_size=None: logits)
  test = pipeline.Split(images, labels.astype(np.int32))
  out = report.write(str(tmp_path), run, test, info.class_names)
  assert out["confusion"].shape == (47, 47) and out["accuracy"] == 93 / 94
  with open(tmp_path / "confusion_matrix.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["true\\predicted", *info.class_names] and len(rows) == 48
  with open(tmp_path / "per_class.csv") as f:
    names = [row[1] for row in csv.reader(f)][1:]
  assert names == list(info.class_names)
  text = (tmp_path / "report.md").read_text()
  assert "| t | 2 |" in text and "| Z | 2 |" in text
  pairs = report.confused_pairs(out["confusion"])
  assert [(info.class_names[p["true"]], info.class_names[p["predicted"]])
          for p in pairs] == [(info.class_names[labels[0]],
                               info.class_names[(labels[0] + 1) % 47])]


def test_old_run_config_without_new_fields_says_its_classes():
  """A config.json is flat and names its dataset; nothing else is stored."""
  config = models.get_config("mlp", dataset="emnist_letters")
  record = json.loads(config.to_json())
  assert not {"num_classes", "class_names", "image_shape"} & set(record)
  assert models.build(config)[0].num_classes == 26
  assert models.get(config.model).describe(config).startswith("784-1024-1024-26")


@pytest.mark.slow
def test_launch_trains_and_predicts_on_26_classes(tmp_path):
  mnist_dir = write_idx_dir(tmp_path / "idx", n_train=200, n_test=52, seed=2,
                            dataset="emnist_letters")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *flags: subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), *flags],
      capture_output=True, text=True, env=env, cwd=str(tmp_path), check=False)
  workdir = str(tmp_path / "run")
  done = run("--model=mlp", "--preset=seed", "--dataset=emnist_letters",
             "--epochs=1", "--mlp_hidden=16", f"--mnist_dir={mnist_dir}",
             f"--data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}")
  assert done.returncode in (0, 4), done.stderr  # 4: a run that did not learn.
  with open(os.path.join(workdir, "confusion_matrix.csv")) as f:
    assert next(csv.reader(f))[1:] == [chr(ord("A") + i) for i in range(26)]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  picture = np.zeros((28, 28), np.uint8)
  picture[8:20, 8:20] = 255
  Image.fromarray(picture).save(tmp_path / "letter.png")
  done = run("--mode=predict", f"--workdir={workdir}",
             f"--image={tmp_path / 'letter.png'}", "--json")
  assert done.returncode == 0, done.stderr
  record = json.loads(done.stdout)
  assert record["class"] == chr(ord("A") + record["digit"])
  assert len(record["probabilities"]) == 26

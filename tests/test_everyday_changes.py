"""The everyday research changes, each made as docs/design.md's "How to make
the everyday changes" shows it: one entry in the table that declares it. A
dataset of another shape (16 x 12 colour images of 3 classes), a model of a
new module class (a depthwise-separable CNN with its own flag), an
evaluation rule (a metric) and an optimizer, trained together in a run
folder on synthetic data, their flags, rows, report and records following.
"""

import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import write_idx
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import modes
from mnist_jax import optim
from mnist_jax.data import datasets
from mnist_jax.models import registry
from mnist_jax.training import metrics

# The dataset: its files are IDX images [N, 16, 12, 3]; class k lights
# channel k of a band of rows.
STRIPES = datasets.DatasetInfo(
    "stripes", "1.0.0", "", ("red", "green", "blue"), (16, 12, 3),
    train_size=240)


class SeparableCNN(nn.Module):
  """A depthwise 3x3 convolution per channel, a pointwise one to `width`
  channels, global average pooling, a Dense output."""
  OUTPUT = "out"
  width: int = 8
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images / 255.0
    channels = x.shape[-1]
    x = nn.Conv(channels, (3, 3), feature_group_count=channels,
                name="depthwise")(x)
    x = nn.relu(nn.Conv(self.width, (1, 1), name="pointwise")(x))
    return nn.Dense(self.num_classes, name=self.OUTPUT)(x.mean((1, 2)))


SEPARABLE = registry.ModelSpec(
    name="separable", module=SeparableCNN,
    describe=lambda c: f"depthwise 3x3, pointwise {c.separable_width}, "
                       "average pool, Dense",
    settings={"separable_width": config_lib.Setting(
        "width", "Channels of the pointwise convolution",
        parser=config_lib.WIDTH)},
    presets={"tuned": dict(epochs=4, batch_size=20, learning_rate=3e-2)})


def _top2(batch):
  top = jax.lax.top_k(batch.logits, 2)[1]
  hit = jnp.any(top == batch.labels[:, None], -1).astype(jnp.float32)
  return {"top2": jnp.sum(hit * batch.mask)}


TOP2 = metrics.Metric("top2", _top2, lambda s, n: float(s["top2"]) / n,
                      metrics.EVAL, tag="top2_accuracy",
                      label="top-2 accuracy", scale=100.0, digits=2, unit="%",
                      higher_is_better=True)
# The optimizer: Lion's update direction, no held numbers of its own.
LION = optim.Optimizer(lambda held: optax.scale_by_lion())


def _stripes(folder, seed):
  rng = np.random.default_rng(seed)
  for part, n in (("train", 240), ("test", 60)):
    labels = (np.arange(n) % 3).astype(np.uint8)
    images = rng.integers(0, 40, (n, 16, 12, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
      images[i, 4:12, :, k] = 230
    write_idx(str(folder / STRIPES.file_names[f"{part}_images"]), images)
    write_idx(str(folder / STRIPES.file_names[f"{part}_labels"]), labels)


def test_a_dataset_a_model_a_metric_and_an_optimizer_each_one_entry(
    tmp_path, monkeypatch):
  monkeypatch.setitem(datasets.DATASETS, STRIPES.name, STRIPES)
  monkeypatch.setitem(registry.MODELS, SEPARABLE.name, SEPARABLE)
  registry.register(SEPARABLE)  # Its flag, defined once.
  monkeypatch.setattr(metrics, "METRICS", metrics.METRICS + (TOP2,))
  monkeypatch.setitem(optim.OPTIMIZERS, "lion", LION)
  folder = tmp_path / "idx"
  folder.mkdir()
  _stripes(folder, 0)
  workdir = str(tmp_path / "run")
  config = models.get_config(
      "separable", dataset="stripes", optimizer="lion", separable_width=6,
      mnist_dir=str(folder), data_dir=str(tmp_path / "prepared"),
      workdir=workdir, val_fraction=0.25, analyses=False)
  final = modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  # The dataset's shape and classes reach the module and the report.
  assert final["test_examples"] == 60 and final["test_accuracy"] > 0.9
  assert "top-2 accuracy" in open(os.path.join(workdir, "report.md")).read()
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {"val_top2", "val_accuracy"} <= set(rows[0])
  assert final["test_top2"] == 1.0 and "train_top2" not in rows[0]
  settings = json.load(open(os.path.join(workdir, "config.json")))["config"]
  assert settings["optimizer"] == "lion" and settings["separable_width"] == 6
  assert settings["dataset"] == "stripes"
  # The stock models take the dataset as declared: the CNN convolves over its
  # three channels, the recurrent ones read rows of 12 x 3 values.
  images, key = jnp.zeros((2, 16, 12, 3), jnp.uint8), jax.random.key(0)
  cnn = models.get("cnn").stock(models.get_config(
      "cnn", "seed", dataset="stripes", cnn_features=(4,)))
  params = cnn.init(key, images)["params"]
  assert params["conv_0"]["kernel"].shape == (3, 3, 3, 4)
  gru = models.get("gru").stock(models.get_config(
      "gru", "seed", dataset="stripes", hidden=4))
  params = gru.init(key, images)["params"]
  assert params["gru_0"]["ir"]["kernel"].shape == (36, 4)
  assert gru.apply({"params": params}, images).shape == (2, 3)

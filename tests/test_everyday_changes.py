"""docs/design.md's everyday changes, made here in the files it names, reach
flags, sweeps, rows, the report, TensorBoard, compare.py, the analyses,
predict and the page. Each trains through the loop end to end: slow."""

import dataclasses
import io
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import one_per_module_class, train_core, write_idx
from experiments import compare
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import modes
from mnist_jax import optim
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import recurrent
from mnist_jax.models import registry
from mnist_jax.results import analysis
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve
from mnist_jax.training import metrics
from mnist_jax.training import train
from parallel_worker import Recorder
from tensorboard_helpers import multiplexer, scalars

pytestmark = pytest.mark.slow
TINY = dict(epochs=1, batch_size=32, val_fraction=0.1, tensorboard=False)


def add_field(monkeypatch, name, default, help_text, parser):
  """A Config field as a line of config.py declares it (`_field`): Config,
  FIELDS and SETTINGS as that line makes them."""
  field = config_lib._field(  # pylint: disable=protected-access
      default, help_text, config_lib.TRAINING, parser)
  config = dataclasses.make_dataclass(
      "Config", [(name, type(default), field)], bases=(config_lib.Config,),
      frozen=True)
  monkeypatch.setattr(config_lib, "Config", config)
  setting = field.metadata["setting"]
  monkeypatch.setitem(config_lib.FIELDS, name, setting)
  monkeypatch.setitem(config_lib.SETTINGS, name, setting)


def _data(prepared, **values):
  return {**prepared.settings, **TINY, **values}


def _run(config, workdir, stream=None):
  """The final row of `config`'s run in `workdir`, its lines to `stream`."""
  return modes.train_and_evaluate(config.replace(workdir=workdir), workdir,
                                  stream=stream or io.StringIO())


# A schedule with a number of its own: warm restarts (optim.py, and its
# flag in config.py).

def _warm_restarts(count, run, held):
  """SGDR (Loshchilov and Hutter, 2017): a cosine decay started again every
  `restart_epochs` epochs, a number the optimizer holds (sweepable)."""
  period = held["restart_epochs"] * run.steps_per_epoch
  return 0.5 * (1 + jnp.cos(jnp.pi * jnp.mod(count, period) / period))


def test_a_schedule_with_a_number_of_its_own(monkeypatch, prepared):
  monkeypatch.setattr(optim, "HYPERPARAMS",
                      (*optim.HYPERPARAMS, "restart_epochs"))
  monkeypatch.setitem(optim.SCHEDULES, "warm_restarts", _warm_restarts)
  add_field(monkeypatch, "restart_epochs", 1.0, "Epochs between restarts",
            config_lib.Number(0, open_low=True))
  config = models.get_config(
      "linear", "seed", schedule="warm_restarts", learning_rate=1e-2,
      sweep="restart_epochs=1,2", **_data(prepared, epochs=2))
  hooks = Recorder()
  train_core(config, pipeline.load(config), hooks)
  rates = [[m["learning_rate"] for m in row["members"]] for row in hooks.rows]
  # Restarted every epoch: each epoch ends at the peak; every second epoch:
  # half-way down its cosine, then at the peak again.
  np.testing.assert_allclose(rates, [[1e-2, 5e-3], [1e-2, 1e-2]], rtol=1e-5)


# A loss that mixes examples: mixup (train.py, and its flag in config.py).

def _mixup(forward, images, labels, key, mixup_alpha=0.2,
           label_smoothing=0.0):
  """mixup (Zhang et al., 2018): the batch mixed with itself shuffled by a
  Beta(alpha, alpha) weight, and its labels by the same weight."""
  weight_key, order_key = jax.random.split(key)
  lam = jax.random.beta(weight_key, mixup_alpha, mixup_alpha)
  order = jax.random.permutation(order_key, len(labels))
  logits, model_state = forward(lam * images + (1 - lam) * images[order])
  nll, own = train.cross_entropy(logits, labels, label_smoothing)
  _, other = train.cross_entropy(logits, labels[order], label_smoothing)
  return (lam * own + (1 - lam) * other).mean(), (logits, nll, model_state)


def test_a_loss_that_mixes_examples(monkeypatch, prepared):
  monkeypatch.setitem(train.LOSSES, "mixup", train.Loss(
      _mixup, reads=("mixup_alpha", "label_smoothing")))
  add_field(monkeypatch, "mixup_alpha", 0.2, "mixup's Beta(alpha, alpha)",
            config_lib.Number(0, open_low=True))
  config = models.get_config("mlp", "seed", loss="mixup", mlp_hidden=(8,),
                             sweep="mixup_alpha=0.2,1", **_data(prepared))
  hooks = Recorder()
  train_core(config, pipeline.load(config), hooks)
  first = hooks.rows[0]["members"]  # Each member mixes by its own alpha.
  assert first[0]["train_loss"] != first[1]["train_loss"]


# A metric (metrics.py): the report, TensorBoard, compare.py and the page.

def _top2(batch):
  top = jax.lax.top_k(batch.logits, 2)[1]
  hit = jnp.any(top == batch.labels[:, None], -1).astype(jnp.float32)
  return {"top2": jnp.sum(hit * batch.mask)}


TOP2 = metrics.Metric("top2", _top2, lambda s, n: float(s["top2"]) / n,
                      metrics.EVAL, tag="top2_accuracy",
                      label="top-2 accuracy", scale=100.0, digits=2, unit="%",
                      higher_is_better=True)


def test_a_metric_reaches_every_output(monkeypatch, prepared, tmp_path):
  monkeypatch.setattr(metrics, "METRICS", metrics.METRICS + (TOP2,))
  work = str(tmp_path / "run")
  config = models.get_config("mlp", "seed", **_data(
      prepared, mlp_hidden=(8,), tensorboard=True, analyses=False))
  final = _run(config, work)
  assert final["test_accuracy"] <= final["test_top2"] <= 1
  with open(os.path.join(work, "report.md")) as f:
    assert f"| Test top-2 accuracy | {100 * final['test_top2']:.2f}% |" in f.read()
  got = scalars(multiplexer(work), ".")
  assert got["top2_accuracy/test"] == [(1, pytest.approx(final["test_top2"]))]
  assert [step for step, v in got["top2_accuracy/val"] if v > 0] == [1]
  compare.compare([work], str(tmp_path / "compared"), log=lambda _: None)
  with open(tmp_path / "compared" / "comparison.md") as f:
    assert "test top-2 accuracy" in f.read()
  page = serve.Model(work, run_lib.load_run(work), final)
  assert ("top-2 accuracy",
          f"{100 * final['test_top2']:.2f}%") in page.info["metrics"]


# A reading order of the recurrent models: columns (recurrent.py). The
# analyses and the page ask the model how it reads.

def test_a_reading_order_the_analyses_and_the_page_follow(monkeypatch,
                                                           prepared, tmp_path):
  """On the stock layers (the kernels': test_kernels.py); the analyses' steps
  (units, logits after each), not each analysis (test_analysis.py)."""
  monkeypatch.setitem(recurrent.SEQUENCES, "columns", (
      "the {w} columns", lambda h, w, seed: recurrent.Reading(
          np.arange(h * w).reshape(h, w).T, ("column", "columns"), 1)))
  config = models.get_config("gru", "seed", sequence="columns", hidden=4,
                             impl="stock", **_data(prepared, analyses=False))
  assert models.get("gru").describe(config).startswith(
      "GRU(4) over the 28 columns")
  images = np.arange(2 * 28 * 28 * 1).reshape(2, 28, 28, 1) % 256
  x = recurrent.as_sequence(images, "columns")
  np.testing.assert_allclose(x[:, 3], images[:, :, 3, 0] / 255.0)
  work = str(tmp_path / "run")
  _run(config, work)
  run, module = run_lib.load_run(work), models.get("gru").stock(config)
  reads = analysis.reading_of(module, (28, 28, 1))
  np.testing.assert_array_equal(analysis.unit_of_pixel(reads, (28, 28, 1)),
                                np.tile(np.arange(28), (28, 1)))
  _, logits, steps = analysis.forward(module, run.variables, images, every=1)
  np.testing.assert_allclose(steps[:, -1], logits, rtol=1e-5, atol=1e-5)
  page = serve.Model(work, run)
  assert page.info["unit"] == ("column", "columns")
  digit = np.zeros((28, 28, 1))
  digit[5:20, 9:12] = 255  # Ink from column 9 on.
  answer = page.result(page.start(digit))
  assert len(answer["reading"]) == 28 and answer["first_ink"] == 9


# A dataset of colour images (datasets.py): a model of each module class (its
# shape reaches the module, not its cell) and the LSTM.

STRIPES = datasets.DatasetInfo(
    "stripes", "1.0.0", "", ("red", "green", "blue"), (16, 12, 3),
    train_size=240)
SMALL = dict(mlp_hidden=(8,), cnn_features=(4,), cnn_dense=8, hidden=4)
# The CNN learns it (its analyses of colour images: test_analysis.py); the
# LSTM reads its pixels; the MLP trains two seeds with no validation split
# (the first is shown).
EXTRA = {"cnn": dict(learning_rate=3e-2, analyses=False),
         "lstm": dict(sequence="pixels"),
         "mlp": dict(num_seeds=2, val_fraction=0.0)}
# The dense models' descriptions count its 16x12x3 pixels, not MNIST's 784.
DESCRIBED = {"linear": "Dense(3) on the 576 pixels", "mlp": "576-8-3, ReLU"}


def _stripes(folder, seed=0):
  """Class k lights channel k of a band of rows."""
  rng = np.random.default_rng(seed)
  for part, n in (("train", 240), ("test", 60)):
    labels = (np.arange(n) % 3).astype(np.uint8)
    images = rng.integers(0, 40, (n, 16, 12, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
      images[i, 4:12, :, k] = 230
    write_idx(str(folder / STRIPES.file_names[f"{part}_images"]), images)
    write_idx(str(folder / STRIPES.file_names[f"{part}_labels"]), labels)


@pytest.mark.parametrize("model", [*one_per_module_class(), "lstm"])
def test_a_colour_dataset_trains_predicts_a_picture_and_is_served(
    model, monkeypatch, tmp_path):
  """The declaration alone: the model (its description too), the report with
  every analysis, predict and the page follow it."""
  monkeypatch.setitem(datasets.DATASETS, STRIPES.name, STRIPES)
  folder = tmp_path / "idx"
  folder.mkdir()
  _stripes(folder)
  work = str(tmp_path / "run")
  values = {**TINY, "epochs": 2, "batch_size": 20, **SMALL,
            **EXTRA.get(model, {})}
  config = models.get_config(
      model, "seed", dataset=STRIPES.name, mnist_dir=str(folder),
      data_dir=str(tmp_path / "prepared"), **{
          k: v for k, v in values.items()
          if k in models.get(model).settings or k in config_lib.FIELDS})
  assert models.get(model).describe(config).startswith(DESCRIBED.get(model, ""))
  said = io.StringIO()
  final = _run(config, work, said)
  assert final["test_examples"] == 60
  if config.num_seeds > 1:  # No validation split: the first member is shown.
    assert re.search(r"\nchosen as the first \(no validation split to choose "
                     r"by\): seed=0; test accuracy .*; its 2 seeds ",
                     said.getvalue()), said.getvalue()
  assert model != "cnn" or final["test_accuracy"] > 0.9
  if config.analyses:
    with open(os.path.join(work, "report.md")) as f:
      assert "## What the model learned" in f.read()
    reads = models.get(model).module is recurrent.Recurrent
    for name in ("robustness", "attributions", "features_pca", "reliability",
                 *["reading"] * reads):
      assert os.path.exists(os.path.join(work, "analysis", name + ".png"))
    with open(os.path.join(work, "analysis", "summary.json")) as f:
      assert json.load(f)["names"] == list(STRIPES.class_names)
  picture = np.zeros((64, 48, 3), np.uint8)  # A green band, 4x the size.
  picture[16:48, :, 1] = 255
  Image.fromarray(picture).save(tmp_path / "green.png")
  run = run_lib.load_run(work)
  [said] = run_lib.predict_files(run, [str(tmp_path / "green.png")])
  assert said.image.shape == (16, 12, 3) and len(said.probabilities) == 3
  page = serve.Server(("127.0.0.1", 0), [serve.Model(work, run, final)])
  try:
    answer = page.answer((tmp_path / "green.png").read_bytes())
  finally:
    page.server_close()
  assert np.shape(answer["input"]) == (16, 12, 3)
  if model == "cnn":
    assert said.name == answer["runs"][0]["class"] == "green"


# A model of the CNN family (its module's file and registry.py).

class SeparableCNN(nn.Module):
  """A depthwise 3x3 convolution per channel, a pointwise one to `width`
  channels, a Dense output."""
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
    return nn.Dense(self.num_classes, name=self.OUTPUT)(
        x.reshape(x.shape[0], -1))


SEPARABLE = registry.ModelSpec(
    name="separable", module=SeparableCNN,
    describe=lambda c: f"depthwise 3x3, pointwise {c.separable_width}, "
                       "Dense",
    settings={"separable_width": config_lib.Setting(
        "width", "Channels of the pointwise convolution",
        parser=config_lib.WIDTH)},
    presets={"tuned": dict(epochs=3, batch_size=20, learning_rate=1e-2)})


def test_a_new_cnn_family_model(monkeypatch, prepared, tmp_path):
  """Its setting a flag and Config value, refused by another model (config.py
  unchanged); the analyses find its features (OUTPUT's input), no reading."""
  monkeypatch.setitem(registry.MODELS, SEPARABLE.name, SEPARABLE)
  registry.register(SEPARABLE)  # Its flag, defined once.
  with pytest.raises(UserError, match="setting of --model=separable, not of"):
    models.get_config("mlp", separable_width=6)
  work = str(tmp_path / "run")
  config = models.get_config("separable", separable_width="6", **_data(
      prepared, batch_size=20, analyses=False))
  final = _run(config, work)
  run = run_lib.load_run(work)
  module = models.get("separable").stock(run.config)
  images = np.zeros((2, 28, 28, 1), np.uint8)
  features, _, _ = analysis.forward(module, run.variables, images)
  assert features.shape == (2, 28 * 28 * 6)
  assert analysis.reading_of(module, (28, 28, 1)) is None
  page = serve.Model(work, run, final)
  assert page.info["describe"] == "depthwise 3x3, pointwise 6, Dense"

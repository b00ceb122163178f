"""--target_accuracy: stops once validation accuracy reaches it; test accuracy
never decides when a run stops, so without a validation split it is refused."""

import numpy as np

from conftest import train_core

from mnist_jax import models
from mnist_jax.data import pipeline
from parallel_worker import Recorder, dataset


def _config(**overrides):
  values = dict(mlp_hidden=(16,), dropout=0.0, batch_size=64, chunk_steps=3,
                learning_rate=3e-3, val_fraction=0.1, epochs=20,
                target_accuracy=0.3)
  return models.get_config("mlp", "seed", **{**values, **overrides})


def test_stops_once_validation_accuracy_reaches_it():
  """(Without a validation split it is refused: test_refusals.py; off, 0,
  it needs none.)"""
  _config(val_fraction=0.0, target_accuracy=0.0)
  hooks = Recorder()
  _, final = train_core(_config(), dataset(), hooks)
  epochs = [r["epoch"] for r in hooks.rows]
  assert final["epochs_run"] == epochs[-1] < 20
  assert epochs == list(range(1, epochs[-1] + 1))
  assert hooks.rows[-1]["val_accuracy"] >= 0.3
  assert all(r["val_accuracy"] < 0.3 for r in hooks.rows[:-1])
  assert hooks.lasts == [False] * (len(epochs) - 1) + [True]  # Saved there.
  assert final["time_to_target_s"] == hooks.rows[-1]["elapsed_s"]
  reached = [m for m in hooks.messages if m.startswith("reached")]
  assert len(reached) == 1 and reached[0].startswith(
      f"reached validation accuracy "
      f"{100 * hooks.rows[-1]['val_accuracy']:.2f}% >= 30.00% after epoch "
      f"{epochs[-1]} in ")
  assert final["test_examples"] == 203


def test_test_accuracy_never_stops_a_run():
  """Validation labels shuffled, the test split learnable: the run trains
  every epoch, however high its test accuracy."""
  data = dataset()
  labels = np.random.default_rng(0).permutation(np.asarray(data.val.labels))
  labels = (labels + 1) % 10  # No validation example keeps its class.
  data = pipeline.Dataset(data.train, pipeline.Split(data.val.images, labels),
                          data.test, data.class_names)
  hooks = Recorder()
  _, final = train_core(_config(epochs=3, target_accuracy=0.5), data, hooks)
  assert [r["epoch"] for r in hooks.rows] == [1, 2, 3]
  assert final["epochs_run"] == 3 and final["test_accuracy"] > 0.5
  assert all(r["val_accuracy"] < 0.5 for r in hooks.rows)
  assert "time_to_target_s" not in final
  assert not any(m.startswith("reached") for m in hooks.messages)

"""Tiny runs of loop.train_and_evaluate (the core; a run folder only to stop
and resume), in this process or in a child of N simulated CPU devices
(XLA_FLAGS must set them before JAX starts): python tests/parallel_worker.py
OUT.pickle SPECS.json, SPECS {label: run()'s keywords}, OUT {label: run()'s
result}."""

import io
import json
import os
import pickle
import signal
import sys
import tempfile
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np
import pytest

from conftest import synthetic_digits, train_core
from launch_helpers import child_env
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import control
from mnist_jax.training import devices
from mnist_jax.training import loop
from mnist_jax.training import population

# 540 training examples in 8 steps of 64 (chunks of 3), 60 validation and
# 203 test examples in batches of 50 (the last one partial).
COMMON = dict(batch_size=64, eval_batch_size=50, chunk_steps=3,
              val_fraction=0.1, seed=3)
N_TRAIN, N_TEST = 600, 203
# Small shapes of the registered models (another trains its seed preset's).
TINY = {"mlp": dict(mlp_hidden=(16,)), "rnn": dict(hidden=16),
        "cnn": dict(cnn_features=(4, 8), cnn_dense=16),
        "lstm": dict(hidden=16), "gru": dict(hidden=16, learning_rate=3e-2)}


def tiny(name, **extra):
  """With every random stream a step draws from (dropout, augmentation)."""
  dropout = {"dropout": 0.2} if "dropout" in registry.get(name).settings else {}
  return {**TINY.get(name, {}), "augment": True, **dropout, **extra}


def dataset():
  """A pipeline.Dataset of synthetic digits (conftest.synthetic_digits)."""
  images, labels = synthetic_digits(N_TRAIN, seed=3)
  test_images, test_labels = synthetic_digits(N_TEST, seed=4)
  return pipeline.split({"train_images": images,
                         "train_labels": labels.astype(np.int32),
                         "test_images": test_images,
                         "test_labels": test_labels.astype(np.int32)},
                        COMMON["val_fraction"])


def config(model, settings, parallel="none", epochs=1):
  settings = {k: tuple(v) if isinstance(v, list) else v  # From JSON.
              for k, v in {**COMMON, **settings}.items()}
  return models.get_config(model, "seed", epochs=epochs, parallel=parallel,
                           **settings)


class Recorder(loop.Hooks):
  """Keeps what the loop tells its hooks (record, rows, `last`s, messages,
  chunks)."""

  def __init__(self):
    self.record, self.rows, self.messages, self.chunks = None, [], [], []
    self.lasts = []

  def start(self, state, run):
    self.record = run.record()
    return state, loop.Start()

  def message(self, text):
    self.messages.append(text)

  def chunk(self, state, epoch, done, sums):
    self.chunks.append((epoch, done))

  def epoch(self, state, row, last):
    self.rows.append(row)
    self.lasts.append(last)


class Folder(modes.RunFolder):
  """The run folder's hooks (modes.py: its checkpoints, saved and restored),
  `kept` a Recorder of the run; `at` ("epoch": after epoch 1; "chunk": after
  the first chunk of epoch 2): stopped there as by SIGTERM, else resumed."""

  def __init__(self, workdir, config, at=None):  # pylint: disable=redefined-outer-name
    super().__init__(workdir, config.replace(tensorboard=False), io.StringIO(),
                     types.SimpleNamespace(signum=None, close=lambda: None),
                     existing=at is None, overwrite=False, data_time=0.0)
    self.at, self.kept = at, Recorder()

  def start(self, state, run):
    self.kept.start(state, run)
    return super().start(state, run)

  def message(self, text):
    self.kept.message(text)
    super().message(text)

  def chunk(self, state, epoch, done, sums):
    self.kept.chunk(state, epoch, done, sums)
    if self.at == "chunk" and (epoch, done) == (2, 3):
      self.stop.signum = signal.SIGTERM
    super().chunk(state, epoch, done, sums)

  def epoch(self, state, row, last):
    self.kept.epoch(state, row, last)
    if self.at == "epoch" and row["epoch"] == 1:
      self.stop.signum = signal.SIGTERM
    super().epoch(state, row, last)


def _flat(tree) -> np.ndarray:
  leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
  return np.concatenate(leaves) if leaves else np.zeros(0)


def run(model, settings, parallel="none", epochs=1, vmap=False, stop=None,
        data=None):
  """One run's record (layout, rows, final, messages, chunks) and per member
  its checkpointed `state` parts (flat) and test logits. vmap: members vmapped
  (a GPU's way); stop: "chunk" or "epoch", saved and resumed there by the run
  folder's hooks (the record: the resumed run's). Chunks of --chunk_steps
  however slow."""
  saved = devices.IN_TURN_ON, population.CHUNK_S
  devices.IN_TURN_ON = () if vmap else ("cpu",)
  population.CHUNK_S = 1e9
  run_config = config(model, settings, parallel, epochs)
  data = data or dataset()
  try:
    with tempfile.TemporaryDirectory() as folder:
      hooks, workdir = Recorder(), os.path.join(folder, "run")
      if stop:
        with pytest.raises(control.Preempted):
          train_core(run_config, data, Folder(workdir, run_config, stop))
        hooks = Folder(workdir, run_config)
      state, final = train_core(run_config, data, hooks)
      if stop:
        hooks.close()  # Its last checkpoint written.
  finally:
    devices.IN_TURN_ON, population.CHUNK_S = saved
  state, kept = jax.device_get(state), getattr(hooks, "kept", hooks)
  count = hooks.test_logits.shape[0]
  member = (lambda t, i: jax.tree.map(lambda x: x[i], t)) if (
      run_config.num_seeds > 1 or run_config.sweep) else (lambda t, i: t)
  return {"record": json.loads(json.dumps({
      "parallel": kept.record["parallel"], "rows": kept.rows,
      "final": final, "messages": kept.messages, "chunks": kept.chunks})),
          "state": {p: [_flat(member(getattr(state, p), i))
                        for i in range(count)] for p in checkpoints.PARTS},
          "logits": np.asarray(hooks.test_logits)}


def runs(folder, specs, devices=1):  # pylint: disable=redefined-outer-name
  """{label: run(**spec)}: in this process on one device, else in a child
  process of `devices` simulated CPU devices (files in `folder`)."""
  if devices == 1:
    return {label: run(**spec) for label, spec in specs.items()}
  import subprocess  # pylint: disable=g-import-not-at-top
  with open(os.path.join(folder, "specs.json"), "w") as f:
    json.dump(specs, f)
  out = os.path.join(folder, "out.pickle")
  proc = subprocess.run(
      [sys.executable, __file__, out, os.path.join(folder, "specs.json")],
      env=child_env(devices), capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out, "rb") as f:
    results = pickle.load(f)
  assert results.pop("device_count") == devices
  return results


if __name__ == "__main__":
  with open(sys.argv[2]) as f:
    specs = json.load(f)
  shared = dataset()
  results = {label: run(**spec, data=shared) for label, spec in specs.items()}
  results["device_count"] = jax.device_count()
  with open(sys.argv[1], "wb") as f:
    pickle.dump(results, f)

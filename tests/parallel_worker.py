"""Tiny runs of loop.train_and_evaluate (the core, no run folder), in this
process or in a child of N simulated CPU devices (XLA_FLAGS must set them
before JAX starts): python tests/parallel_worker.py OUT.pickle SPECS.json,
SPECS {label: run()'s keywords}, OUT {label: run()'s result}."""

import json
import os
import pickle
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np

from conftest import synthetic_digits, train_core
from launch_helpers import child_env
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.rundir import checkpoints
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
  chunks); starts at `start` (a loop.Start, or fn(state) -> (state, Start))."""

  def __init__(self, start=None):
    self.record, self.rows, self.messages, self.chunks = None, [], [], []
    self.lasts, self._start = [], start

  def start(self, state, run):
    self.record, self.run = run.record(), run
    if callable(self._start):
      return self._start(state)
    return state, self._start or loop.Start()

  def message(self, text):
    self.messages.append(text)

  def chunk(self, state, epoch, done, sums):
    self.chunks.append((epoch, done))

  def epoch(self, state, row, last):
    self.rows.append(row)
    self.lasts.append(last)


class Stop(Exception):
  """Raised by a Saver once its checkpoint is written."""


class Saver(Recorder):
  """Saves a checkpoint and stops the run where `at` says ("epoch": after
  epoch 1; "chunk": after the first chunk of epoch 2)."""

  def __init__(self, workdir, config, at):  # pylint: disable=redefined-outer-name
    super().__init__()
    self.workdir, self.config, self.at = workdir, config, at

  def _save(self, state, epoch, epoch_step=0, sums=None):
    state = self.run.get(state)  # One copy (pmap's is one per device).
    saver = checkpoints.manager(self.workdir, keep=3)
    step = int(np.max(jax.device_get(state.step)))  # Members: [M].
    checkpoints.save(saver, step, checkpoints.tree(state), checkpoints.record(
        self.config, epoch=epoch, step=step, epoch_step=epoch_step,
        sums=sums))
    saver.close()
    raise Stop()

  def chunk(self, state, epoch, done, sums):
    super().chunk(state, epoch, done, sums)
    if self.at == "chunk" and (epoch, done) == (2, 3):
      self._save(state, 1, done, sums)

  def epoch(self, state, row, last):
    super().epoch(state, row, last)
    if self.at == "epoch" and row["epoch"] == 1:
      self._save(state, 1)


def restore(workdir, config):  # pylint: disable=redefined-outer-name
  """A Recorder that starts from the checkpoint in `workdir`, as the run
  folder (modes.py) does."""
  def start(state):
    state, meta = checkpoints.restore(workdir, state, config.model)
    assert meta["format"] == checkpoints.FORMAT
    sums = meta.get("sums")
    return state, loop.Start(
        meta["epoch"] + 1, meta["epoch_step"],
        {k: np.asarray(v, np.float32) for k, v in sums.items()} if sums
        else None)
  return Recorder(start)


def _flat(tree) -> np.ndarray:
  leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
  return np.concatenate(leaves) if leaves else np.zeros(0)


def run(model, settings, parallel="none", epochs=1, vmap=False, stop=None,
        data=None):
  """One run's record (layout, rows, final, messages, chunks) and per member
  its checkpointed `state` parts (flat) and test logits. vmap: members vmapped
  (a GPU's way); stop: "chunk" or "epoch", saved and resumed there (the
  record: the resumed run's). Chunks of --chunk_steps however slow."""
  saved = devices.IN_TURN_ON, population.CHUNK_S
  devices.IN_TURN_ON = () if vmap else ("cpu",)
  population.CHUNK_S = 1e9
  run_config = config(model, settings, parallel, epochs)
  data = data or dataset()
  try:
    with tempfile.TemporaryDirectory() as workdir:
      hooks = Recorder()
      if stop:
        try:
          train_core(run_config, data, Saver(workdir, run_config, stop))
          raise AssertionError("the run stopped at no checkpoint")
        except Stop:
          hooks = restore(workdir, run_config)
      state, final = train_core(run_config, data, hooks)
  finally:
    devices.IN_TURN_ON, population.CHUNK_S = saved
  state = jax.device_get(state)
  count = hooks.test_logits.shape[0]
  member = (lambda t, i: jax.tree.map(lambda x: x[i], t)) if (
      run_config.num_seeds > 1 or run_config.sweep) else (lambda t, i: t)
  return {"record": json.loads(json.dumps({
      "parallel": hooks.record["parallel"], "rows": hooks.rows,
      "final": final, "messages": hooks.messages, "chunks": hooks.chunks})),
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

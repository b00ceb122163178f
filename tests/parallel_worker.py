"""Trains tiny models with loop.train_and_evaluate under given --parallel
layouts, in one process with the devices it was started with.

Run by tests/test_parallel.py and tests/test_host_split.py in a child
process, because simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) must be set before JAX
starts. Each RUN is MODEL:PARALLEL (MODEL a key of MODELS, or of
table_models(); MODEL+2: the same with --num_seeds=2); the output npz holds,
per run, the parameters and model state (flattened, float64; `params0`,
`model_state0`: member 0's), and a JSON record: the layout the run took, its
epoch rows, its final row and its messages. MODEL:PARALLEL:resume is the run
stopped in its second epoch and resumed from its checkpoint;
MODEL:PARALLEL:vmap runs its members vmapped, as on a GPU or TPU.

  python tests/parallel_worker.py OUT.npz [--epochs=E] RUN [RUN ...]
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from conftest import synthetic_digits, train_core
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.rundir import checkpoints
from mnist_jax.training import devices
from mnist_jax.training import loop
# pylint: enable=g-import-not-at-top,wrong-import-position

# Tiny models, each with what makes one device's numbers hard to keep:
# dropout masks, augmentation draws, batch statistics; "mlp0" has none of
# them (pmap computes one device's numbers for it), "members" is a sweep
# with 2 seeds: 8 members.
MODELS = {
    "mlp": ("mlp", dict(mlp_hidden=(16,), dropout=0.3)),
    "mlp0": ("mlp", dict(mlp_hidden=(16,), dropout=0.0)),
    "gru": ("gru", dict(hidden=16, augment=True, learning_rate=3e-2)),
    "gru0": ("gru", dict(hidden=16, learning_rate=3e-2)),
    "cnn": ("cnn", dict(cnn_features=(4, 8), cnn_dense=16,
                        cnn_batch_norm=True)),
    "members": ("mlp", dict(mlp_hidden=(16,), dropout=0.3, num_seeds=2,
                            sweep="learning_rate=1e-3,3e-3;"
                                  "label_smoothing=0,0.1")),
}
# Small settings of the registered models (a model not named here trains its
# seed preset's shapes).
TINY = {"mlp": dict(mlp_hidden=(16,)), "cnn": dict(cnn_features=(4, 8),
                                                   cnn_dense=16),
        "rnn": dict(hidden=16), "lstm": dict(hidden=16),
        "gru": dict(hidden=16, learning_rate=3e-2)}


def table_models():
  """Every registered model as "table.NAME", with dropout where it has it
  and augmentation (every random stream a step draws from), and
  "table.cnn_bn", the CNN with BatchNorm: {name: (model, settings)}."""
  out = {}
  for name, spec in registry.MODELS.items():
    values = {**TINY.get(name, {}), "augment": True}
    if "dropout" in spec.settings:
      values["dropout"] = 0.2
    out[f"table.{name}"] = (name, values)
  out["table.cnn_bn"] = ("cnn", {**out["table.cnn"][1], "dropout": 0.0,
                                 "cnn_batch_norm": True})
  return out


# 540 training examples in 8 steps of 64 (a remainder dropped), 60
# validation and 203 test examples in batches of 50 (the last one partial).
COMMON = dict(batch_size=64, eval_batch_size=50, chunk_steps=3,
              val_fraction=0.1, seed=3)
N_TRAIN, N_TEST = 600, 203


def dataset(n_train=N_TRAIN, n_test=N_TEST, val_fraction=0.1):
  """A pipeline.Dataset of synthetic digits (conftest.synthetic_digits)."""
  images, labels = synthetic_digits(n_train, seed=3)
  test_images, test_labels = synthetic_digits(n_test, seed=4)
  return pipeline.split({"train_images": images,
                         "train_labels": labels.astype(np.int32),
                         "test_images": test_images,
                         "test_labels": test_labels.astype(np.int32)},
                        val_fraction)


def config(name, parallel, epochs=2):
  name, plus, seeds = name.partition("+")
  model, values = {**MODELS, **table_models()}[name]
  return models.get_config(model, "seed", epochs=epochs, parallel=parallel,
                           **{**COMMON, **values,
                              **({"num_seeds": int(seeds)} if plus else {})})


class Recorder(loop.Hooks):
  """Keeps what the loop tells its hooks: the layout record, the epoch rows
  (with `last`), the messages, the chunks' (epoch, done); starts at `start`
  (a loop.Start, or fn(state) -> (state, Start))."""

  def __init__(self, start=None):
    self.record, self.rows, self.messages, self.chunks = None, [], [], []
    self.lasts, self._start = [], start

  def start(self, state, run):
    self.record, self.steps, self.run = run.record(), run.steps, run
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
  """Saves a format-3 checkpoint where `at` says ("epoch": after epoch 1;
  "chunk": after the first chunk of epoch 2) and stops the run there."""

  def __init__(self, workdir, config, at):
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


def restore(workdir, config):
  """A Recorder that starts from the checkpoint in `workdir`, as the run
  folder (modes.py) does."""
  def start(state):
    state, meta = checkpoints.restore(workdir, state, config.model)
    assert meta["format"] == checkpoints.FORMAT == 3
    sums = meta.get("sums")
    return state, loop.Start(
        meta["epoch"] + 1, meta["epoch_step"],
        {k: np.asarray(v, np.float32) for k, v in sums.items()} if sums
        else None)
  return Recorder(start)


def flat(tree) -> np.ndarray:
  leaves = [np.ravel(np.asarray(x, np.float64))
            for x in jax.tree.leaves(jax.device_get(tree))]
  return np.concatenate(leaves) if leaves else np.zeros(0)


def run(name, parallel, data, epochs=2, resume=False, vmap=False):
  """One run; `resume`: stopped after the first chunk of epoch 2 with a
  checkpoint (as a preempted run), then resumed from it; `vmap`: its members
  vmapped, as on a GPU or TPU."""
  devices.IN_TURN_ON = () if vmap else ("cpu",)
  run_config = config(name, parallel, epochs)
  with tempfile.TemporaryDirectory() as workdir:
    hooks = Recorder()
    if resume:
      try:
        train_core(run_config, data,
                                 Saver(workdir, run_config, "chunk"))
        raise AssertionError("the run stopped at no checkpoint")
      except Stop:
        hooks = restore(workdir, run_config)
    state, final = train_core(run_config, data, hooks)
  record = {"parallel": hooks.record["parallel"], "rows": hooks.rows,
            "final": final, "messages": hooks.messages,
            "step": np.asarray(jax.device_get(state.step)).tolist(),
            # The test logits the loop handed out: shape, each member's
            # accuracy.
            "test_logits": [list(hooks.test_logits.shape), (
                hooks.test_logits.argmax(-1) == data.test.labels).mean(
                    -1).tolist()]}
  several = run_config.num_seeds > 1 or bool(run_config.sweep)

  def first(tree):  # Member 0's.
    return jax.tree.map(lambda x: x[0], tree) if several else tree

  return {"params": flat(state.params), "model_state": flat(state.model_state),
          "params0": flat(first(state.params)),
          "model_state0": flat(first(state.model_state)),
          "record": np.array(json.dumps(record))}


def main(argv):
  out, *runs = argv
  epochs = 2
  if runs and runs[0].startswith("--epochs="):
    epochs = int(runs.pop(0).split("=", 1)[1])
  data = dataset()
  results = {"device_count": np.array(jax.device_count())}
  for spec in runs:
    name, parallel, *how = spec.split(":")
    for key, value in run(name, parallel, data, epochs, "resume" in how,
                          "vmap" in how).items():
      results[f"{spec}/{key}"] = value
  np.savez(out, **results)


if __name__ == "__main__":
  main(sys.argv[1:])

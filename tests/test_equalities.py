"""A member of --num_seeds against its single run, on every model of the
registry, on a CPU: bit for bit the same.

A member draws what its single run draws: the initial state (parameters,
optimizer state, random keys), the epoch's data order, and each step's
dropout masks and augmented images. On a CPU the members run in turn, each
its single run's program, so it computes its single run's numbers too (on a
GPU or TPU they are vmapped: batched matmuls, their sums in another order).
The layouts and device counts: test_parallel.py."""

import collections
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_digits
from experiments import profile_chunk
from mnist_jax import models
from mnist_jax.data import augment as augment_lib
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.training import train

# Small settings of the registered models; a model not named here trains
# its seed preset's shapes.
TINY = {"mlp": dict(mlp_hidden=(32,)),
        "cnn": dict(cnn_features=(4, 8), cnn_dense=16),
        "rnn": dict(hidden=16), "lstm": dict(hidden=16),
        "gru": dict(hidden=16)}
# Every registered model, and the CNN with BatchNorm (its statistics in the
# state, and the convolutions as matmuls instead of the CNN kernel).
CASES = [(name, {}) for name in sorted(registry.MODELS)] + [
    ("cnn", dict(cnn_batch_norm=True))]
FAST = ("linear", "mlp")  # The fast suite's cases (seconds each); all: slow.
STEPS = 4  # One chunk of 4 steps of 32 (128 of the 256 examples).


def _config(name, extra, **overrides):
  """Dropout where the model has it, and augmentation: every random stream
  a step draws from."""
  spec = registry.get(name)
  values = {**TINY.get(name, {}), **extra, "augment": True,
            **({"dropout": 0.3} if "dropout" in spec.settings else {})}
  return models.get_config(name, "seed", **{
      "epochs": 1, "batch_size": 32, "chunk_steps": STEPS,
      "val_fraction": 0.0, "seed": 5, **values, **overrides})


def _leaves(tree):
  """Host arrays of a tree's leaves, random keys as their bits."""
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(
          jax.device_get(tree))]


def _first_chunk(config, split, monkeypatch):
  """(initial state (its data key: the epoch's order), the state and loss
  sum after the first chunk, each as host leaves; every dropout mask and augmented
  batch the chunk drew, as bytes) of a run of `config`: the run's own chunk
  (profile_chunk.laid_out_chunk, as train.py lays it out), whose dropout
  layers and augmentation also hand what they draw to the host."""
  drawn = []

  def keep(kind, x):
    drawn.append((kind, np.asarray(x).tobytes()))

  def dropout_mask(next_fun, args, kwargs, context):
    """A Dropout layer's mask (its output on ones), then its output on the
    input as flax computes it: select(mask, x / keep, 0)."""
    module = context.module
    if not (isinstance(module, nn.Dropout) and
            context.method_name == "__call__" and 0 < module.rate < 1 and
            not kwargs.get("deterministic", module.deterministic)):
      return next_fun(*args, **kwargs)
    x, *rest = args
    mask = next_fun(jnp.ones_like(x), *rest, **kwargs) != 0
    jax.debug.callback(functools.partial(keep, "dropout"), mask)
    return jnp.where(mask, x / (1.0 - module.rate), jnp.zeros_like(x))

  augment = augment_lib.from_config(config)

  def augmented(key, images):
    out = augment(key, images)
    jax.debug.callback(functools.partial(keep, "augment"), out)
    return out

  train_chunk = train.train_chunk

  @functools.wraps(train_chunk)  # Its signature: Layout.map reads it.
  def chunk_fn(*args, **kwargs):  # Only the chunk's layers, not the checks.
    with nn.intercept_methods(dropout_mask):
      return train_chunk(*args, **kwargs)

  monkeypatch.setattr(augment_lib, "from_config", lambda _: augmented)
  monkeypatch.setattr(train, "train_chunk", chunk_fn)
  empty = pipeline.Split(split.images[:0], split.labels[:0])
  chunk, state = profile_chunk.laid_out_chunk(
      config, pipeline.Dataset(split, empty, split, tuple("0123456789")),
      say=lambda _: None)
  monkeypatch.undo()
  init = _leaves(state)
  state, sums, _ = chunk.train_chunk(state, chunk.epoch_order(state, 1), 1, 0)
  jax.effects_barrier()
  return (init, _leaves(state.params) + _leaves(state.model_state),
          np.asarray(sums["loss"]), drawn)


@pytest.fixture(scope="module")
def split():
  images, labels = synthetic_digits(256, seed=3)
  return pipeline.Split(images, labels.astype(np.int32))


@pytest.mark.parametrize("name,extra", [
    pytest.param(n, e, id=n + ("_bn" if e else ""),
                 marks=[] if n in FAST and not e else [pytest.mark.slow])
    for n, e in CASES])
def test_a_member_draws_and_computes_its_single_runs_numbers(
    split, monkeypatch, name, extra):
  """Members seed 5 and 6 of --num_seeds=2 against the single runs --seed=5
  and --seed=6."""
  multi = _first_chunk(_config(name, extra, num_seeds=2), split, monkeypatch)
  init, after, loss, drawn = multi
  singles = [_first_chunk(_config(name, extra, seed=seed), split, monkeypatch)
             for seed in (5, 6)]
  for m, (init1, after1, loss1, drawn1) in enumerate(singles):
    # The state it starts from, its data key (the order of the data) too.
    assert len(init1) == len(init)
    for a, b in zip(init1, init):
      np.testing.assert_array_equal(a, b[m])
    # The chunk's result.
    for a, b in zip(after1, after):
      np.testing.assert_array_equal(a, b[m])
    np.testing.assert_array_equal(loss1, loss[m])
    assert len(drawn1) >= STEPS  # Augmentation at least, every step.
  # Every mask and augmented batch the members drew (in no set order) is
  # one its single run drew.
  assert collections.Counter(drawn) == (collections.Counter(singles[0][3])
                                        + collections.Counter(singles[1][3]))
  # The seeds differ: what the two single runs drew is not the same.
  assert not set(singles[0][3]) & set(singles[1][3])
  assert any(not np.array_equal(a[0], a[1]) for a in init)

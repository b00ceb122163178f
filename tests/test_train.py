"""Train and eval steps, the scanned epoch, determinism, a whole tiny run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.data import batches
from mnist_jax.training import members as members_lib
from mnist_jax.training import train

TINY = {
    "linear": {},
    "mlp": dict(mlp_hidden=(32,), dropout=0.2),
    "cnn": dict(cnn_features=(4, 8), cnn_dense=16, dropout=0.2),
    "rnn": dict(hidden=16),
    "lstm": dict(hidden=16),
    "gru": dict(hidden=16),
}


def tiny_config(name, **overrides):
  values = {**TINY.get(name, {}), "batch_size": 32, "epochs": 1, **overrides}
  return models.get_config(name, "seed", **values)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_train_step_lowers_loss_and_changes_every_parameter(name):
  config = tiny_config(name, learning_rate=3e-3)
  images, labels = synthetic_digits(32)
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  state0 = train.create_train_state(jax.random.PRNGKey(0), config,
                                    models.build(config), steps_per_epoch=10)
  step = jax.jit(lambda s: train.train_step(s, images, labels,
                                            view=models.get(name).view))
  state, first = step(state0)
  for _ in range(10):
    state, last = step(state)
  assert float(last["loss"]) < float(first["loss"])
  assert float(first["count"]) == 32
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state0.params,
                         state.params)
  assert all(jax.tree.leaves(changed)), changed


def test_dropout_key_depends_on_the_step():
  config = tiny_config("mlp", dropout=0.5)
  images, labels = synthetic_digits(8)
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), 10)
  x = jnp.asarray(images.reshape(8, -1) / 255.0, jnp.float32)
  keys = [jax.random.fold_in(state.rng, s) for s in (0, 1)]
  outs = [state.apply_fn({"params": state.params}, x, train=True,
                         rngs={"dropout": k}) for k in keys]
  assert not np.allclose(outs[0], outs[1])


def test_eval_batches_cover_every_example_once():
  for n, b in [(10000, 1000), (10000, 768), (7, 3), (5, 10)]:
    idx, mask = batches.eval_batches(n, b)
    assert idx.shape == mask.shape
    assert mask.sum() == n
    assert sorted(idx[mask > 0].tolist()) == list(range(n))


def test_evaluate_counts_a_partial_last_batch():
  config = tiny_config("linear", eval_batch_size=64)
  images, labels = synthetic_digits(150)
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), 10)
  evaluate = train.make_evaluate(config, state.apply_fn)
  sums = evaluate(state.params, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                  *map(jnp.asarray, batches.eval_batches(150, 64)))
  logits = train.predict_logits(state.params, state.apply_fn, images, "flat", 64)
  assert logits.shape == (150, 10)
  assert float(sums["count"]) == 150
  assert float(sums["correct"]) == float(np.sum(logits.argmax(-1) == labels))


def test_epoch_batches_are_a_fresh_permutation_each_epoch():
  rng = jax.random.PRNGKey(3)
  a = np.asarray(batches.epoch_batches(rng, 1, 100, 32))
  b = np.asarray(batches.epoch_batches(rng, 2, 100, 32))
  assert a.shape == (3, 32) and len(set(a.ravel())) == 96
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, batches.epoch_batches(rng, 1, 100, 32))


@pytest.mark.parametrize("steps,max_chunk", [(421, 200), (10, 200), (200, 200),
                                             (1875, 200)])
def test_chunk_plan_covers_steps_with_little_padding(steps, max_chunk):
  num, length = batches.chunk_plan(steps, max_chunk)
  assert length <= max_chunk and num * length >= steps
  assert num * length - steps < num


def test_scanned_chunk_equals_step_by_step():
  """The scanned chunk (with a skipped padding step) matches plain steps."""
  config = tiny_config("mlp", dropout=0.0)
  images, labels = synthetic_digits(96)
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  init = lambda: train.create_train_state(jax.random.PRNGKey(0), config,
                                          models.build(config), 3)
  order = batches.epoch_batches(jax.random.PRNGKey(1), 1, 96, 32)
  chunk = train.make_train_chunk(config)
  padded = jnp.concatenate([order, order[:1]])
  state, sums, _, _ = chunk(init(), images, labels, padded,
                      jnp.array([True, True, True, False]))
  ref = init()
  step = jax.jit(lambda s, i: train.train_step(s, images[i], labels[i], view="flat"))
  total = 0.0
  for i in range(3):
    ref, m = step(ref, order[i])
    total += float(m["loss"])
  assert int(state.step) == 3 and float(sums["count"]) == 96
  np.testing.assert_allclose(float(sums["loss"]), total, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.params, ref.params)


def test_chunk_returns_a_state_of_the_types_it_takes():
  """Shapes, dtypes and weak types of the state survive a chunk, so a fresh
  state (a Python step count) and the chunk's output share one compile."""
  config = tiny_config("mlp")
  images, labels = synthetic_digits(64)
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), 2)
  order = batches.epoch_batches(jax.random.PRNGKey(1), 1, 64, 32)
  out, _, _, _ = jax.eval_shape(train.make_train_chunk(config, jit=False), state,
                             jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                             order, jnp.array([True, False]))
  kind = lambda x: (x.shape, x.dtype, x.weak_type)
  assert (jax.tree.map(lambda x: kind(jax.typeof(x)), state) ==
          jax.tree.map(kind, out))


def _run(prepared, tmp_path, name="mlp", **overrides):
  mnist_dir, data_dir = prepared
  values = dict(mnist_dir=mnist_dir, data_dir=data_dir, val_fraction=0.1,
                epochs=2)
  config = tiny_config(name, **{**values, **overrides})
  work = str(tmp_path / name)
  final = train.train_and_evaluate(config.replace(workdir=work), work)
  return final, work


@pytest.mark.slow
def test_same_seed_same_metrics(prepared, tmp_path):
  a, wa = _run(prepared, tmp_path / "a")
  b, wb = _run(prepared, tmp_path / "b")
  c, _ = _run(prepared, tmp_path / "c", seed=1)
  strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and
                         not k.endswith("_per_s") and k != "elapsed_s"} for r in rows]
  read = lambda w: [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))]
  assert strip(read(wa)) == strip(read(wb))
  assert a["test_accuracy"] == b["test_accuracy"]
  assert strip(read(wa)) != strip(read(os.path.join(tmp_path, "c", "mlp")))
  del c


def test_tiny_run_learns_and_counts_every_test_example(prepared, tmp_path):
  final, work = _run(prepared, tmp_path, name="cnn", epochs=3, learning_rate=3e-3)
  assert final["test_examples"] == 200
  assert final["test_accuracy"] > 0.5  # Synthetic classes are easy; chance is 0.1.
  rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows[:-1]] == [1, 2, 3]
  assert all(r["val_accuracy"] is not None for r in rows[:-1])


@pytest.mark.slow
def test_target_accuracy_stops_early(prepared, tmp_path):
  final, work = _run(prepared, tmp_path, name="mlp", epochs=20,
                     target_accuracy=0.3, learning_rate=3e-3)
  assert final["epochs_run"] < 20
  assert final["time_to_target_s"] is not None


@pytest.mark.slow
def test_target_on_the_test_split_ends_with_that_evaluation(prepared, tmp_path):
  """With no validation split the target is checked on the test set, and the
  final test metrics are those of the state that reached it."""
  final, work = _run(prepared, tmp_path, name="mlp", epochs=20, val_fraction=0.0,
                     target_accuracy=0.3, learning_rate=3e-3)
  rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
  assert final["epochs_run"] < 20
  assert rows[-2]["target_metric"] >= 0.3
  assert final["test_accuracy"] == rows[-2]["target_metric"]


@pytest.mark.parametrize("val_fraction,how", [
    (0.1, "chosen by validation accuracy: seed=0"),
    (0.0, "chosen as the first (no validation split to choose by): seed=0")])
def test_summary_says_how_the_member_was_chosen(val_fraction, how):
  """As report.md does: without a validation split the first member is shown."""
  members = members_lib.from_config(
      tiny_config("linear", num_seeds=2, val_fraction=val_fraction))
  final = {"test_accuracy": 0.9, "test_loss": 0.3, "test_examples": 200,
           "wall_time_s": 1.0,
           "chosen": members_lib.identity(members[0])}
  assert train._summary(final, members, "W").startswith(how + "; test accuracy")  # pylint: disable=protected-access

"""The metric schema: each metric's sums, their addition, and its value."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train_core
from mnist_jax import models
from mnist_jax.training import members
from mnist_jax.results import run as run_lib
from mnist_jax.training import metrics
from mnist_jax.training import train
from parallel_worker import dataset


def _batch(seed, n=300, k=10, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
  labels = rng.integers(0, k, n).astype(np.int32)
  return logits, labels


def _numpy_ece(logits, labels, bins=15):
  """ECE as usually written: sum over equal-width confidence bins of the bin's
  share of examples times |its accuracy - its mean confidence|."""
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  confidence, predicted = p.max(-1), p.argmax(-1)
  correct = predicted == labels
  edges = np.linspace(0, 1, bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (confidence >= lo) & ((confidence < hi) | (hi == 1.0))
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() -
                                 confidence[inside].mean())
  return ece


def _sums(logits, labels, mask=None):
  nll = -jax.nn.log_softmax(logits)[np.arange(len(labels)), labels]
  return metrics.batch_sums(jnp.asarray(logits), jnp.asarray(labels), nll,
                            None if mask is None else jnp.asarray(mask),
                            metrics.EVAL)


@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0])
def test_ece_equals_a_direct_numpy_ece(scale):
  logits, labels = _batch(0, scale=scale)
  got = metrics.values(jax.device_get(_sums(logits, labels)))
  assert got["ece"] == pytest.approx(_numpy_ece(logits, labels), abs=1e-5)
  assert got["ece"] > 0


def test_sums_of_parts_add_up_to_the_whole():
  """Batches, devices and members each add sums: two halves (a masked
  padding example in one) give the sums and the values of the whole."""
  logits, labels = _batch(1)
  whole = jax.device_get(_sums(logits, labels))
  a = _sums(logits[:100], labels[:100])
  pad = np.concatenate([logits[100:], logits[:1]])
  b = _sums(pad, np.concatenate([labels[100:], labels[:1]]),
            np.r_[np.ones(200, np.float32), 0.0])
  parts = jax.device_get(jax.tree.map(jnp.add, a, b))
  assert sorted(parts) == sorted(whole)
  for key in whole:
    np.testing.assert_allclose(parts[key], whole[key], rtol=1e-5, atol=1e-4)
  assert whole["ece_count"].sum() == whole["count"] == 300
  got, want = metrics.values(parts), metrics.values(whole)
  assert got["accuracy"] == want["accuracy"]
  assert got["ece"] == pytest.approx(want["ece"], abs=1e-6)


def test_each_split_sums_its_declared_metrics_and_rows_carry_them():
  """No example: NaN, not 0. A row: in METRICS' order, a member's own (several
  members' leader, means, spreads and entries: test_sweep.py's rows test)."""
  batch = metrics.Batch(jnp.zeros((1, 10)), jnp.zeros(1, jnp.int32),
                        jnp.zeros(1), jnp.ones(1))
  for split in metrics.SPLITS:
    declared = [m for m in metrics.METRICS if split in m.splits]
    assert metrics.of(split) == tuple(declared)
    summed = {"count", *(k for m in declared for k in m.sums(batch))}
    assert set(metrics.zeros((split,), num_classes=10)) == summed
  assert metrics.of("train") != metrics.of("test")  # The test's point.
  zeros = jax.device_get(metrics.zeros(metrics.EVAL, num_classes=10))
  got = metrics.values(zeros)
  assert got["count"] == 0 and all(np.isnan(got[m.name])
                                   for m in metrics.METRICS)
  per = [{**{m.name: 1.0 for m in metrics.METRICS}, "count": 4.0}]
  single = members.from_config(models.get_config("linear"))
  row = members.row(single, (0, 0), {"train": per, "val": per})
  assert list(row) == [*metrics.keys("train"), *metrics.keys("val")]


def test_the_results_score_logits_as_the_loop_evaluates_them():
  """run.scores (the report's, predict's and the ensemble's metrics) of a
  model's logits are train.evaluate's of that model, in padded batches."""
  logits, labels = _batch(4, n=250)
  state = types.SimpleNamespace(  # Image i's one pixel holds i: its logits.
      apply_fn=lambda v, x, train: v[x[:, 0, 0, 0].astype(jnp.int32)],
      variables=jnp.asarray(logits))
  images = np.arange(250, dtype=np.uint8).reshape(250, 1, 1, 1)
  loop = metrics.values(jax.device_get(train.evaluate(
      state, images, jnp.asarray(labels), batch_size=64)))
  got = run_lib.scores(logits, labels)
  assert got["count"] == 250 and got["accuracy"] == loop["accuracy"]
  assert got["loss"] == pytest.approx(loop["loss"], rel=1e-5)
  assert got["ece"] == pytest.approx(loop["ece"], abs=1e-6)


def test_a_metric_may_need_the_class_count(monkeypatch):
  """Sums shaped by the classes (per-class hits) or needing five (top-5):
  zeros, a batch's sums, values and run.scores follow the class count."""
  def sums(batch):
    top5 = jax.lax.top_k(batch.logits, 5)[1]
    hit = jnp.any(top5 == batch.labels[:, None], -1).astype(jnp.float32)
    per_class = jax.nn.one_hot(batch.labels, batch.logits.shape[-1])
    return {"top5": jnp.sum(hit * batch.mask),
            "class_correct": jnp.sum(per_class * (batch.correct * batch.mask)[
                :, None], 0)}
  extra = metrics.Metric("top5", sums, lambda s, n: float(s["top5"]) / n,
                         metrics.EVAL, tag="top5", label="top-5 accuracy")
  monkeypatch.setattr(metrics, "METRICS", metrics.METRICS + (extra,))
  zeros = metrics.zeros(metrics.EVAL, num_classes=26)
  assert zeros["class_correct"].shape == (26,) and zeros["top5"].shape == ()
  logits, labels = _batch(5, k=26)
  got = run_lib.scores(logits, labels)
  top5 = np.argsort(-logits, -1)[:, :5]
  assert got["top5"] == pytest.approx(np.mean(np.any(
      top5 == labels[:, None], -1)))
  assert got["accuracy"] == np.mean(logits.argmax(-1) == labels)


def test_each_split_is_evaluated_once(monkeypatch):
  """The loop evaluates the validation split once an epoch (the final row
  chooses its member by the last epoch's) and the test split once."""
  ran = []
  real = train.evaluate

  def counted(state, images, labels, **kwargs):
    jax.debug.callback(lambda n: ran.append(int(n)), len(labels))
    return real(state, images, labels, **kwargs)

  monkeypatch.setattr(train, "evaluate", counted)
  data = dataset()
  config = models.get_config("mlp", "seed", mlp_hidden=(8,), batch_size=64,
                             epochs=2, num_seeds=2, val_fraction=0.1)
  _, final = train_core(config, data)
  jax.effects_barrier()
  # One call a member per split evaluated (members may be mapped in turn).
  assert sorted(set(ran)) == sorted({len(data.val), len(data.test)})
  assert ran.count(len(data.val)) == 2 * ran.count(len(data.test)) > 0
  assert final["epochs_run"] == 2

"""The engine runs train.py's pure chunk and evaluation, placed on devices."""

import functools

import jax
import numpy as np
import pytest

from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.data import batches
from mnist_jax.data import pipeline
from mnist_jax.rundir import checkpoints
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import train


def _dataset():
  images, labels = synthetic_digits(230, seed=5)
  test_images, test_labels = synthetic_digits(70, seed=6)
  return pipeline.split({"train_images": images,
                         "train_labels": labels.astype(np.int32),
                         "test_images": test_images,
                         "test_labels": test_labels.astype(np.int32)}, 0.1)


def _engine(num_seeds=1, **overrides):
  config = models.get_config("mlp", "seed", mlp_hidden=(16,), dropout=0.2,
                             batch_size=25, chunk_steps=3, eval_batch_size=16,
                             parallel="none", num_seeds=num_seeds, **overrides)
  dataset = _dataset()
  steps = train.steps_per_epoch(config, len(dataset.train))
  engine = devices.Engine(config, members_lib.from_config(config))
  engine.place(dataset, steps)
  state = engine.init_state(functools.partial(
      train.create_train_state, config=config, model=models.build(config),
      steps_per_epoch=steps))
  state, _ = engine.start(state, checkpoints.Start())
  engine.compile(state, train.make_train_chunk(config, jit=False),
                 train.make_evaluate(config, state.apply_fn, jit=False))
  return config, engine, state


def _run(engine, state, epoch, steps_done=0, sums=None, stop_after=None):
  plan = engine.epoch_plan(epoch, steps_done)
  sums = engine.initial_sums(sums)
  for c in plan.chunks[:stop_after]:
    state, sums, bad, _ = engine.train_chunk(state, plan, c, sums)
    assert (bad == -1).all()
  return state, sums, plan


def test_an_epoch_is_the_pure_chunk_over_the_epochs_order():
  config, engine, state = _engine()
  assert engine.splits == ["test", "val"] and engine.steps == 8
  state, sums, plan = _run(engine, state, 1)
  assert plan.chunks == [0, 1, 2] and plan.is_last(2) and not plan.is_last(1)
  assert [plan.steps_after(c) for c in plan.chunks] == [3, 6, 8]

  ref = train.create_train_state(members_lib.keys(engine.members)[0], config,
                                 models.build(config), 8)
  order = batches.epoch_plan(members_lib.keys(engine.members)[1], 1, n=207,
                             batch_size=25, num_chunks=3, chunk_len=3)
  chunk = train.make_train_chunk(config)
  valid = np.arange(9).reshape(3, 3) < 8
  total = 0.0
  for c in range(3):
    ref, ref_sums, _, _ = chunk(ref, engine.images, engine.labels, order[c],
                             valid[c])
    total += float(ref_sums["loss"])
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  metrics = engine.metrics(sums)
  assert metrics["count"] == 200 and engine.step(state) == 8
  assert metrics["loss"] == pytest.approx(total / 200, rel=1e-6)
  test = engine.evaluate(state, "test")
  assert test["count"] == 70 and 0 <= test["accuracy"] <= 1
  assert engine.evaluate(state, "val")["count"] == 23


def test_an_epoch_resumed_between_chunks_ends_bit_identical():
  _, engine, state = _engine()
  whole, whole_sums, _ = _run(engine, state, 2)
  _, engine, state = _engine()
  half, sums, _ = _run(engine, state, 2, stop_after=1)
  partial = {k: np.asarray(v) for k, v in jax.device_get(sums).items()}
  plan = engine.epoch_plan(2, steps_done=3)
  assert plan.chunks == [1, 2]
  resumed, resumed_sums, _ = _run(engine, half, 2, steps_done=3, sums=partial)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)
  assert engine.metrics(resumed_sums) == engine.metrics(whole_sums)


def test_members_train_side_by_side_and_report_each():
  config, engine, state = _engine(num_seeds=2, seed=4)
  assert engine.environment()["parallel"] == {"mode": "none", "devices": 1}
  state, sums, _ = _run(engine, state, 1)
  metrics = engine.metrics(sums)
  assert len(metrics["per_member"]) == 2
  assert metrics["loss"] == pytest.approx(
      np.mean([m["loss"] for m in metrics["per_member"]]))
  assert engine.step(state) == 8
  assert engine.num_params(state) == 784 * 16 + 16 + 16 * 10 + 10
  first = engine.member_params(state, 0)
  second = engine.member_params(state, 1)
  assert first["out"]["kernel"].shape == (16, 10)
  assert not np.allclose(first["out"]["kernel"], second["out"]["kernel"])
  single = _engine(seed=5)[1:]
  single_state, single_sums, _ = _run(*single, 1)
  for a, b in zip(jax.tree.leaves(engine.member_params(state, 1)),
                  jax.tree.leaves(single[0].member_params(single_state))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert metrics["per_member"][1]["loss"] == pytest.approx(
      single[0].metrics(single_sums)["loss"], rel=1e-5)
  assert config.num_seeds == 2

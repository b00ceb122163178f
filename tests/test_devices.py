"""devices.Layout maps train.py's one-model functions over members and
devices; the loop is those functions over each epoch's order.

(Several devices: test_parallel.py; the --parallel rule: test_host_split.py.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train_core

from mnist_jax import models
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax import optim
from mnist_jax.training import train
from parallel_worker import Recorder, dataset

MLP_PARAMS = 784 * 16 + 16 + 16 * 10 + 10


def _config(**overrides):
  values = dict(mlp_hidden=(16,), dropout=0.2, batch_size=25, chunk_steps=3,
                eval_batch_size=16, val_fraction=0.1, epochs=1)
  return models.get_config("mlp", "seed", **{**values, **overrides})


def _data():
  """207 training examples (8 steps of 25), 23 validation, 70 test."""
  return dataset(n_train=230, n_test=70)


def _stock(config):
  return models.get(config.model).stock(config)


def _create(config, steps):
  model, _ = models.build(config, say=lambda _: None)
  return functools.partial(
      train.create_train_state, model=model,
      tx=optim.make_optimizer(config, steps, members_lib.swept(config)),
      image_shape=(28, 28, 1))


def test_one_device_layout():
  said = []
  config = _config(parallel="auto")
  layout = devices.Layout(config, _stock(config), 1, said.append)
  assert layout.mode == "none" and layout.num_devices == 1 and not said
  assert layout.record() == {"mode": "none", "devices": 1}
  assert layout.axis_name is None and layout.batch_sharding is None
  assert layout.eval_batch_size(100) == 100
  state = members_lib.init_state(members_lib.from_config(_config()),
                                 _create(_config(), 8))
  placed = layout.put_state(state)
  assert layout.unreplicated(placed) is placed
  assert layout.num_params(placed) == MLP_PARAMS
  host = layout.host(placed.params)
  assert isinstance(host["out"]["kernel"], np.ndarray)
  images, labels = layout.put(_data().test)
  assert images.shape == (70, 28, 28, 1) and images.dtype == jnp.uint8
  assert labels.dtype == jnp.int32


def test_an_epoch_is_the_pure_chunk_over_the_epochs_order():
  """The loop trains chunk by chunk over epoch_order: the same chunks run by
  hand from the same fresh state end with the same arrays and sums."""
  config, data = _config(), _data()
  hooks = Recorder()
  state, final = train_core(config, data, hooks)
  # Chunks of at most --chunk_steps=3 (about population.CHUNK_S seconds).
  firsts = [first for _, first in hooks.chunks]
  assert hooks.steps == 8 and firsts[0] == 0 and max(np.diff(firsts)) <= 3
  assert final["test_examples"] == 70 and final["steps"] == 8
  assert hooks.rows[0]["step"] == 8

  members = members_lib.from_config(config)
  ref = members_lib.init_state(members, _create(config, 8))
  order = train.epoch_order(ref, 1, n=207, steps=8, batch_size=25)
  ref, sums, bad = jax.jit(train.train_chunk)(
      ref, metrics.zeros(num_classes=10), order, *map(jnp.asarray, (
          data.train.images, data.train.labels)), 0, 8)
  assert int(bad) == -1
  total = float(sums["loss"])
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 8
  assert hooks.rows[0]["train_loss"] == pytest.approx(total / 200, rel=1e-6)
  val = jax.jit(functools.partial(train.evaluate, batch_size=16))(
      ref, jnp.asarray(data.val.images), jnp.asarray(data.val.labels))
  assert float(val["count"]) == 23
  assert hooks.rows[0]["val_loss"] == pytest.approx(
      float(val["loss"]) / 23, rel=1e-6)


@pytest.mark.parametrize("in_turn", [True, False])
def test_mapped_members_compute_what_each_single_run_does(monkeypatch,
                                                          in_turn):
  """Layout.map maps the chunk over 3 members (in turn, as on a CPU, or
  vmapped, as on a GPU or TPU), their label smoothing mapped with them:
  member i's state and sums are the single run's with its seed and value."""
  monkeypatch.setattr(devices, "IN_TURN_ON", ("cpu",) if in_turn else ())
  config = _config(seed=7, num_seeds=1, sweep="label_smoothing=0,0.1,0.2")
  members = members_lib.from_config(config)
  assert [m.config.label_smoothing for m in members] == [0, 0.1, 0.2]
  layout = devices.Layout(config, _stock(config), len(members))
  assert layout.mode == "none" and layout.in_turn == in_turn
  data = _data()
  images, labels = layout.put(data.train)
  create = _create(config, 8)
  chunk = lambda s, zeros, o, x, y, first, **kw: train.train_chunk(
      s, zeros, o, x, y, first, 3, **kw)
  stacked = layout.put_state(members_lib.init_state(members, create))
  order = layout.map(functools.partial(train.epoch_order, n=207, steps=8,
                                       batch_size=25),
                     (devices.MEMBER, devices.NUMBER), donate=False)(stacked, 1)
  assert order.shape == (3, 8, 25)
  zeros = metrics.zeros(num_classes=10)
  out, sums, bad = layout.map(
      chunk,
      (devices.MEMBER, devices.SHARED, devices.MEMBER, devices.SHARED,
       devices.SHARED, devices.NUMBER),
      members_lib.per_member(members, ("label_smoothing",)))(
          stacked, zeros, order, images, labels, 0)
  assert np.asarray(bad).tolist() == [-1] * 3
  assert np.asarray(out.step).tolist() == [3] * 3
  assert np.asarray(sums["count"]).tolist() == [75] * 3
  assert len(set(np.asarray(sums["loss"]).tolist())) == 3
  # One compile for the single runs: their label smoothing as an argument.
  one_chunk = jax.jit(lambda s, o, smoothing: train.train_chunk(
      s, zeros, o, images, labels, 0, 3, label_smoothing=smoothing))
  for m in members:
    single = members_lib.init_state([m], create)
    one_order = train.epoch_order(single, 1, n=207, steps=8, batch_size=25)
    np.testing.assert_array_equal(one_order, order[m.index])
    single, one_sums, _ = one_chunk(single, one_order,
                                    np.float32(m.config.label_smoothing))
    for a, b in zip(jax.tree.leaves(single.params),
                    jax.tree.leaves(out.params)):
      np.testing.assert_allclose(a, b[m.index], rtol=1e-5, atol=1e-6)
    assert float(one_sums["loss"]) == pytest.approx(
        float(sums["loss"][m.index]), rel=1e-5)


def test_members_train_side_by_side_and_report_each():
  config, data = _config(num_seeds=2, seed=4), _data()
  hooks = Recorder()
  state, final = train_core(config, data, hooks)
  assert hooks.record["parallel"] == {"mode": "none", "devices": 1,
                                      "members": "in turn"}
  row = hooks.rows[0]
  assert [m["seed"] for m in row["members"]] == [4, 5]
  assert row["train_loss_mean"] == pytest.approx(
      np.mean([m["train_loss"] for m in row["members"]]))
  assert np.asarray(state.step).tolist() == [8, 8]
  assert final["num_params"] == MLP_PARAMS
  assert state.params["out"]["kernel"].shape == (2, 16, 10)
  assert not np.allclose(state.params["out"]["kernel"][0],
                         state.params["out"]["kernel"][1])
  single_hooks = Recorder()
  single, single_final = train_core(config.replace(
      seed=5, num_seeds=1), data, single_hooks)
  for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[1], state.params)),
                  jax.tree.leaves(single.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert row["members"][1]["train_loss"] == pytest.approx(
      single_hooks.rows[0]["train_loss"], rel=1e-5)
  assert final["members"][1]["test_loss"] == pytest.approx(
      single_final["test_loss"], rel=1e-5)


@pytest.mark.parametrize("mode,count,asked,expected", [
    ("sharded", 8, 300, 304), ("pmap", 8, 300, 304), ("sharded", 3, 1000, 1002),
    ("pmap", 2, 50, 50), ("none", 1, 300, 300), ("members", 4, 300, 300)])
def test_eval_batches_split_over_the_data_parallel_devices(mode, count, asked,
                                                           expected):
  """The evaluation batch rounds up to a multiple of the devices a batch is
  split over (the last batch is padded and masked: test_parallel.py)."""
  layout = object.__new__(devices.Layout)  # The rule needs those devices.
  layout.mode, layout.num_devices = mode, count
  assert layout.eval_batch_size(asked) == expected

"""A non-finite loss stops the run, names the step, and keeps the last good
checkpoint; with several members only once every member has diverged."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train_core

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.errors import Diverged
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax import optim
from mnist_jax.training import train
from parallel_worker import Recorder, dataset

# Adam with a learning rate warming up linearly towards 1e38: the linear
# model's epoch mean loss overflows float32 in epoch 2 here (37-step epochs;
# each step's loss still finite), so a checkpoint is written before it
# diverges.
NAN_FLAGS = ("--model=linear", "--batch_size=16", "--chunk_steps=8",
             "--optimizer=adam", "--schedule=warmup_cosine",
             "--label_smoothing=0.1", "--learning_rate=1e38",
             "--warmup_epochs=100", "--epochs=200")


@pytest.mark.slow
def test_divergence_stops_with_step_epoch_status_and_good_checkpoint(
    prepared, tmp_path):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "nan")
  rc, out, err = lh.run([*NAN_FLAGS, f"--mnist_dir={mnist_dir}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"])
  assert rc == 3, err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: training diverged"), err
  found = re.search(r"at step (\d+) \(epoch (\d+), step (\d+) of (\d+)\)", err)
  step, epoch, epoch_step, per_epoch = map(int, found.groups())
  assert per_epoch == 600 // 16 and step == (epoch - 1) * per_epoch + epoch_step
  assert epoch >= 2, "diverged before the first checkpoint: raise warmup_epochs"
  assert "last good checkpoint" in err and lines[0].endswith(
      "; lower --learning_rate or set --grad_clip and train again"), err

  rows = lh.metrics(workdir)
  assert rows[-1]["diverged"] is True and rows[-1]["step"] == step
  assert rows[-1]["epoch"] == epoch and "diverged" in rows[-1]["message"]
  assert not any(r.get("diverged") for r in rows[:-1])
  assert [r["epoch"] for r in rows[:-1]] == list(range(1, epoch))

  state, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == epoch - 1 and int(state.step) < step
  assert all(np.isfinite(np.asarray(p)).all()
             for p in jax.tree.leaves(state.params))

  # Predict on it says it diverged, and that the command it gives deletes it.
  rc, out, err = lh.run(["--mode=predict", f"--workdir={workdir}",
                         f"--image={lh.ROOT}/docs/img/seven.png"])
  assert rc == 0 and out.startswith(f"{lh.ROOT}/docs/img/seven.png: "), err
  note = err.strip()
  assert note.startswith(f"note: {workdir} diverged (training diverged: "), note
  assert f"last good checkpoint, of epoch {epoch - 1}" in note
  assert note.endswith("its settings would diverge again: lower "
                       "--learning_rate or set --grad_clip, and add --overwrite "
                       "to train it over (which deletes this one)"), note


def _chunk_setup(learning_rate=1e-3):
  """A linear model's fresh state, 32 examples, 8 steps of 4 per epoch."""
  config = dataclasses.replace(  # inf: past the flags' parser.
      models.get_config("linear", "seed", batch_size=4),
      learning_rate=learning_rate)
  model, _ = models.build(config, say=lambda _: None)
  state = train.create_train_state(jax.random.key(0), model,
                                   optim.make_optimizer(config, 8), (28, 28, 1))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (32, 28, 28, 1)),
                       jnp.uint8)
  labels = jnp.arange(32, dtype=jnp.int32) % 10
  order = jnp.arange(32, dtype=jnp.int32).reshape(8, 4)

  def chunk(state, first=0, count=8):
    return jax.jit(train.train_chunk)(
        state, metrics.zeros(num_classes=10), order, images, labels, first,
        count)
  return state, chunk


def test_a_chunk_reports_its_first_non_finite_step():
  """-1 where every step is finite. An infinite rate: the first update makes
  the parameters non-finite, so step 2 is the first non-finite loss; with
  one step, its update (its loss finite); parameters already non-finite:
  the chunk's start."""
  state, chunk = _chunk_setup()
  state, sums, bad = chunk(state)
  assert int(bad) == -1 and int(state.step) == 8 and np.isfinite(sums["loss"])
  state, chunk = _chunk_setup(float("inf"))
  _, sums, bad = chunk(state, count=1)
  assert np.isfinite(float(sums["loss"])) and int(bad) == 1
  state, sums, bad = chunk(state)
  assert int(bad) == 2 and int(state.step) == 8
  assert not np.isfinite(float(sums["loss"]))
  state, sums, bad = chunk(state)
  assert int(bad) == 8 and int(state.step) == 16


def _members(count):
  config = models.get_config("linear", "seed", num_seeds=count)
  return members_lib.from_config(config)


def test_the_run_stops_once_every_member_has():
  check, said = members_lib.check_divergence, []
  check(_members(1), np.array([-1]), 1, 0, 37, said.append)
  check(_members(4), np.array([-1, 12, 9, -1]), 1, 16, 37, said.append)
  assert not said  # 12 and 9 diverged before this chunk (step 16).
  check(_members(4), np.array([-1, 12, 9, -1]), 1, 8, 37, said.append)
  assert said == [
      "member seed=1 diverged at step 12 (epoch 1, step 12 of 37); it stops, "
      "the others go on",
      "member seed=2 diverged at step 9 (epoch 1, step 9 of 37); it stops, "
      "the others go on"]
  with pytest.raises(Diverged, match="at step 20 "):
    check(_members(4), np.array([20, 12, 9, 20]), 1, 16, 37, said.append)
  with pytest.raises(Diverged) as e:
    check(_members(1), np.array([75]), 3, 1, 37, said.append)
  assert str(e.value) == ("training diverged: the loss became non-finite at "
                          "step 75 (epoch 3, step 1 of 37)")
  assert e.value.row == {"epoch": 3, "step": 75, "diverged": True,
                         "message": str(e.value)}


def test_a_diverged_member_stops_and_the_others_go_on():
  """A sweep whose high rate diverges: the run goes on with the other
  member, says which one stopped, and marks it in the rows; the chosen
  member is the one that trained."""
  config = models.get_config(
      "linear", "seed", batch_size=64, epochs=2, chunk_steps=3,
      val_fraction=0.1, sweep="learning_rate=1e-3,1e38")
  hooks = Recorder()
  _, final = train_core(config, dataset(), hooks)
  stopped = [m for m in hooks.messages if "diverged" in m]
  assert len(stopped) == 1 and stopped[0].startswith(
      "member learning_rate=1e+38, seed=0 diverged at step ")
  for row in hooks.rows:
    assert "diverged" not in row["members"][0]
    assert row["members"][1]["diverged"] is True
  assert final["chosen"]["index"] == 0
  assert final["members"][1]["diverged"] is True
  assert final["test_loss"] is not None and np.isfinite(final["test_loss"])


def test_an_epoch_mean_that_overflows_is_divergence():
  """Each step's loss finite, their epoch mean not: the run stops as
  diverged (of any split), unless a member is left whose metrics are finite;
  a split with no examples (NaN by definition) is not divergence."""
  fine = {"loss": 0.5, "accuracy": 0.9, "ece": 0.01, "count": 60.0}
  inf = {**fine, "loss": float("inf")}
  nan = {**fine, "accuracy": float("nan")}
  empty = {**fine, "loss": float("nan"), "count": 0.0}
  check = members_lib.check_finite
  check(_members(1), {"train": [fine], "val": None}, 2, 74, 37)
  check(_members(1), {"train": [fine], "val": [empty]}, 2, 74, 37)
  check(_members(2), {"train": [inf, fine], "val": [fine, fine]}, 2, 74, 37)
  with pytest.raises(Diverged) as e:
    check(_members(1), {"train": [inf], "val": None}, 2, 74, 37)
  assert str(e.value) == ("training diverged: the mean train loss of epoch 2 "
                          "is inf at step 74 (epoch 2, step 37 of 37)")
  assert e.value.row == {"epoch": 2, "step": 74, "diverged": True,
                         "message": str(e.value)}
  with pytest.raises(Diverged, match="the mean val accuracy of epoch 3 is nan"):
    check(_members(2), {"train": [fine, inf], "val": [nan, fine]}, 3, 111, 37)
  with pytest.raises(Diverged, match="the mean test loss of epoch 3 is inf"):
    check(_members(1), {"test": [inf]}, 3, 111, 37)

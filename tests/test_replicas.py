"""--num_seeds: N members (one per seed) in one compiled program.

(Members computing what their single runs compute, chunk by chunk:
test_devices.py; split over several devices: test_parallel.py.)
"""

import io
import os
import shutil

import jax
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.rundir import metrics_log
from mnist_jax import modes as run_lib
from mnist_jax.training import members
from mnist_jax import optim
from mnist_jax.training import train

# The report aside: test_sweep_run.py and tests/test_analysis.py hold it.
TINY = dict(mlp_hidden=(16,), dropout=0.2, epochs=2, batch_size=50,
            val_fraction=0.1, report=False)


def _run(prepared, folder, **overrides):
  mnist_dir, data_dir = prepared
  config = models.get_config("mlp", mnist_dir=mnist_dir, data_dir=data_dir,
                             **{**TINY, **overrides})
  run_lib.train_and_evaluate(config, str(folder), stream=io.StringIO())
  return metrics_log.read_metrics(os.path.join(str(folder), "metrics.jsonl"))


def test_member_states_are_those_of_single_runs():
  """Member i starts from the fresh state of the single run with seed
  seed + i: its init, and its dropout, augmentation and data keys."""
  config = models.get_config("mlp", seed=4, num_seeds=3, mlp_hidden=(16,))
  model, _ = models.build(config, say=lambda _: None)
  create = lambda key: train.create_train_state(
      key, model, optim.make_optimizer(config, 10), (28, 28, 1))
  stacked = members.init_state(members.from_config(config), create)
  assert stacked.params["out"]["kernel"].shape == (3, 16, 10)
  for i in range(3):
    single = members.init_state(members.from_config(
        config.replace(seed=4 + i, num_seeds=1)), create)
    for a, b in zip(jax.tree.leaves(single.params),
                    jax.tree.leaves(stacked.params)):
      np.testing.assert_array_equal(a, b[i])
    for stream in train.STREAMS:
      np.testing.assert_array_equal(
          jax.random.key_data(single.keys[stream]),
          jax.random.key_data(stacked.keys[stream][i]))
  assert not np.array_equal(stacked.params["out"]["kernel"][0],
                            stacked.params["out"]["kernel"][1])


@pytest.fixture(scope="module")
def three_seeds(prepared, tmp_path_factory):
  return _run(prepared, tmp_path_factory.mktemp("seeds"), seed=3, num_seeds=3)


@pytest.mark.slow
def test_rows_hold_the_leading_member_every_member_and_their_mean_and_std(
    three_seeds):
  epochs, final = three_seeds[:-1], three_seeds[-1]
  assert [r["epoch"] for r in epochs] == [1, 2]
  for row in epochs:
    per = row["members"]
    assert [p["seed"] for p in per] == [3, 4, 5]
    lead = row["leader"]["index"]
    assert row["leader"] == {"index": lead, "seed": 3 + lead, "values": {}}
    assert per[lead]["val_accuracy"] == max(p["val_accuracy"] for p in per)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      values = [p[key] for p in per]
      assert row[key] == per[lead][key]
      assert row[key + "_mean"] == pytest.approx(np.mean(values))
      assert row[key + "_std"] == pytest.approx(np.std(values, ddof=1))
  losses = [p["test_loss"] for p in final["members"]]
  assert len(set(losses)) == 3  # Different init, dropout and data order.
  chosen = final["chosen"]["index"]
  assert final["chosen"]["seed"] == 3 + chosen
  assert final["test_loss"] == final["members"][chosen]["test_loss"]
  assert final["test_loss_mean"] == pytest.approx(np.mean(losses))
  assert final["test_loss_std"] == pytest.approx(np.std(losses, ddof=1))
  assert final["num_params"] == 784 * 16 + 16 + 16 * 10 + 10


@pytest.mark.slow  # test_devices.py checks a member against its single run
def test_replica_i_is_the_single_run_with_seed_plus_i(prepared, three_seeds,
                                                      tmp_path):
  rows = _run(prepared, tmp_path / "single", seed=4)
  assert "members" not in rows[-1] and "test_loss_std" not in rows[-1]
  assert all("members" not in r and "train_loss_std" not in r for r in rows)
  replica = three_seeds[-1]["members"][1]
  assert replica["seed"] == 4
  assert replica["test_loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-5)
  assert replica["test_accuracy"] == pytest.approx(rows[-1]["test_accuracy"])
  for multi, single in zip(three_seeds[:-1], rows[:-1]):
    assert multi["members"][1]["train_loss"] == pytest.approx(
        single["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_replicas_resume_from_their_checkpoint(prepared, tmp_path):
  """Resuming a stacked run after epoch 1 ends where the whole run ended."""
  folder = tmp_path / "resume"
  whole = _run(prepared, folder, num_seeds=2)
  latest = max(os.listdir(folder / "checkpoints"), key=int)  # Named by step.
  shutil.rmtree(folder / "checkpoints" / latest)
  resumed = _run(prepared, folder, num_seeds=2)
  assert [r.get("epoch") for r in resumed] == [1, 2, None]
  for key in ("test_loss", "test_accuracy"):
    assert [p[key] for p in resumed[-1]["members"]] == [
        p[key] for p in whole[-1]["members"]]


@pytest.mark.parametrize("val_fraction,how", [
    (0.1, "chosen by validation accuracy: seed="),
    (0.0, "chosen as the first (no validation split to choose by): seed=0;")])
def test_the_last_line_says_how_the_member_was_chosen(prepared, tmp_path,
                                                     val_fraction, how):
  """As report.md does: without a validation split the first member is shown."""
  mnist_dir, data_dir = prepared
  config = models.get_config("linear", "seed", num_seeds=2, epochs=1,
                             val_fraction=val_fraction, report=False,
                             mnist_dir=mnist_dir, data_dir=data_dir)
  out = io.StringIO()
  run_lib.train_and_evaluate(config, str(tmp_path / "run"), stream=out)
  last = out.getvalue().splitlines()[-1]
  assert last.startswith(how) and "; test accuracy " in last, last
  assert "; its 2 seeds " in last

"""--num_seeds: N members (one per seed) in one compiled program."""

import io
import os

import jax
import numpy as np
import pytest

from conftest import members_in_turn_and_vmapped
from mnist_jax import models
from mnist_jax.rundir import folder as folder_lib
from mnist_jax.training import members
from mnist_jax.training import train

TINY = dict(mlp_hidden=(16,), dropout=0.2, epochs=2, batch_size=50,
            val_fraction=0.1)


def _run(prepared, folder, **overrides):
  mnist_dir, data_dir = prepared
  config = models.get_config("mlp", mnist_dir=mnist_dir, data_dir=data_dir,
                             **{**TINY, **overrides})
  train.train_and_evaluate(config, str(folder), stream=io.StringIO())
  return folder_lib.read_metrics(os.path.join(str(folder), "metrics.jsonl"))


def test_replica_keys_are_those_of_single_runs():
  config = models.get_config("mlp", seed=4, num_seeds=3)
  init, data = members.keys(members.from_config(config))
  for i in range(3):
    single = members.keys(members.from_config(
        config.replace(seed=4 + i, num_seeds=1)))
    np.testing.assert_array_equal(init[i], single[0])
    np.testing.assert_array_equal(data[i], single[1])


@pytest.fixture(scope="module")
def three_seeds(prepared, tmp_path_factory):
  return _run(prepared, tmp_path_factory.mktemp("seeds"), seed=3, num_seeds=3)


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


@pytest.mark.slow  # test_sweep_run.py checks a member against its single run
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
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "resume"
  whole = _run(prepared, folder, num_seeds=2)
  latest = max(os.listdir(folder / "checkpoints"), key=int)  # Named by step.
  shutil.rmtree(folder / "checkpoints" / latest)
  resumed = _run(prepared, folder, num_seeds=2)
  assert [r.get("epoch") for r in resumed] == [1, 2, None]
  for key in ("test_loss", "test_accuracy"):
    assert [p[key] for p in resumed[-1]["members"]] == pytest.approx(
        [p[key] for p in whole[-1]["members"]], rel=1e-6)


@pytest.mark.slow
def test_sequential_and_vmapped_replica_steps_agree():
  """The CPU's members in turn and the accelerators' vmap train alike."""
  config = models.get_config("mlp", **{**TINY, "num_seeds": 3, "seed": 7})
  model = models.build(config)
  init_rng, data_rng = members.keys(members.from_config(config))
  make_state = jax.vmap(lambda r: train.create_train_state(r, config, model, 4))
  valid = np.arange(5) < 4  # The last step is padding and must be skipped.
  out = members_in_turn_and_vmapped(config, 3, lambda: make_state(init_rng),
                                    data_rng, valid)
  (s1, m1, b1, _), (s2, m2, b2, _) = out[True], out[False]
  np.testing.assert_array_equal(s1.step, [4, 4, 4])
  np.testing.assert_array_equal(s1.step, s2.step)
  np.testing.assert_array_equal(b1, [-1, -1, -1])
  np.testing.assert_array_equal(b1, b2)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  np.testing.assert_array_equal(m1["count"], [200, 200, 200])
  assert len(set(np.asarray(m1["loss"]).tolist())) == 3


_ON_TWO_DEVICES = r"""
import functools, json
import jax, numpy as np
import hashlib
from mnist_jax import models
from mnist_jax.data import batches
from mnist_jax.rundir import checkpoints
from mnist_jax.training import members
from mnist_jax.training import train
def host_digest(tree):
  h = hashlib.sha256()
  for a in jax.tree.leaves(jax.device_get(tree)):
    a = np.asarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()
config = models.get_config("mlp", mlp_hidden=(16,), dropout=0.2, batch_size=50,
                           num_seeds=4, seed=7)
assert members.mesh(4).devices.size == 2
model = models.build(config)
init_rng, data_rng = members.keys(members.from_config(config))
make_state = jax.jit(jax.vmap(lambda r: train.create_train_state(r, config, model, 4)))
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
labels = rng.integers(0, 10, 200).astype(np.int32)
order = jax.vmap(functools.partial(
    batches.epoch_plan, n=200, batch_size=50, num_chunks=1, chunk_len=5),
                 in_axes=(0, None), out_axes=1)(data_rng, 1)[0]
valid = np.arange(5) < 4
eval_idx, eval_mask = batches.eval_batches(200, 64)
out = {}
for split in (True, False):
  mesh = members.mesh(4) if split else None
  chunk = members.train_chunk(train.make_train_chunk(config, jit=False), 4,
                              sequential=True, member_mesh=mesh)
  state, sums, bad, _ = jax.jit(chunk, donate_argnums=(0,),
                             compiler_options=members.compiler_options(4))(
      make_state(init_rng), images, labels, order, valid)
  ev = jax.jit(members.evaluate(
      train.make_evaluate(config, state.apply_fn, jit=False), 4, mesh))(
      state.params, images, labels, eval_idx, eval_mask)
  out[split] = dict(devices=len(state.params["out"]["kernel"].sharding.device_set),
                    step=np.asarray(state.step).tolist(), bad=np.asarray(bad).tolist(),
                    loss=np.asarray(sums["loss"]).tolist(),
                    params=[np.asarray(p).ravel()[:50].tolist()
                            for p in jax.tree.leaves(state.params)],
                    eval_loss=np.asarray(ev["loss"]).tolist(),
                    eval_count=np.asarray(ev["count"]).tolist(),
                    digest=checkpoints.state_digest(state),
                    host_digest=host_digest(state))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_replicas_split_over_two_host_devices_train_as_on_one():
  """With the host split into 2 CPU devices, each trains 2 of 4 replicas."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
             PYTHONPATH=root)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _ON_TWO_DEVICES], cwd=root,
                        env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  split, one = out["true"], out["false"]
  assert split["devices"] == 2 and one["devices"] == 1
  assert split["step"] == one["step"] == [4, 4, 4, 4]
  assert split["bad"] == one["bad"] == [-1, -1, -1, -1]
  assert len(set(split["loss"])) == 4
  np.testing.assert_allclose(split["loss"], one["loss"], rtol=1e-5)
  for a, b in zip(split["params"], one["params"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(split["eval_loss"], one["eval_loss"], rtol=1e-5)
  assert split["eval_count"] == one["eval_count"] == [200] * 4
  # The checkpoint digest reads the split state shard by shard: same bytes.
  assert split["digest"] == split["host_digest"]
  assert one["digest"] == one["host_digest"]

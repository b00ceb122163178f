"""Killed, preempted or interrupted runs resume to exactly the uninterrupted result."""

import os

import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.rundir import checkpoints

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5.
FLAGS = ("--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
         "--chunk_steps=5", "--seed=3")


def _args(prepared, workdir, *extra):
  mnist_dir, data_dir = prepared
  return [*FLAGS, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}", *extra]


CONFIG = models.get_config("mlp", seed=3, epochs=3)


def _meta(**changes):
  """The record of a checkpoint taken 5 steps into epoch 2 of 33-step epochs."""
  sums = {"loss": np.float32(4.5), "correct": np.float32(30.0),
          "count": np.float32(80.0)}
  return {**checkpoints.record(CONFIG, epoch=1, step=38, param_shapes={"w": [2]},
                               epoch_step=5, sums=sums), **changes}


def test_record_holds_where_the_run_stands():
  meta = _meta()
  assert meta == {"epoch": 1, "epoch_step": 5, "step": 38, "model": "mlp",
                  "seed": 3, "done": False, "param_shapes": {"w": [2]},
                  "sums": {"loss": 4.5, "correct": 30.0, "count": 80.0}}
  end = checkpoints.record(CONFIG, epoch=3, step=99, param_shapes={}, done=True)
  assert end["epoch_step"] == 0 and end["done"] and "sums" not in end


def test_start_after_a_mid_epoch_checkpoint():
  start = checkpoints.Start.from_meta(_meta())
  assert (start.epoch, start.epoch_step, start.finished) == (2, 5, False)
  assert list(start.epochs(3)) == [2, 3]
  assert start.steps_done(2) == 5 and start.steps_done(3) == 0
  assert start.sums["count"] == np.float32(80.0)
  assert start.sums["loss"].dtype == np.float32
  fresh = checkpoints.Start.from_meta(None)
  assert list(fresh.epochs(3)) == [1, 2, 3] and fresh.steps_done(1) == 0
  done = checkpoints.Start.from_meta(_meta(epoch=3, epoch_step=0, done=True))
  assert list(done.epochs(3)) == []


def test_start_survives_the_trip_to_other_processes():
  zeros = {k: np.zeros((2,), np.float32) for k in ("loss", "correct", "count")}
  for start in (checkpoints.Start.from_meta(_meta()), checkpoints.Start()):
    position, sums = start.as_arrays(zeros)
    assert position.dtype == np.int32
    back = checkpoints.Start.from_arrays(position, sums)
    assert (back.epoch, back.epoch_step, back.finished) == (
        start.epoch, start.epoch_step, start.finished)
    if start.sums is None:
      assert back.sums is None
    else:
      assert {k: float(v) for k, v in back.sums.items()} == {
          k: float(v) for k, v in start.sums.items()}


@pytest.mark.parametrize("changes,state_step", [
    ({}, 38),
    ({"epoch": 0, "epoch_step": 0, "step": 0, "sums": None}, 0),
    ({"epoch": 3, "epoch_step": 0, "step": 99}, 99),
])
def test_a_fitting_checkpoint_is_accepted(changes, state_step):
  checkpoints.check_fits(_meta(**changes), state_step, steps=33, epochs=3,
                         where="ckpt")


@pytest.mark.parametrize("changes,state_step", [
    ({}, 37),  # The state holds another step than its record.
    ({"step": 40}, 40),  # step != epoch * steps + epoch_step: other data size.
    ({"epoch_step": 33, "step": 66}, 66),  # A whole epoch is no partial one.
    ({"epoch": 4, "epoch_step": 0, "step": 132}, 132),  # Past --epochs.
    ({"sums": None}, 38),  # Mid-epoch without its partial sums.
    ({"epoch_step": 1.5}, 38),
])
def test_a_checkpoint_that_does_not_fit_is_refused(changes, state_step):
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.check_fits(_meta(**changes), state_step, steps=33, epochs=3,
                           where="DIR/checkpoints")
  message = str(e.value)
  assert "\n" not in message and "DIR/checkpoints" in message
  assert "33 steps per epoch" in message and "another --workdir" in message
  assert "--overwrite" not in message  # The checkpoint is whole: keep it.


def test_saver_of_a_process_that_writes_no_files(tmp_path):
  saver = checkpoints.Saver(str(tmp_path / "run"), CONFIG, {}, write=False)
  assert saver.directory == str(tmp_path / "run" / "checkpoints")
  assert saver.is_saved(0) and not saver.is_saved(5)
  saver.save(5, {"w": np.zeros(2)}, epoch=0, epoch_step=5)
  assert saver.is_saved(5) and saver.last_saved == 5
  assert saver.kept() == "no checkpoint had been saved yet"
  saver.close()
  assert not os.path.exists(tmp_path / "run")


def test_a_second_ctrl_c_is_told_which_checkpoint_is_kept(tmp_path):
  saver = checkpoints.Saver(str(tmp_path), CONFIG, {}, write=False)
  assert saver.on_disk() == ("no checkpoint has been saved yet, so the run "
                             "starts over")
  for name in ("33", "66", "99.orbax-checkpoint-tmp-1"):  # 99: mid-save.
    os.makedirs(os.path.join(tmp_path, "checkpoints", name))
  assert saver.on_disk() == (f"the last complete checkpoint, {tmp_path}/"
                             "checkpoints/66, is kept")


def test_saver_records_and_keeps_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  seconds = iter([7.0, 12.5])
  saver = checkpoints.Saver(workdir, CONFIG, {"w": [2]},
                            clock=lambda: next(seconds))
  state = {"w": np.arange(2, dtype=np.float32)}
  saver.save(33, state, epoch=1)
  saver.save(38, state, epoch=1, epoch_step=5, sums=_meta()["sums"])
  assert saver.kept() == f"the last good checkpoint, {saver.directory}/38, is kept"
  saver.close()
  _, meta = checkpoints.Checkpointer(workdir, read_only=True).read_meta()
  assert meta["step"] == 38 and meta["epoch_step"] == 5
  assert meta["sums"] == {"loss": 4.5, "correct": 30.0, "count": 80.0}
  assert meta["time_s"] == 12.5  # The run's seconds so far, as of the save.


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """An uninterrupted run: (workdir, metrics rows, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, _, err = lh.run(_args(prepared, workdir))
  assert rc == 0, err
  state, _ = lh.restore_latest(workdir)
  return workdir, lh.deterministic(lh.metrics(workdir)), state


@pytest.mark.slow
@pytest.mark.parametrize("signum", [lh.SIGKILL, lh.SIGTERM, lh.SIGINT],
                         ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_stopped_mid_epoch_then_resumed_equals_uninterrupted(
    prepared, reference, tmp_path, signum):
  ref_dir, ref_rows, ref_state = reference
  workdir = str(tmp_path / "run")
  args = _args(prepared, workdir)
  rc, _, err, marker = lh.run_and_signal(args, signum, epoch=2)
  assert marker.startswith("@chunk epoch=2 done=")
  rows = lh.metrics(workdir)
  assert [r["epoch"] for r in rows] == [1]  # Stopped inside epoch 2.
  if signum == lh.SIGKILL:
    assert rc == -9
  else:
    assert rc == 128 + signum, err
    assert "Traceback" not in err
    assert "checkpoint at the next safe point" in err
    assert f"To resume, run: python launch.py {' '.join(args)}" in err
    _, meta = lh.restore_latest(workdir)
    assert meta["epoch"] == 1 and 0 < meta["epoch_step"] < 33, meta
    assert meta["step"] == 33 + meta["epoch_step"]
    assert meta["time_s"] > 0

  rc, out, err = lh.run(args)
  assert rc == 0, err
  assert "resuming" in out
  if signum != lh.SIGKILL:  # The run's time is both processes' time.
    assert lh.metrics(workdir)[-1]["wall_time_s"] > meta["time_s"]
  assert lh.deterministic(lh.metrics(workdir)) == ref_rows
  state, meta = lh.restore_latest(workdir)
  assert meta["done"] and meta["epoch"] == 3
  lh.assert_trees_equal(state.params, ref_state.params)
  lh.assert_trees_equal(state.opt_state, ref_state.opt_state)
  assert int(state.step) == int(ref_state.step)


def test_same_seed_and_flags_give_bit_identical_metrics(prepared, reference,
                                                         tmp_path):
  _, ref_rows, ref_state = reference
  workdir = str(tmp_path / "again")
  rc, _, err = lh.run(_args(prepared, workdir))
  assert rc == 0, err
  assert lh.deterministic(lh.metrics(workdir)) == ref_rows
  lh.assert_trees_equal(lh.restore_latest(workdir)[0].params, ref_state.params)
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  env = record["environment"]
  assert env["packages"]["jax"] and env["devices"] and env["command"]
  assert "--seed=3" in record["repeat"] and "--mlp_hidden=16" in record["repeat"]


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(prepared, reference):
  ref_dir = reference[0]
  before = lh.snapshot(ref_dir)
  rc, out, err = lh.run(_args(prepared, ref_dir))
  assert rc == 0, err
  assert "already finished" in out
  assert lh.snapshot(ref_dir) == before


_SAVER = r"""
import sys
import jax
from mnist_jax.rundir import checkpoints
ck = checkpoints.Checkpointer(sys.argv[1])
def big(seed):  # 128 MB of incompressible floats: a save takes a while.
  return {"w": jax.random.uniform(jax.random.PRNGKey(seed), (32, 1024, 1024))}
ck.save(1, big(1), {"epoch": 1})
ck.wait()
ck.save(2, big(2), {"epoch": 2})
print("saving", flush=True)
ck.wait()
print("saved", flush=True)
"""


@pytest.mark.slow
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  import jax  # pylint: disable=g-import-not-at-top
  from mnist_jax.rundir import checkpoints  # pylint: disable=g-import-not-at-top
  p = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)],
                       cwd=lh.ROOT, stdout=subprocess.PIPE, text=True,
                       env=lh.child_env())
  assert p.stdout.readline().strip() == "saving"
  p.kill()
  p.wait()
  folder = tmp_path / "checkpoints"
  names = os.listdir(folder)
  assert "1" in names and "2" not in names, names
  assert any(".orbax-checkpoint-tmp" in n for n in names), names  # Mid-save.
  template = {"w": jax.numpy.zeros((32, 1024, 1024))}
  restored, meta = checkpoints.Checkpointer(str(tmp_path), read_only=True).restore(
      template)
  assert meta["epoch"] == 1
  lh.assert_trees_equal(restored, {"w": jax.random.uniform(
      jax.random.PRNGKey(1), (32, 1024, 1024))})
  # A resumed run saves the same step again over the unfinished attempt.
  writer = checkpoints.Checkpointer(str(tmp_path))
  assert writer.latest_step() == 1
  again = {"w": jax.random.uniform(jax.random.PRNGKey(3), (32, 1024, 1024))}
  writer.save(2, again, {"epoch": 2})
  writer.close()
  assert sorted(os.listdir(folder)) == ["1", "2"]
  restored, meta = checkpoints.Checkpointer(str(tmp_path), read_only=True).restore(
      template)
  assert meta["epoch"] == 2
  lh.assert_trees_equal(restored, again)


@pytest.mark.slow
def test_checkpoint_every_and_keep(prepared, tmp_path):
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax.training import train  # pylint: disable=g-import-not-at-top
  mnist_dir, data_dir = prepared
  config = models.get_config(
      "linear", "seed", epochs=5, batch_size=100, checkpoint_every=2,
      keep_checkpoints=2, mnist_dir=mnist_dir, data_dir=data_dir)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, stream=open(os.devnull, "w"))
  # 6 steps per epoch; saves after epochs 2, 4 and 5 (the last); keeps two.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == [
      "24", "30"]
  _, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == 5 and meta["done"]


@pytest.mark.slow
def test_replicas_stopped_mid_epoch_then_resumed_equal_uninterrupted(prepared,
                                                                      tmp_path):
  """--num_seeds resumes mid-epoch too; on a split host, from both devices."""
  args = lambda name: _args(prepared, str(tmp_path / name), "--num_seeds=2",
                            "--epochs=2")
  rc, _, err = lh.run(args("whole"))
  assert rc == 0, err
  whole = lh.deterministic(lh.metrics(str(tmp_path / "whole")))
  assert len(whole[-1]["members"]) == 2
  rc, _, err, _ = lh.run_and_signal(args("stopped"), lh.SIGTERM, epoch=2)
  assert rc == 128 + lh.SIGTERM, err
  from mnist_jax.rundir import checkpoints  # pylint: disable=g-import-not-at-top
  _, meta = checkpoints.Checkpointer(str(tmp_path / "stopped"),
                                     read_only=True).read_meta()
  assert meta["epoch"] == 1 and 0 < meta["epoch_step"] < 33, meta
  rc, out, err = lh.run(args("stopped"))
  assert rc == 0, err
  assert "resuming" in out
  assert lh.deterministic(lh.metrics(str(tmp_path / "stopped"))) == whole

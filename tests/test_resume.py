"""Killed, preempted or interrupted runs resume to exactly the uninterrupted result."""

import os

import pytest

import launch_helpers as lh

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5.
FLAGS = ("--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
         "--chunk_steps=5", "--seed=3")


def _args(prepared, workdir, *extra):
  mnist_dir, data_dir = prepared
  return [*FLAGS, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}", *extra]


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """An uninterrupted run: (workdir, metrics rows, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, _, err = lh.run(_args(prepared, workdir))
  assert rc == 0, err
  state, _ = lh.restore_latest(workdir)
  return workdir, lh.deterministic(lh.metrics(workdir)), state


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

  rc, out, err = lh.run(args)
  assert rc == 0, err
  assert "resuming" in out
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


def test_rerunning_a_finished_run_changes_nothing(prepared, reference):
  ref_dir = reference[0]
  before = lh.snapshot(ref_dir)
  rc, out, err = lh.run(_args(prepared, ref_dir))
  assert rc == 0, err
  assert "already finished" in out
  assert lh.snapshot(ref_dir) == before

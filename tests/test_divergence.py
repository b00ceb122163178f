"""A non-finite loss stops the run, names the step, keeps the last good
checkpoint; members once all have (one alone: test_sweep.py)."""

import dataclasses
import os
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fresh_state
import launch_helpers as lh
from mnist_jax import models
from mnist_jax.errors import Diverged
from mnist_jax.rundir import record
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax.training import train

# Adam at 1e38 overflows at once, before the first checkpoint; NAN, warming up
# towards it, overflows in epoch 2 (37-step epochs), after a checkpoint.
AT_ONCE = ("--noreport", "--model=linear", "--optimizer=adam",
           "--schedule=constant", "--learning_rate=1e38", "--epochs=2",
           "--batch_size=100")
NAN = ("--model=linear", "--batch_size=16", "--chunk_steps=8",
       "--optimizer=adam", "--schedule=warmup_cosine", "--label_smoothing=0.1",
       "--learning_rate=1e38", "--warmup_epochs=100", "--epochs=200")


def _diverges(args, cwd, kept):
  """The lines of `args` run twice: exit 3 and one line naming the step and
  the checkpoint kept (`kept`); then exit 3 again, nothing written."""
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3 and "Traceback" not in err, err
  [line] = err.strip().splitlines()
  assert line.startswith("error: training diverged: the loss became "
                         "non-finite at step ") or line.startswith(
                             "error: training diverged: the mean "), line
  assert f"; {kept}" in line and line.endswith(
      "; lower --learning_rate or set --grad_clip and train again"), line
  before = lh.snapshot(cwd)
  rc, _, again = lh.run(args, cwd=cwd)
  assert rc == 3 and lh.snapshot(cwd) == before, again
  [again] = again.strip().splitlines()
  return line, again


@pytest.mark.slow
def test_a_diverged_run_stops_in_one_line_and_is_not_repeated(prepared,
                                                              tmp_path):
  """Report refuses a run with no checkpoint (predict's note on one that
  has: test_resume.py); the command then printed trains."""
  cwd, (mnist_dir, data_dir) = str(tmp_path), prepared
  data = (f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}")
  _, again = _diverges([*AT_ONCE, *data], cwd,
                       "no checkpoint had been saved yet")
  [name] = os.listdir(os.path.join(cwd, "runs"))
  assert again.startswith(f"error: runs/{name} trained these settings and "
                          "diverged (at step "), again
  rc, out, err = lh.run(["--mode=report", f"--workdir=runs/{name}"], cwd=cwd)
  [line] = err.splitlines()
  assert rc == 1 and line.startswith(
      f"error: runs/{name} has no checkpoint: its training diverged at step "
  ) and line.endswith(", before the first was saved; lower --learning_rate "
                      "or set --grad_clip in its training command and run it "
                      f"with --workdir=runs/{name} --overwrite"), (out, err)
  own = shlex.split(record.read_record(os.path.join(cwd, "runs", name))[
      "repeat"])[2:]  # Its flags, after "python launch.py".
  rc, _, err = lh.run([*own, f"--workdir=runs/{name}",
                       "--learning_rate=0.001", "--overwrite"], cwd=cwd)
  assert rc == 0, err
  assert record.read_config(os.path.join(cwd, "runs", name)).learning_rate == (
      1e-3)

  workdir = os.path.join(cwd, "nan")
  line, again = _diverges([*NAN, *data, f"--workdir={workdir}"], cwd,
                          "the last good checkpoint, "
                          f"{workdir}/checkpoints/")
  found = re.search(r"at step (\d+) \(epoch (\d+), step (\d+) of (\d+)\)",
                    line)
  step, epoch, epoch_step, per_epoch = map(int, found.groups())
  assert per_epoch == 600 // 16 and step == (epoch - 1) * per_epoch + epoch_step
  assert epoch >= 2, "diverged before the first checkpoint: raise warmup_epochs"
  assert again.startswith(f"error: {workdir} diverged with these settings (")
  assert "resuming would diverge again" in again
  assert "add --overwrite to start it over" in again
  rows = lh.metrics(workdir)
  assert [(r["epoch"], r.get("diverged")) for r in rows] == [
      *((e, None) for e in range(1, epoch)), (epoch, True)]
  assert rows[-1]["step"] == step and rows[-1]["message"] == line[7:]
  state, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == epoch - 1 and int(state.step) < step
  assert f"{workdir}/checkpoints/{int(state.step)}, is kept" in line
  assert all(np.isfinite(np.asarray(p)).all()
             for p in jax.tree.leaves(state.params))


def test_a_chunk_reports_its_first_non_finite_step():
  """An infinite rate: step 2's loss is the first (one step: its update's);
  parameters already non-finite: the chunk's start (none: test_train.py)."""
  config = dataclasses.replace(  # inf: past the flags' parser.
      models.get_config("linear", "seed", batch_size=4),
      learning_rate=float("inf"))
  state = fresh_state(config, steps_per_epoch=8)
  images = np.random.default_rng(0).integers(0, 255, (32, 28, 28, 1), np.uint8)
  labels = jnp.arange(32, dtype=jnp.int32) % 10
  order = jnp.arange(32, dtype=jnp.int32).reshape(8, 4)
  chunk = lambda state, count=8: jax.jit(train.train_chunk)(
      state, metrics.zeros(num_classes=10), order, images, labels, 0, count)
  _, sums, bad = chunk(state, count=1)
  assert np.isfinite(float(sums["loss"])) and int(bad) == 1
  state, sums, bad = chunk(state)
  assert int(bad) == 2 and int(state.step) == 8
  assert not np.isfinite(float(sums["loss"]))
  state, sums, bad = chunk(state)
  assert int(bad) == 8 and int(state.step) == 16


_members = lambda count: members_lib.from_config(models.get_config(
    "linear", "seed", num_seeds=count))


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


def test_an_epoch_mean_that_overflows_is_divergence():
  """Of any split, unless a member's metrics are finite; a split of no
  examples (NaN by definition) is not divergence."""
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
  with pytest.raises(Diverged, match="the mean val accuracy of epoch 3 is nan"):
    check(_members(2), {"train": [fine, inf], "val": [nan, fine]}, 3, 111, 37)
  with pytest.raises(Diverged, match="the mean test loss of epoch 3 is inf"):
    check(_members(1), {"test": [inf]}, 3, 111, 37)

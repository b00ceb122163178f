"""Killed, preempted or interrupted runs resume to exactly the uninterrupted result."""

import io
import json
import os
import shutil
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import launch_helpers as lh
from conftest import steps_only
from mnist_jax.training import population
from mnist_jax import models
from mnist_jax.results import run as results
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import control
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib
from mnist_jax import modes as run_lib
from mnist_jax.training import loop

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5. No
# report: --mode=report writes it where a test reads it.
FLAGS = ("--noreport", "--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
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
  return {**checkpoints.record(CONFIG, epoch=1, step=38, epoch_step=5,
                               sums=sums), **changes}


def test_record_holds_where_the_run_stands():
  meta = _meta()
  assert meta == {"epoch": 1, "epoch_step": 5, "step": 38, "model": "mlp",
                  "seed": 3, "done": False,
                  "sums": {"loss": 4.5, "correct": 30.0, "count": 80.0}}
  end = checkpoints.record(CONFIG, epoch=3, step=99, done=True, time_s=12.5)
  assert end["epoch_step"] == 0 and end["done"] and "sums" not in end
  assert end["time_s"] == 12.5


LINEAR = models.get_config("linear", "seed", epochs=3, seed=3)


def _linear_state():
  """A fresh linear model's train state, on the device: as a run starts."""
  model, _ = models.build(LINEAR, say=lambda _: None)
  return population.initial_state(LINEAR, model, 33, (28, 28, 1))


def _hooks(workdir, existing, stream=None):
  """The run folder's hooks of a linear run of 33-step epochs."""
  return run_lib.RunFolder(workdir, LINEAR, stream or io.StringIO(),
                           types.SimpleNamespace(signum=None),
                           existing=existing, overwrite=False, data_time=0.0)


def _saved_at(workdir, step, **where):
  """A fresh run folder whose one checkpoint is the state at `step`."""
  hooks = _hooks(workdir, existing=False)
  state, start = hooks.start(_linear_state(), steps_only(33))
  assert start == loop.Start()
  state = state.replace(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(
      lambda p: p + 1, state.params))
  hooks.save(state, **where)
  hooks.close()
  return state


def test_a_mid_epoch_checkpoint_resumes_at_its_step_with_its_sums(tmp_path):
  workdir = str(tmp_path / "run")
  sums = {"loss": np.float32(4.5), "correct": np.float32(30.0),
          "count": np.float32(80.0)}
  saved = _saved_at(workdir, 38, epoch=1, epoch_step=5, sums=sums)
  console = io.StringIO()
  hooks = _hooks(workdir, existing=True, stream=console)
  state, start = hooks.start(_linear_state(), steps_only(33))
  assert (start.epoch, start.epoch_step, start.finished) == (2, 5, False)
  assert {k: v for k, v in start.sums.items()} == sums
  assert all(v.dtype == np.float32 for v in start.sums.values())
  assert int(state.step) == 38
  lh.assert_trees_equal(state.params, saved.params)
  assert (f"resuming {workdir} at step 38 (epoch 2, step 5 of 33)"
          in console.getvalue())
  hooks.close()


def test_an_epoch_resumed_mid_way_is_marked_partial(prepared, tmp_path,
                                                  monkeypatch):
  """The first epoch after a resume 5 steps in times only its other 32
  (of 37) steps: its row and line say so. The wall time printed is the final row's,
  the data's preparation (1 s here) apart and printed on its own."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  config = LINEAR.replace(batch_size=16, chunk_steps=5, report=False,
                          mnist_dir=mnist_dir, data_dir=data_dir,
                          workdir=workdir)
  hooks = run_lib.RunFolder(workdir, config, io.StringIO(),
                            types.SimpleNamespace(signum=None),
                            existing=False, overwrite=False, data_time=0.0)
  state, _ = hooks.start(_linear_state(), steps_only(37))
  hooks.save(state.replace(step=jnp.asarray(42, jnp.int32)), epoch=1,
             epoch_step=5, sums=_meta()["sums"])
  hooks.close()
  before = hooks.seconds()  # At least the seconds its checkpoint recorded.
  load, loaded = run_lib.pipeline.load, []

  def slow_load(c):
    time.sleep(1.0)
    data = load(c)
    loaded.append(time.perf_counter())
    return data

  monkeypatch.setattr(run_lib.pipeline, "load", slow_load)
  console = io.StringIO()
  final = run_lib.train_and_evaluate(config, workdir, stream=console)
  since_loaded = time.perf_counter() - loaded[0]
  rows = lh.metrics(workdir)
  assert [r.get("partial_steps") for r in rows[:-1]] == [32, None]
  said = console.getvalue()
  assert "(partial epoch: 32 of 37 steps)" in said
  assert said.count("partial epoch") == 1
  assert 1.0 <= final["data_ready_s"] and "data_time_s" not in final
  assert f"data ready in {final['data_ready_s']:.1f}s" in said
  assert final["wall_time_s"] <= before + since_loaded  # The sleep is not in.
  assert f"wall time {final['wall_time_s']:.1f}s;" in said


def test_a_checkpoint_of_the_end_trains_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  _saved_at(workdir, 99, epoch=3, done=True)
  hooks = _hooks(workdir, existing=True)
  _, start = hooks.start(_linear_state(), steps_only(33))
  assert start.finished and start.epoch == 4 and start.sums is None
  hooks.close()


def _sent(workdir, monkeypatch, main):
  """What the hooks of process 0 (`main`) or another hand devices.from_main
  as they start on `workdir` (process 0's values go to every process)."""
  sent = []
  monkeypatch.setattr(run_lib.devices, "is_main", lambda: main)
  monkeypatch.setattr(run_lib.jax, "process_count", lambda: 2)
  monkeypatch.setattr(run_lib.devices, "from_main",
                      lambda tree: sent.append(tree) or tree)
  hooks = _hooks(workdir, existing=True)
  hooks.start(_linear_state(), steps_only(33))
  hooks.close()
  [tree] = sent
  return tree


def _numeric(leaf) -> bool:
  try:
    return np.asarray(leaf).dtype.kind in "biuf"
  except TypeError:  # A typed PRNG key.
    return False


def test_the_restored_start_can_go_to_every_process(tmp_path, monkeypatch):
  """The state and start process 0 restores go to the other processes as one
  broadcast pytree: numeric arrays only, of the same structure as what the
  others hold (a fresh state and start). A run of several processes (say
  --num_processes=2) resumes mid-epoch through this."""
  workdir = str(tmp_path / "run")
  sums = {k: np.float32(1.0) for k in ("loss", "correct", "count")}
  _saved_at(workdir, 38, epoch=1, epoch_step=5, sums=sums)
  main = _sent(workdir, monkeypatch, main=True)
  other = _sent(workdir, monkeypatch, main=False)
  parts, position, _ = main
  assert np.asarray(position).tolist() == [2, 5, 0]  # epochs from 1
  assert np.asarray(other[1]).tolist() == [1, 0, 0]  # a fresh start
  assert set(parts) == set(checkpoints.PARTS)
  bad = [jax.tree_util.keystr(path) for path, leaf in
         jax.tree_util.tree_flatten_with_path(main)[0] if not _numeric(leaf)]
  assert not bad, f"not broadcastable: {bad}"
  assert jax.tree.structure(main) == jax.tree.structure(other)


def test_a_process_that_writes_no_files_writes_no_checkpoint(tmp_path,
                                                             monkeypatch):
  monkeypatch.setattr(run_lib.devices, "is_main", lambda: False)
  workdir = str(tmp_path / "run")
  hooks = _hooks(workdir, existing=False)
  state, _ = hooks.start(_linear_state(), steps_only(33))
  assert hooks.kept() == "no checkpoint had been saved yet"
  state = state.replace(step=jnp.int32(5))
  hooks.save(state, epoch=0, epoch_step=5, sums=_meta()["sums"])
  assert hooks.saved == 5
  # Its Ctrl-C lines speak of process 0's checkpoint, not of none.
  assert hooks.kept() == "process 0 keeps its last good checkpoint"
  hooks.stop.signum = signal.SIGINT
  with pytest.raises(control.Preempted, match=(
      "^stopped by SIGINT at step 5 \\(epoch 1, step 5 of 33\\); the "
      f"checkpoint is in {checkpoints.directory(workdir)}$")):
    hooks._stop_if_asked(state, 1, 5, _meta()["sums"])
  hooks.close()
  assert not os.path.exists(workdir)


def test_the_hooks_record_the_runs_seconds_and_keep_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  hooks = _hooks(workdir, existing=False)
  state, _ = hooks.start(_linear_state(), steps_only(33))
  hooks.save(state.replace(step=jnp.int32(33)), epoch=1)
  hooks.save(state.replace(step=jnp.int32(38)), epoch=1, epoch_step=5,
             sums=_meta()["sums"])
  assert hooks.kept() == (f"the last good checkpoint, "
                          f"{checkpoints.directory(workdir)}/38, is kept")
  hooks.close()
  meta = checkpoints.latest_meta(workdir)
  assert meta["step"] == 38 and meta["epoch_step"] == 5
  assert meta["sums"] == {"loss": 4.5, "correct": 30.0, "count": 80.0}
  assert 0 < meta["time_s"] < 60  # The run's seconds so far, as of the save.
  # A resumed process counts on from the checkpoint's seconds.
  again = _hooks(workdir, existing=True)
  again.start(_linear_state(), steps_only(33))
  assert again.seconds() >= meta["time_s"]
  again.close()


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """An uninterrupted run: (workdir, metrics rows, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, _, err = lh.run(_args(prepared, workdir))
  assert rc == 0, err
  state, _ = lh.restore_latest(workdir)
  return workdir, lh.deterministic(lh.metrics(workdir)), state


@pytest.mark.slow
# SIGINT takes SIGTERM's path (control.py); Ctrl-C's own messages:
# test_resume_command.py. SIGKILL, at every phase of a run (mid-epoch, in a
# save, in the report): test_run_folder_safety.py's kill -9 test.
def test_stopped_mid_epoch_then_resumed_equals_uninterrupted(
    prepared, reference, tmp_path):
  ref_dir, ref_rows, ref_state = reference
  workdir = str(tmp_path / "run")
  args = _args(prepared, workdir)
  rc, _, err, marker = lh.run_and_signal(args, lh.SIGTERM, epoch=2)
  assert marker.startswith("@chunk epoch=2 done=")
  rows = lh.metrics(workdir)
  assert [r["epoch"] for r in rows] == [1]  # Stopped inside epoch 2.
  assert rc == 128 + lh.SIGTERM, err
  assert "Traceback" not in err
  assert err.strip().endswith("; run the same command again to resume"), err
  _, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == 1 and 0 < meta["epoch_step"] < 33, meta
  assert meta["step"] == 33 + meta["epoch_step"]
  assert meta["time_s"] > 0

  rc, out, err = lh.run(args)
  assert rc == 0, err
  assert "resuming" in out
  # The run's time is both processes' time.
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
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  env = record["environment"]
  assert env["packages"]["jax"] and env["devices"] and env["command"]
  assert "--seed=3" in record["repeat"] and "--mlp_hidden=16" in record["repeat"]


def test_a_finished_run_whose_log_was_cut_is_still_finished(reference,
                                                             tmp_path, capsys):
  """A finished run whose metrics.jsonl lost its end (a disk that filled, a
  copy cut short): --mode=report completes it again from its last
  checkpoint, its final row written again; it is never taken for an
  unfinished run of 1 epoch."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  assert len(lines) == 4  # Epochs 1 to 3, then the final row.
  with open(path, "w") as f:
    f.write(lines[0] + lines[1][:len(lines[1]) // 2])
  run_lib.rewrite_report(workdir)
  out = capsys.readouterr().out
  assert "unfinished" not in out and "the run is finished" in out, out
  assert record_lib.status(workdir)[0] == "finished"
  with open(os.path.join(workdir, "report.md")) as f:
    assert "unfinished" not in f.read()
  rows = metrics_log.read_metrics(path)
  assert [r.get("epoch") for r in rows] == [1, None]
  assert rows[-1]["epochs_run"] == 3 and rows[-1]["test_accuracy"] == (
      metrics_log.final_metrics(reference[0])["test_accuracy"])


def test_report_on_a_run_that_diverged_later_says_what_to_change(
    reference, tmp_path, capsys):
  """A run that diverged in epoch 3, its epoch-2 checkpoint kept: report and
  predict give that checkpoint's results, and their note says that its own
  settings would diverge again and what to change."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "99"))
  rows = lh.metrics(workdir)[:2] + [{
      "epoch": 3, "step": 70, "diverged": True, "message": "training diverged"}]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({**record, "finished": False}, f)
  assert record_lib.status(workdir)[0] == "diverged"
  run_lib.rewrite_report(workdir)
  note = (f"note: {workdir} diverged (training diverged): these results are "
          "of its last good checkpoint, of epoch 2; its settings would diverge "
          "again: lower --learning_rate or set --grad_clip, and add "
          "--overwrite to train it over (which deletes this one)")
  assert note in capsys.readouterr().out.splitlines()[-1]
  image = str(tmp_path / "seven.png")
  picture = np.full((28, 28), 255, np.uint8)
  picture[4:24, 12:16] = 0
  Image.fromarray(picture).save(image)
  err = io.StringIO()
  results.print_predictions(workdir, [image], out=io.StringIO(), err=err)
  assert err.getvalue().splitlines() == [note]


def test_report_restores_the_weights_of_the_final_row(reference, tmp_path,
                                                      capsys):
  """--mode=report evaluates the restored checkpoint to the test metrics the
  run logged, and leaves the checkpoints as they were."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  final = metrics_log.final_metrics(workdir)
  before = lh.snapshot(os.path.join(workdir, "checkpoints"))
  result = run_lib.rewrite_report(workdir)
  assert "note:" not in capsys.readouterr().out
  assert result["accuracy"] == final["test_accuracy"]
  assert abs(result["loss"] - final["test_loss"]) <= 1e-6
  assert lh.snapshot(os.path.join(workdir, "checkpoints")) == before


def _unfinished(reference, tmp_path):
  """A copy of the reference run as stopped after its epoch 2 (step 66)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "99"))
  rows = lh.metrics(workdir)[:2]  # Read before open(..., "w") empties it.
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({**record, "finished": False}, f)
  return workdir


def test_report_on_an_unfinished_run_says_how_to_train_it_on(reference,
                                                            tmp_path, capsys):
  workdir = _unfinished(reference, tmp_path)
  run_lib.rewrite_report(workdir)
  out = capsys.readouterr().out
  assert (f"note: {workdir} is unfinished (epoch 2 of 3): these results are of "
          "its latest checkpoint; to train it on, run its training command "
          "again") in out


@pytest.mark.slow
def test_an_unfinished_runs_own_command_completes_it(reference, tmp_path):
  """Its training command (config.json's "repeat", with its --workdir), as
  the report's note says, resumes the checkpoint to the uninterrupted
  result."""
  _, ref_rows, ref_state = reference
  workdir = _unfinished(reference, tmp_path)
  with open(os.path.join(workdir, "config.json")) as f:
    command = json.load(f)["repeat"]
  rc, out, err = lh.follow(f"{command} --workdir={workdir}")
  assert rc == 0, err
  assert f"resuming {workdir} at step 66 (epoch 3, step 0 of 33)" in out, out
  assert lh.deterministic(lh.metrics(workdir)) == ref_rows
  state, meta = lh.restore_latest(workdir)
  assert meta["done"] and meta["format"] == checkpoints.FORMAT
  lh.assert_trees_equal(state.params, ref_state.params)
  lh.assert_trees_equal(state.opt_state, ref_state.opt_state)


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
from mnist_jax.rundir import control
ck = checkpoints.manager(sys.argv[1], keep=3)
def big(seed):  # 128 MB of incompressible floats: a save takes a while.
  return {"params": {"w": jax.random.uniform(jax.random.PRNGKey(seed),
                                             (32, 1024, 1024))}}
checkpoints.save(ck, 1, big(1), {"epoch": 1})
ck.wait_until_finished()
checkpoints.save(ck, 2, big(2), {"epoch": 2})
print("saving", flush=True)
ck.close()
print("saved", flush=True)
"""


@pytest.mark.slow
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  p = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)],
                       cwd=lh.ROOT, stdout=subprocess.PIPE, text=True,
                       env=lh.child_env())
  assert p.stdout.readline().strip() == "saving"
  p.kill()
  p.wait()
  folder_ = tmp_path / "checkpoints"
  names = os.listdir(folder_)
  assert "1" in names and "2" not in names, names
  assert any(".orbax-checkpoint-tmp" in n for n in names), names  # Mid-save.
  big = lambda seed: {"params": {"w": jax.random.uniform(
      jax.random.PRNGKey(seed), (32, 1024, 1024))}}
  template = {"params": {"w": jnp.zeros((32, 1024, 1024))}}
  restored, meta = checkpoints.read(str(tmp_path), template)
  assert meta["epoch"] == 1
  lh.assert_trees_equal(restored, big(1))
  # A resumed run saves the same step again over the unfinished attempt.
  writer = checkpoints.manager(str(tmp_path), keep=3)
  assert writer.latest_step() == 1
  again = big(3)
  checkpoints.save(writer, 2, again, {"epoch": 2})
  writer.close()
  assert sorted(os.listdir(folder_)) == ["1", "2"]
  restored, meta = checkpoints.read(str(tmp_path), template)
  assert meta["epoch"] == 2
  lh.assert_trees_equal(restored, again)


@pytest.mark.slow
def test_checkpoint_every_and_keep(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  config = models.get_config(
      "linear", "seed", epochs=5, batch_size=100, checkpoint_every=2,
      keep_checkpoints=2, report=False, mnist_dir=mnist_dir,
      data_dir=data_dir)
  workdir = str(tmp_path / "run")
  run_lib.train_and_evaluate(config, workdir, stream=io.StringIO())
  # 6 steps per epoch; saves after epochs 2, 4 and 5 (the last); keeps two.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == [
      "24", "30"]
  _, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == 5 and meta["done"]



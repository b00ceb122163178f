"""A resumed run equals an uninterrupted one, bit for bit, over layouts, members
and BatchNorm (killed anywhere: test_run_folder_safety.py); the run folder's."""

import fcntl
import io
import os
import shutil
import signal
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import initial_state, steps_only, write_idx_dir
import launch_helpers as lh
import parallel_worker as pw
from mnist_jax import files
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.results import run as results
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import control
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib

SWEEP = pw.tiny("mlp", num_seeds=2, sweep="learning_rate=1e-3,3e-3")


def core(name, model, settings, stop, parallel="none", devices=1, slow=True):
  return pytest.param(model, settings, stop, parallel, devices, id=name,
                      marks=[pytest.mark.slow] * slow + [pytest.mark.floors] * (
                          devices > 1))


@pytest.mark.parametrize("model,settings,stop,parallel,devices", [
    core("mlp_mid_epoch", "mlp", pw.tiny("mlp"), "chunk", slow=False),
    core("cnn_bn_mid_epoch", "cnn", pw.tiny(
        "cnn", cnn_batch_norm=True, impl="stock", learning_rate=3e-3), "chunk"),
    core("members_at_epoch_end", "mlp", SWEEP, "epoch"),
    core("gru_sharded_over_2_devices", "gru", pw.tiny("gru"), "chunk",
         "sharded", 2),
    core("members_split_over_2_devices", "mlp", SWEEP, "chunk", "auto", 2),
    core("mlp_pmap_over_2_devices", "mlp", pw.tiny("mlp"), "chunk", "pmap", 2)])
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    tmp_path, model, settings, stop, parallel, devices):
  """Stopped after epoch 1 or mid-epoch 2, resumed from its checkpoint: rows
  (less timing), final row, every part of the state a checkpoint holds."""
  spec = dict(model=model, settings=settings, parallel=parallel, epochs=2)
  out = pw.runs(tmp_path, {"whole": spec, "resumed": dict(spec, stop=stop)},
                devices)
  whole, resumed = out["whole"], out["resumed"]
  record, got = whole["record"], resumed["record"]
  assert record["chunks"] == [[e, d] for e in (1, 2) for d in (0, 3, 6)]
  assert got["parallel"]["devices"] == devices
  assert got["chunks"] == record["chunks"][3 + (stop == "chunk"):]
  assert (lh.deterministic(got["rows"] + [got["final"]]) ==
          lh.deterministic(record["rows"][1:] + [record["final"]]))
  for part in checkpoints.PARTS:
    np.testing.assert_array_equal(np.concatenate(resumed["state"][part]),
                                  np.concatenate(whole["state"][part]),
                                  err_msg=part)


# The run folder's hooks, on a linear model of 33-step epochs.
LINEAR = models.get_config("linear", "seed", epochs=3, seed=3)
SUMS = {"loss": np.float32(4.5), "correct": np.float32(30.0),
        "count": np.float32(80.0)}


def _hooks(workdir, existing, stop=None, config=LINEAR):
  return modes.RunFolder(workdir, config, io.StringIO(),
                         stop or types.SimpleNamespace(signum=None),
                         existing=existing, overwrite=False, data_time=0.0)


def test_a_stop_before_the_first_step_has_nothing_to_save(tmp_path):
  """Exit 130 for SIGINT (a stop after steps: test_run_folder_safety.py)."""
  hooks = _hooks(str(tmp_path / "run"), False, stop=control.StopRequest())
  state, _ = hooks.start(initial_state(LINEAR, 33), steps_only(33))
  hooks.stop.signum = signal.SIGINT
  with pytest.raises(control.Preempted) as caught:
    hooks.chunk(state, 1, 0, None)
  assert str(caught.value) == ("stopped by SIGINT before the first step; "
                               "nothing to save")
  assert caught.value.exit_code == 130


def _config(prepared, workdir, **settings):
  """LINEAR in 37-step epochs of 16 examples, in chunks of 5."""
  return LINEAR.replace(batch_size=16, chunk_steps=5, workdir=workdir,
                        **prepared.settings, **settings)


def test_a_run_resumes_mid_epoch_where_its_checkpoint_stood(
    prepared, tmp_path, monkeypatch):
  """At its step, its seconds counting on; that epoch times its other 32 of 37
  steps (row and line say so); the data's 1 s is apart from the wall time."""
  workdir = str(tmp_path / "run")
  config = _config(prepared, workdir, report=False)
  hooks = _hooks(workdir, existing=False, config=config)
  state, _ = hooks.start(initial_state(LINEAR, 37), steps_only(37))
  hooks.started -= 1000  # A run that trained 1000 s before this checkpoint.
  hooks.save(state.replace(step=jnp.asarray(42, jnp.int32)), epoch=1,
             epoch_step=5, sums=SUMS)
  hooks.close()
  before = hooks.seconds()  # At least the seconds its checkpoint recorded.
  load, loaded = modes.pipeline.load, []

  def slow_load(c):
    time.sleep(1.0)
    data = load(c)
    loaded.append(time.perf_counter())
    return data

  monkeypatch.setattr(modes.pipeline, "load", slow_load)
  console = io.StringIO()
  final = modes.train_and_evaluate(config, workdir, stream=console)
  since_loaded = time.perf_counter() - loaded[0]
  said = console.getvalue()
  assert f"resuming {workdir} at step 42 (epoch 2, step 5 of 37)" in said
  rows = lh.metrics(workdir)
  assert [r.get("partial_steps") for r in rows[:-1]] == [32, None]
  assert rows[0]["step"] == 74 and rows[0]["elapsed_s"] > 1000
  assert "(partial epoch: 32 of 37 steps)" in said
  assert said.count("partial epoch") == 1
  assert 1.0 <= final["data_ready_s"] and "data_time_s" not in final
  assert f"data ready in {final['data_ready_s']:.1f}s" in said
  assert final["wall_time_s"] <= before + since_loaded  # The sleep is not in.
  assert f"wall time {final['wall_time_s']:.1f}s;" in said


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
  """A finished 5-epoch linear run, saved after epochs 2, 4 and 5, keeping 2."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  config = _config(prepared, workdir, epochs=5, checkpoint_every=2,
                   keep_checkpoints=2, report=False, analyses=False)
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  return workdir


NOTES = {
    "unfinished": "note: {w} is unfinished (epoch 4 of 5): these results are "
                  "of its latest checkpoint; to train it on, run its training "
                  "command again",
    "training": "note: {w} is still training (epoch 4 of 5 logged): these "
                "results are of its latest checkpoint, of epoch 4",
    "diverged_later": "note: {w} diverged (training diverged): these results "
                      "are of its last good checkpoint, of epoch 4; its "
                      "settings would diverge again: lower --learning_rate or "
                      "set --grad_clip, and add --overwrite to train it over "
                      "(which deletes this one)"}


@pytest.mark.parametrize("state", ["finished", "log_cut", *NOTES])
def test_predict_and_report_restore_the_right_checkpoint_and_say_which(
    finished, tmp_path, state):
  """Finished (its log's end lost too: --mode=report writes the final row
  again): its final checkpoint. Unfinished, still training (its lock held) or
  diverged: its latest, and a note saying what it is and what to do."""
  workdir = shutil.copytree(finished, str(tmp_path / "run"))
  log = metrics_log.MetricsLog(workdir)
  if state in NOTES:  # As killed after its next-to-last checkpoint.
    shutil.rmtree(os.path.join(checkpoints.directory(workdir),
                               str(checkpoints.steps(workdir)[-1])))
    log.resume(checkpoints.latest_meta(workdir)["epoch"])
    files.write_json(os.path.join(workdir, "config.json"),
                     {**record_lib.read_record(workdir), "finished": False})
  assert checkpoints.steps(workdir) == [148] + [185] * (state not in NOTES)
  if state == "log_cut":
    with open(log.path) as f:
      lines = f.read().splitlines(keepends=True)
    files.write_text(log.path, "".join(lines[:-2]) +
                     lines[-2][:len(lines[-2]) // 2])
  if state == "diverged_later":
    log.write({"epoch": 5, "step": 170, "diverged": True,
               "message": "training diverged"})
  image = os.path.join(lh.ROOT, "docs", "img", "seven.png")
  out, err = io.StringIO(), io.StringIO()
  held = os.open(workdir, os.O_RDONLY)  # Another open file: another holder.
  try:
    if state == "training":
      fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    results.print_predictions(workdir, [image], out=out, err=err)
  finally:
    os.close(held)
  assert out.getvalue().startswith(f"{image}: ")
  note = NOTES.get(state, "").format(w=workdir)
  assert err.getvalue().splitlines() == [note] * bool(note)
  if state == "log_cut":
    before = lh.snapshot(checkpoints.directory(workdir))
    modes.rewrite_report(workdir)
    assert lh.snapshot(checkpoints.directory(workdir)) == before
    assert record_lib.status(workdir)[0] == "finished"
    assert lh.deterministic(lh.metrics(workdir)[-1:]) == lh.deterministic(
        lh.metrics(finished)[-1:])


STOP_S = 10.0  # docs/troubleshooting.md's bound.


@pytest.mark.slow
def test_sigterm_is_honoured_within_seconds_whatever_the_chunk(tmp_path):
  """3 CNN members in chunks of up to 10,000 steps: SIGTERM as a chunk
  starts stops within STOP_S, its checkpoint at the step the line names."""
  mnist_dir = write_idx_dir(tmp_path / "idx", n_train=6000)
  work = tmp_path / "run"
  sent = []
  rc, _, err, _ = lh.run_and_signal(
      ["--model=cnn", "--preset=seed", "--num_seeds=3", "--epochs=100",
       "--chunk_steps=10000", "--noreport", f"--mnist_dir={mnist_dir}",
       f"--data_dir={tmp_path / 'tfds'}", f"--workdir={work}"], signal.SIGTERM,
      "@chunk epoch=1", pause_s=0, timeout=600,
      on_marker=lambda: sent.append(time.monotonic()))
  took = time.monotonic() - sent[0]
  assert rc == 143, err
  line = err.strip().splitlines()[-1]
  assert line.startswith("stopped by SIGTERM at step "), line
  step = int(line.split("at step ")[1].split()[0])
  assert max(map(int, os.listdir(work / "checkpoints"))) == step
  assert took < STOP_S, (took, line)

"""A resumed run equals an uninterrupted one, bit for bit: stopped after a
checkpoint mid-epoch or as an epoch ends (as if killed there), on each
layout, with members and BatchNorm; stopped by SIGTERM or Ctrl-C anywhere in
a launch.py run, then resumed by the command its message names. Then the
run folder's restore, what its messages say, and the report's notes on
unfinished and diverged runs. (kill -9 at random moments of a run:
test_run_folder_safety.py.)
"""

import io
import json
import os
import shlex
import shutil
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import steps_only
import launch_helpers as lh
import parallel_worker as pw
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.results import run as results
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import control
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib
from mnist_jax.training import loop
from mnist_jax.training import population

SLOW, FLOORS = pytest.mark.slow, pytest.mark.floors
MLP = dict(mlp_hidden=(16,), dropout=0.3, augment=True)
SWEEP = dict(MLP, num_seeds=2, sweep="learning_rate=1e-3,3e-3")
CNN_BN = dict(cnn_features=(4, 8), cnn_dense=16, cnn_batch_norm=True)
# launch.py's runs: 540 training examples / 16 = 33 steps per epoch, in 7
# chunks of 5; no report (REPORTED: with it, its analyses aside).
FLAGS = ("--noreport", "--model=mlp", "--mlp_hidden=16", "--epochs=3",
         "--batch_size=16", "--chunk_steps=5", "--seed=3")
REPORTED = ("--noanalyses", *FLAGS[1:])
AGAIN = "; run the same command again to resume"


def _args(prepared, *flags):
  mnist_dir, data_dir = prepared
  return [*flags, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}"]


def _same(cwd, args):
  return shlex.join(["python", lh.launch_path(cwd), *args])


def core(name, model, settings, stop, parallel="none", devices=1,
         marks=(SLOW,)):
  """A run of the core (tests/parallel_worker.py) stopped after its
  checkpoint: "chunk", after the first chunk of epoch 2; "epoch", epoch 1."""
  return pytest.param(dict(model=model, settings=settings, stop=stop,
                           parallel=parallel, devices=devices),
                      id=name, marks=list(marks))


def signalled(name, signum, where, says, then="resuming", **how):
  """launch.py stopped by `signum` where run_and_signal's `where` says,
  its last line starting `says`; the command it names then says `then`."""
  return pytest.param(dict(signum=signum, where=where, says=says, then=then,
                           **how), id=name, marks=[SLOW])


END_OF_3 = "stopped by SIGINT at the end of epoch 3 (step 99);"
RESUMES = [
    core("mlp_mid_epoch", "mlp", MLP, "chunk", marks=()),
    core("members_at_epoch_end", "mlp", SWEEP, "epoch"),
    core("cnn_batch_norm_mid_epoch", "cnn", CNN_BN, "chunk"),
    core("gru_sharded_over_2_devices", "gru", dict(hidden=16, augment=True,
                                                   learning_rate=3e-2),
         "chunk", "sharded", 2, marks=(SLOW, FLOORS)),
    core("members_split_over_2_devices", "mlp", SWEEP, "chunk", "auto", 2,
         marks=(SLOW, FLOORS)),
    core("mlp_pmap_over_2_devices", "mlp", MLP, "chunk", "pmap", 2,
         marks=(SLOW, FLOORS)),
    signalled("sigterm_mid_epoch_with_overwrite", signal.SIGTERM,
              dict(epoch=2), "stopped by SIGTERM at step ", overwrite=True),
    signalled("ctrl_c_twice_without_workdir", signal.SIGINT,
              dict(epoch=2, pause_s=2, repeat=2), "stopped by SIGINT at step ",
              workdir=False),
    signalled("ctrl_c_in_the_last_chunk", signal.SIGINT,
              dict(epoch=3, at_epoch_end=True), END_OF_3,
              "completing run: its training ended at epoch 3"),
    signalled("ctrl_c_in_the_final_evaluation", signal.SIGINT,
              dict(epoch=3, at="@final_row"), END_OF_3,
              "completing run: its training ended at epoch 3"),
    signalled("ctrl_c_in_the_report", signal.SIGINT,
              dict(epoch=3, at="@write"), "interrupted (Ctrl-C)",
              "completing run: its training ended at epoch 3", report=True),
    signalled("unfinished_then_its_own_command", None, None, None,
              "resuming {workdir} at step 66 (epoch 3, step 0 of 33)"),
]


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """launch.py's uninterrupted run: (workdir, rows, final state)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, _, err = lh.run([*_args(prepared, *FLAGS), f"--workdir={workdir}"])
  assert rc == 0, err
  return workdir, lh.deterministic(lh.metrics(workdir)), lh.restore_latest(
      workdir)[0]


def _unfinished(source, workdir, epochs=2):
  """A copy of a finished run as killed after epoch `epochs`' checkpoint."""
  shutil.copytree(source, workdir)
  folders = os.path.join(workdir, "checkpoints")
  for step in sorted(os.listdir(folders), key=int)[epochs:]:
    shutil.rmtree(os.path.join(folders, step))
  rows = lh.metrics(workdir)[:epochs]  # Read before open(..., "w") empties it.
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({**record, "finished": False}, f)
  return workdir


def _signalled_and_resumed(prepared, reference, tmp_path, how):
  """The launch.py run `how` stops, then resumed: its folder."""
  cwd = str(tmp_path)
  args = _args(prepared, *(REPORTED if how.get("report") else FLAGS))
  if how.get("workdir", True):
    args.append("--workdir=run")
  if how["signum"] is None:  # Killed after epoch 2, then its own command.
    workdir = _unfinished(reference[0], os.path.join(cwd, "run"))
    with open(os.path.join(workdir, "config.json")) as f:
      command = f"{json.load(f)['repeat']} --workdir={workdir}"
  else:
    rc, out, err, _ = lh.run_and_signal(
        args + ["--overwrite"] * bool(how.get("overwrite")), how["signum"],
        cwd=cwd, **how["where"])
    assert rc == 128 + how["signum"], (out, err)
    assert "Traceback" not in err
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith(how["says"]), line
    assert line.endswith("; run the same command again without --overwrite "
                         "to resume" if how.get("overwrite") else AGAIN), line
    workdir = os.path.join(cwd, "run")
    if not how.get("workdir", True):  # A new folder under runs/.
      [name] = os.listdir(os.path.join(cwd, "runs"))
      workdir = os.path.join(cwd, "runs", name)
    _, meta = lh.restore_latest(workdir)
    if how["where"].get("at_epoch_end") or how["where"].get("at"):
      assert (meta["step"], meta["epoch"], meta["done"]) == (99, 3, True)
    else:
      assert meta["epoch"] == 1 and 0 < meta["epoch_step"] < 33, meta
    assert not record_lib.finished(workdir)
    command = _same(cwd, args)
  rc, out, err = lh.follow(command, cwd=cwd if how["signum"] else lh.ROOT)
  assert rc == 0, err
  assert how["then"].format(workdir=workdir) in out, out
  if not how.get("workdir", True):
    assert len(os.listdir(os.path.join(cwd, "runs"))) == 1
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["resumes"][0]["changed"] == {}
  return workdir


@pytest.mark.parametrize("how", RESUMES)
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    prepared, tmp_path, request, how):
  """Its rows (an epoch resumed mid-way marked as partial aside), final row,
  parameters and optimizer or model state, bit for bit."""
  if "model" in how:
    spec = {k: how[k] for k in ("model", "settings", "parallel")}
    out = pw.runs(tmp_path, {"whole": dict(spec, epochs=2), "resumed": dict(
        spec, epochs=2, stop=how["stop"])}, how["devices"])
    whole, resumed = out["whole"], out["resumed"]
    assert resumed["record"]["parallel"]["devices"] == how["devices"]
    assert (lh.deterministic(resumed["record"]["rows"]) ==
            lh.deterministic(whole["record"]["rows"][1:]))
    assert (lh.deterministic([resumed["record"]["final"]]) ==
            lh.deterministic([whole["record"]["final"]]))
    assert resumed["record"]["step"] == whole["record"]["step"]
    for part in ("params", "model_state"):
      for a, b in zip(resumed[part], whole[part]):
        np.testing.assert_array_equal(a, b)
    if how["settings"].get("cnn_batch_norm"):  # Its statistics compared.
      assert whole["model_state"][0].size
    return
  workdir, rows, state = request.getfixturevalue("reference")
  resumed = _signalled_and_resumed(prepared, (workdir, rows, state), tmp_path,
                                   how)
  assert record_lib.finished(resumed)
  assert lh.deterministic(lh.metrics(resumed)) == rows
  got, meta = lh.restore_latest(resumed)
  assert meta["done"] and meta["format"] == checkpoints.FORMAT
  lh.assert_trees_equal(got.params, state.params)
  lh.assert_trees_equal(got.opt_state, state.opt_state)


# The run folder's hooks, on a linear model of 33-step epochs.
LINEAR = models.get_config("linear", "seed", epochs=3, seed=3)
SUMS = {"loss": np.float32(4.5), "correct": np.float32(30.0),
        "count": np.float32(80.0)}


def _state():
  model, _ = models.build(LINEAR, say=lambda _: None)
  return population.initial_state(LINEAR, model, 33, (28, 28, 1))


def _hooks(workdir, existing, stream=None, stop=None, config=LINEAR):
  return modes.RunFolder(workdir, config, stream or io.StringIO(),
                         stop or types.SimpleNamespace(signum=None),
                         existing=existing, overwrite=False, data_time=0.0)


def _saved_at(workdir, step, **where):
  """A fresh run folder whose one checkpoint is the state at `step`."""
  hooks = _hooks(workdir, existing=False)
  state, start = hooks.start(_state(), steps_only(33))
  assert start == loop.Start()
  state = state.replace(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(
      lambda p: p + 1, state.params))
  hooks.save(state, **where)
  hooks.close()
  return state


@pytest.mark.parametrize("step,where,start,says", [
    (38, dict(epoch=1, epoch_step=5, sums=SUMS), (2, 5, False),
     "resuming {w} at step 38 (epoch 2, step 5 of 33)"),
    (99, dict(epoch=3, done=True), (4, 0, True), None)])
def test_a_checkpoint_resumes_where_the_run_stood(tmp_path, step, where, start,
                                                  says):
  """Mid-epoch: at its step, its epoch's metric sums (float32) restored;
  of the end: nothing left to train. The run's seconds count on."""
  workdir = str(tmp_path / "run")
  saved = _saved_at(workdir, step, **where)
  meta = checkpoints.latest_meta(workdir)
  assert meta["step"] == step and meta["epoch"] == where["epoch"]
  assert meta.get("sums") == ({k: float(v) for k, v in SUMS.items()}
                              if "sums" in where else None)
  console = io.StringIO()
  hooks = _hooks(workdir, existing=True, stream=console)
  state, got = hooks.start(_state(), steps_only(33))
  assert (got.epoch, got.epoch_step, got.finished) == start
  if says:
    assert got.sums == where["sums"]
    assert all(v.dtype == np.float32 for v in got.sums.values())
    assert int(state.step) == step
    lh.assert_trees_equal(state.params, saved.params)
    assert says.format(w=workdir) in console.getvalue()
  else:
    assert got.sums is None
  assert hooks.seconds() >= meta["time_s"] > 0
  hooks.close()


def test_the_hooks_keep_checkpoints_and_say_which(tmp_path):
  workdir = str(tmp_path / "run")
  hooks = _hooks(workdir, existing=False)
  state, _ = hooks.start(_state(), steps_only(33))
  assert hooks.kept() == "no checkpoint had been saved yet"
  hooks.save(state.replace(step=jnp.int32(33)), epoch=1)
  hooks.save(state.replace(step=jnp.int32(38)), epoch=1, epoch_step=5,
             sums=SUMS)
  assert hooks.kept() == (f"the last good checkpoint, "
                          f"{checkpoints.directory(workdir)}/38, is kept")
  hooks.close()
  assert checkpoints.steps(workdir) == [33, 38]


def test_another_process_writes_nothing_and_gets_process_0s_start(
    tmp_path, monkeypatch):
  """Process 0 restores; the state and start it sends every process are one
  broadcast pytree (numeric arrays only) of the structure the others hold
  (a fresh state and start). A process other than 0 writes no checkpoint,
  and its Ctrl-C lines speak of process 0's."""
  workdir = str(tmp_path / "run")
  _saved_at(workdir, 38, epoch=1, epoch_step=5, sums=SUMS)
  monkeypatch.setattr(modes.jax, "process_count", lambda: 2)
  sent = []
  monkeypatch.setattr(modes.devices, "from_main",
                      lambda tree: sent.append(tree) or tree)
  for main in (True, False):
    monkeypatch.setattr(modes.devices, "is_main", lambda main=main: main)
    hooks = _hooks(workdir, existing=True)
    hooks.start(_state(), steps_only(33))
    hooks.close()
  (parts, position, _), other = sent
  assert np.asarray(position).tolist() == [2, 5, 0]  # Epochs from 1.
  assert np.asarray(other[1]).tolist() == [1, 0, 0]  # A fresh start.
  assert set(parts) == set(checkpoints.PARTS)

  def numeric(leaf):
    try:
      return np.asarray(leaf).dtype.kind in "biuf"
    except TypeError:  # A typed PRNG key.
      return False

  leaves = jax.tree_util.tree_flatten_with_path(sent[0])[0]
  assert not [jax.tree_util.keystr(p) for p, x in leaves if not numeric(x)]
  assert jax.tree.structure(sent[0]) == jax.tree.structure(other)
  monkeypatch.setattr(modes.jax, "process_count", lambda: 1)

  workdir = str(tmp_path / "other")
  hooks = _hooks(workdir, existing=False)
  state, _ = hooks.start(_state(), steps_only(33))
  state = state.replace(step=jnp.int32(5))
  hooks.save(state, epoch=0, epoch_step=5, sums=SUMS)
  assert hooks.kept() == "process 0 keeps its last good checkpoint"
  hooks.stop.signum = signal.SIGINT
  with pytest.raises(control.Preempted, match=(
      "^stopped by SIGINT at step 5 \\(epoch 1, step 5 of 33\\); the "
      f"checkpoint is in {checkpoints.directory(workdir)}$")):
    hooks.chunk(state, 1, 5, SUMS)
  hooks.close()
  assert not os.path.exists(workdir)


def test_a_signal_asks_for_a_stop_and_the_handlers_are_restored():
  before = signal.getsignal(signal.SIGTERM)
  with control.StopRequest() as stop:
    assert stop.signum is None
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while stop.signum is None and time.monotonic() < deadline:
      time.sleep(0.01)
    assert stop.signum == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)  # Again: the same request.
    time.sleep(0.1)
    assert stop.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("signum,step,epoch,done,says,code", [
    (signal.SIGINT, 0, 1, 0, "stopped by SIGINT before the first step; "
     "nothing to save", 130),
    (signal.SIGTERM, 38, 2, 5, "stopped by SIGTERM at step 38 (epoch 2, step "
     "5 of 33); the checkpoint is in {where}", 143),
    (signal.SIGTERM, 66, 3, 0, "stopped by SIGTERM at the end of epoch 2 "
     "(step 66); the checkpoint is in {where}", 143)])
def test_a_stop_says_where_the_run_stopped_and_what_was_saved(
    tmp_path, signum, step, epoch, done, says, code):
  """Before the first step, 5 steps into epoch 2, at the end of epoch 2 (the
  first chunk of epoch 3), of 33-step epochs."""
  workdir = str(tmp_path / "run")
  hooks = _hooks(workdir, False, stop=control.StopRequest())
  state, _ = hooks.start(_state(), steps_only(33))
  hooks.stop.signum = signum
  with pytest.raises(control.Preempted) as caught:
    hooks.chunk(state.replace(step=jnp.int32(step)), epoch, done,
                SUMS if done else None)
  where = checkpoints.directory(workdir)
  assert str(caught.value) == says.format(where=where)
  assert caught.value.exit_code == code
  assert not step or checkpoints.steps(workdir) == [step]


def test_an_epoch_resumed_mid_way_is_marked_partial(prepared, tmp_path,
                                                    monkeypatch):
  """The first epoch after a resume 5 steps in times only its other 32
  (of 37) steps: its row and line say so. The wall time printed is the final
  row's, the data's preparation (1 s here) apart and printed on its own."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  config = LINEAR.replace(batch_size=16, chunk_steps=5, report=False,
                          mnist_dir=mnist_dir, data_dir=data_dir,
                          workdir=workdir)
  hooks = _hooks(workdir, existing=False, config=config)
  state, _ = hooks.start(_state(), steps_only(37))
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
  rows = lh.metrics(workdir)
  assert [r.get("partial_steps") for r in rows[:-1]] == [32, None]
  said = console.getvalue()
  assert "(partial epoch: 32 of 37 steps)" in said
  assert said.count("partial epoch") == 1
  assert 1.0 <= final["data_ready_s"] and "data_time_s" not in final
  assert f"data ready in {final['data_ready_s']:.1f}s" in said
  assert final["wall_time_s"] <= before + since_loaded  # The sleep is not in.
  assert f"wall time {final['wall_time_s']:.1f}s;" in said


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
  """A finished 3-epoch linear run (a checkpoint per epoch), its analyses
  aside."""
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  config = LINEAR.replace(batch_size=100, analyses=False, mnist_dir=mnist_dir,
                          data_dir=data_dir)
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  return workdir


def _digit(tmp_path):
  image = str(tmp_path / "seven.png")
  picture = np.full((28, 28), 255, np.uint8)
  picture[4:24, 12:16] = 0
  Image.fromarray(picture).save(image)
  return image


@pytest.mark.parametrize("state", ["finished", "log_cut", "unfinished",
                                   "diverged_later"])
def test_report_restores_the_right_checkpoint_and_says_what_it_is(
    finished, tmp_path, capsys, state):
  """--mode=report (and predict) on a run folder: a finished one's final
  checkpoint, to the test metrics the run logged, its checkpoints left as
  they were; a finished one whose log lost its end is still finished (its
  final row written again); an unfinished or diverged one's latest
  checkpoint, with a note saying what it is and what to do."""
  workdir = str(tmp_path / "run")
  if state == "finished" or state == "log_cut":
    shutil.copytree(finished, workdir)
  else:
    _unfinished(finished, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  if state == "log_cut":
    with open(path) as f:
      lines = f.read().splitlines(keepends=True)
    with open(path, "w") as f:
      f.write(lines[0] + lines[1][:len(lines[1]) // 2])
  if state == "diverged_later":
    with open(path, "a") as f:
      f.write(json.dumps({"epoch": 3, "step": 70, "diverged": True,
                          "message": "training diverged"}) + "\n")
  before = lh.snapshot(os.path.join(workdir, "checkpoints"))
  result = modes.rewrite_report(workdir)
  out = capsys.readouterr().out
  assert lh.snapshot(os.path.join(workdir, "checkpoints")) == before
  final = metrics_log.final_metrics(finished)
  status = record_lib.status(workdir)[0]
  if state in ("finished", "log_cut"):
    assert status == "finished" and "note:" not in out, out
    if state == "finished":
      assert result["accuracy"] == final["test_accuracy"]
      assert abs(result["loss"] - final["test_loss"]) <= 1e-6
      # Its command again trains nothing, and says so (and that the final
      # checkpoint is missing, where it is); --overwrite trains it again.
      config = record_lib.read_config(workdir)
      first, *_, last = checkpoints.steps(workdir)
      shutil.rmtree(os.path.join(workdir, "checkpoints", str(last)))
      whole = lh.snapshot(workdir)
      assert modes.train_and_evaluate(config, workdir) == final
      said = capsys.readouterr().out
      assert said.startswith(f"{workdir} already finished: test accuracy "), said
      assert "to train these settings again, pass another --workdir" in said
      assert (f"note: the final checkpoint, {checkpoints.directory(workdir)}/"
              f"{last}, is missing (the latest is step {last - first})") in said
      assert lh.snapshot(workdir) == whole
      modes.train_and_evaluate(config, workdir, io.StringIO(), overwrite=True)
      assert lh.deterministic(lh.metrics(workdir)) == lh.deterministic(
          lh.metrics(finished))
    rows = metrics_log.read_metrics(path)
    assert rows[-1]["epochs_run"] == 3
    assert rows[-1]["test_accuracy"] == final["test_accuracy"]
    return
  note = {"unfinished": f"note: {workdir} is unfinished (epoch 2 of 3): these "
                        "results are of its latest checkpoint; to train it on, "
                        "run its training command again",
          "diverged_later": f"note: {workdir} diverged (training diverged): "
                            "these results are of its last good checkpoint, "
                            "of epoch 2; its settings would diverge again: "
                            "lower --learning_rate or set --grad_clip, and "
                            "add --overwrite to train it over (which deletes "
                            "this one)"}[state]
  assert status == state.split("_")[0]
  assert note in out.splitlines()[-1]
  err = io.StringIO()
  results.print_predictions(workdir, [_digit(tmp_path)], out=io.StringIO(),
                            err=err)
  assert err.getvalue().splitlines() == [note]


DIVERGING = ("--noreport", "--model=linear", "--optimizer=adam",
             "--schedule=constant", "--learning_rate=1e38", "--epochs=2",
             "--batch_size=100")  # Adam at 1e38 overflows at once.


@pytest.mark.slow
def test_a_diverged_run_says_what_to_change_and_the_changed_command_trains(
    prepared, tmp_path):
  """Exit 3 and one line; the same command again would diverge at the same
  step: refused, nothing written; report has no checkpoint to show; a
  lower rate trains (a new folder, or the same with --overwrite)."""
  cwd = str(tmp_path)
  args = _args(prepared, *DIVERGING)
  for extra, again in (([], "trained these settings and diverged"),
                       (["--workdir=run"], "resuming would diverge again")):
    rc, _, err = lh.run([*args, *extra], cwd=cwd)
    assert rc == 3, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: training diverged") and line.endswith(
        "; lower --learning_rate or set --grad_clip and train again"), line
    before = lh.snapshot(cwd)
    rc, _, err = lh.run([*args, *extra], cwd=cwd)
    assert rc == 3 and again in err, err
    assert lh.snapshot(cwd) == before
  assert "add --overwrite to start it over" in err
  rc, out, err = lh.run(["--mode=report", "--workdir=run"], cwd=cwd)
  assert rc == 1, (out, err)
  [line] = err.splitlines()
  assert line.startswith("error: run has no checkpoint: its training diverged "
                         "at step ") and line.endswith(
                             ", before the first was saved; lower "
                             "--learning_rate or set --grad_clip in its "
                             "training command and run it with --workdir=run "
                             "--overwrite"), line
  [first] = os.listdir(os.path.join(cwd, "runs"))
  rc, _, err = lh.run([*args, "--learning_rate=0.001"], cwd=cwd)
  assert rc == 0, err
  assert len(os.listdir(os.path.join(cwd, "runs"))) == 2
  with open(os.path.join(cwd, "run", "config.json")) as f:
    own = shlex.split(json.load(f)["repeat"])
  own[1] = lh.launch_path(cwd)  # "python launch.py", run from elsewhere.
  rc, _, err = lh.follow(shlex.join([*own, "--workdir=run",
                                     "--learning_rate=0.001", "--overwrite"]),
                         cwd=cwd)
  assert rc == 0, err
  assert record_lib.read_config(os.path.join(cwd, "run")).learning_rate == 1e-3
  assert first in os.listdir(os.path.join(cwd, "runs"))


@pytest.mark.slow
def test_a_run_training_now_is_not_resumed_by_a_second_command(prepared,
                                                               tmp_path):
  """The same command, while the first still trains, starts its own folder;
  naming the busy folder is refused with one line."""
  cwd = str(tmp_path)
  args = _args(prepared, *FLAGS)
  second = {}

  def while_paused():
    [second["busy"]] = os.listdir(os.path.join(cwd, "runs"))
    second["new"] = lh.run(args, cwd=cwd)
    second["named"] = lh.run([*args, f"--workdir=runs/{second['busy']}"],
                             cwd=cwd)

  rc, _, err, _ = lh.run_and_signal(args, lh.SIGTERM, epoch=1, chunk=1,
                                    cwd=cwd, pause_s=45, timeout=300,
                                    on_marker=while_paused)
  assert rc == 143, err
  busy = second["busy"]
  rc, out, err = second["new"]
  assert rc == 0, err
  assert (f"runs/{busy} (these settings) is training in another process; "
          "starting a new run folder") in out
  assert len(os.listdir(os.path.join(cwd, "runs"))) == 2
  rc, _, err = second["named"]
  assert rc == 1 and err.strip() == (
      f"error: runs/{busy} is in use: another process holds its lock "
      f"(runs/{busy}/.lock names it); wait for it to end, or pass another "
      "--workdir")


STOP_S = 10.0  # docs/troubleshooting.md's bound.


@pytest.mark.slow
def test_sigterm_is_honoured_within_seconds_whatever_the_chunk(tmp_path):
  """3 members of a CNN in chunks of up to 10,000 steps (of 6,000 examples):
  SIGTERM as a chunk of epoch 1 starts stops the run within STOP_S
  (docs/troubleshooting.md: about 10 s), its checkpoint at the step the line
  names."""
  from conftest import write_idx_dir  # pylint: disable=g-import-not-at-top
  mnist_dir = write_idx_dir(tmp_path / "idx", n_train=6000)
  work = tmp_path / "run"
  sent = []
  rc, _, err, _ = lh.run_and_signal(
      ["--model=cnn", "--preset=seed", "--num_seeds=3", "--epochs=100",
       "--chunk_steps=10000", "--noreport", f"--mnist_dir={mnist_dir}",
       f"--data_dir={tmp_path / 'tfds'}", f"--workdir={work}"], lh.SIGTERM,
      epoch=1, chunk=1, pause_s=0, timeout=600,
      on_marker=lambda: sent.append(time.monotonic()))
  took = time.monotonic() - sent[0]
  assert rc == 143, err
  line = err.strip().splitlines()[-1]
  assert line.startswith("stopped by SIGTERM at step "), line
  step = int(line.split("at step ")[1].split()[0])
  assert max(map(int, os.listdir(work / "checkpoints"))) == step
  assert took < STOP_S, (took, line)

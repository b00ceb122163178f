"""Every message that says how to go on says what does it: "run the same
command again" resumes, a changed setting trains anew.

Each test stops or ends a real launch.py run, runs what its message said, and
checks it did what the message said: resumed the same folder to the
uninterrupted result, started over, or started a new folder. Without
--workdir, runs land under runs/ of the test's own folder.
"""

import json
import os
import re
import shlex
import shutil

from PIL import Image
import pytest

import launch_helpers as lh

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5. No
# report: these tests read the metrics, checkpoints and messages (a stop as
# the report is written: REPORTED).
FLAGS = ("--noreport", "--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
         "--chunk_steps=5", "--seed=3")
REPORTED = ("--noanalyses", *FLAGS[1:])
# Adam at 1e38 overflows the linear model's parameters at once. (The runs the
# advice starts write no report: their flags keep --noreport.)
DIVERGING = ("--noreport", "--model=linear", "--optimizer=adam",
             "--schedule=constant", "--learning_rate=1e38", "--epochs=2",
             "--batch_size=100")

pytestmark = pytest.mark.slow


def _args(prepared, *flags):
  mnist_dir, data_dir = prepared
  return [*flags, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}"]


def _folders(cwd):
  runs = os.path.join(cwd, "runs")
  return sorted(os.listdir(runs)) if os.path.exists(runs) else []


def _config(folder):
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """The uninterrupted run's metrics rows, without wall-clock fields."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, _, err = lh.run([*_args(prepared, *FLAGS), f"--workdir={workdir}"])
  assert rc == 0, err
  return workdir, lh.deterministic(lh.metrics(workdir))


def _assert_resumed_to_the_end(cwd, command, reference_rows, folder):
  rc, out, err = lh.follow(command, cwd=cwd)
  assert rc == 0, err
  assert f"resuming {folder}" in out
  assert lh.deterministic(lh.metrics(os.path.join(cwd, folder))) == (
      reference_rows)


AGAIN = "; run the same command again to resume"


def _same(cwd, args):
  return shlex.join(["python", lh.launch_path(cwd), *args])


def test_ctrl_c_twice_without_workdir_the_same_command_resumes(
    prepared, reference, tmp_path):
  """The issue's case: two Ctrl-C, then the same command. The second waits
  for the running chunk as the first does."""
  cwd = str(tmp_path)
  args = _args(prepared, *FLAGS)
  rc, _, err, _ = lh.run_and_signal(args, lh.SIGINT, epoch=2, cwd=cwd,
                                    pause_s=2, repeat=2)
  assert rc == 130, err
  [line] = err.strip().splitlines()
  assert line.startswith("stopped by SIGINT at step ") and line.endswith(
      AGAIN), line
  [name] = _folders(cwd)
  folder = os.path.join("runs", name)
  _assert_resumed_to_the_end(cwd, _same(cwd, args), reference[1], folder)
  assert _folders(cwd) == [name]
  assert _config(os.path.join(cwd, folder))["resumes"][0]["changed"] == {}


def test_sigterm_with_workdir_and_overwrite_resumes_not_restarts(
    prepared, reference, tmp_path):
  cwd = str(tmp_path)
  args = [*_args(prepared, *FLAGS), "--workdir=run", "--overwrite"]
  rc, _, err, _ = lh.run_and_signal(args, lh.SIGTERM, epoch=2, cwd=cwd)
  assert rc == 143, err
  assert err.strip().endswith(
      "; run the same command again without --overwrite to resume"), err
  _assert_resumed_to_the_end(cwd, _same(cwd, args[:-1]), reference[1], "run")


def test_a_finished_run_is_repeated_in_a_new_folder_or_started_over(
    prepared, reference, tmp_path):
  cwd = str(tmp_path)
  shutil.copytree(reference[0], os.path.join(cwd, "runs", "mlp-first"))
  args = _args(prepared, *FLAGS)
  rc, out, err = lh.run(args, cwd=cwd)  # Same settings, finished: a new one.
  assert rc == 0, err
  assert "runs/mlp-first trained these settings to the end; starting a new " \
         "run folder, runs/mlp-" in out
  assert len(_folders(cwd)) == 2
  # With --workdir: "already finished", which advises deleting nothing;
  # --overwrite, typed, trains it again.
  folder = os.path.join(cwd, "runs", "mlp-first")
  before = lh.snapshot(folder)
  rc, out, err = lh.run([*args, f"--workdir={folder}"], cwd=cwd)
  assert rc == 0, err
  assert (f"{folder} already finished: test accuracy" in out and
          "to train these settings again, pass another --workdir" in out)
  assert "--overwrite" not in out
  assert lh.snapshot(folder) == before
  started = _config(folder)["started"]
  rc, out, err = lh.follow(shlex.join(
      ["python", lh.launch_path(cwd), *args, f"--workdir={folder}",
       "--overwrite"]), cwd=cwd)
  assert rc == 0, err
  assert "already finished" not in out and "resumes" not in _config(folder)
  assert _config(folder)["started"] >= started
  assert lh.deterministic(lh.metrics(folder)) == reference[1]


DIVERGED = "; lower --learning_rate or set --grad_clip and train again"


def test_a_divergence_says_what_to_lower_and_a_lower_rate_trains_anew(
    prepared, tmp_path):
  cwd = str(tmp_path)
  args = _args(prepared, *DIVERGING)
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3, err
  [line] = err.strip().splitlines()
  assert line.startswith("error: training diverged") and line.endswith(
      DIVERGED), line
  [first] = _folders(cwd)
  before = lh.snapshot(os.path.join(cwd, "runs"))
  # The same command again would diverge at the same step: it stops at once.
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3 and "trained these settings and diverged" in err, err
  assert lh.snapshot(os.path.join(cwd, "runs")) == before
  # A lower rate trains in a new folder.
  rc, _, err = lh.run([*args, "--learning_rate=0.001"], cwd=cwd)
  assert rc == 0, err
  second = [f for f in _folders(cwd) if f != first]
  assert len(second) == 1
  config = _config(os.path.join(cwd, "runs", second[0]))["config"]
  assert config["learning_rate"] == 1e-3
  first = os.path.join(cwd, "runs", first)
  assert lh.snapshot(first) == {k: v for k, v in before.items()
                                if k.startswith(first + os.sep)}


def test_a_divergence_with_workdir_starts_over_with_overwrite(prepared,
                                                              tmp_path):
  cwd = str(tmp_path)
  args = [*_args(prepared, *DIVERGING), "--workdir=run"]
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3 and err.strip().endswith(DIVERGED), err
  before = lh.snapshot(os.path.join(cwd, "run"))
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3 and "resuming would diverge again" in err, err
  assert "add --overwrite to start it over" in err
  assert lh.snapshot(os.path.join(cwd, "run")) == before
  rc, _, err = lh.run([*args, "--learning_rate=0.001", "--overwrite"], cwd=cwd)
  assert rc == 0, err
  assert _config(os.path.join(cwd, "run"))["config"]["learning_rate"] == 1e-3


def test_a_rate_of_1e4_ends_in_one_line_that_says_to_lower_it(prepared,
                                                              tmp_path):
  """The issue's Adam at --learning_rate=1e4: the run ends without learning
  (or diverges), in one line that says to lower --learning_rate."""
  cwd = str(tmp_path)
  args = [*_args(prepared, "--noreport", "--model=mlp", "--mlp_hidden=16",
                 "--epochs=2", "--batch_size=100", "--learning_rate=1e4"),
          "--workdir=run"]
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc in (3, 4), err
  [line] = err.strip().splitlines()
  assert "lower --learning_rate or set --grad_clip" in line, line


@pytest.mark.parametrize("mode", ["report"])  # predict: the same line.
def test_report_on_a_run_diverged_before_any_checkpoint_says_train_it(
    prepared, tmp_path, mode):
  """--mode=report or predict on a run that diverged before its first
  checkpoint: one line saying where it diverged and what to change in its
  own command; that command, changed as it says, trains."""
  cwd = str(tmp_path)
  args = [*_args(prepared, *DIVERGING), "--workdir=run"]
  rc, _, err = lh.run(args, cwd=cwd)
  assert rc == 3, err
  image = tmp_path / "digit.png"
  Image.new("L", (28, 28)).save(image)
  before = lh.snapshot(os.path.join(cwd, "run"))
  extra = [f"--image={image}"] if mode == "predict" else []
  rc, out, err = lh.run([f"--mode={mode}", "--workdir=run", *extra], cwd=cwd)
  assert rc == 1, (out, err)
  [line] = err.splitlines()
  assert re.fullmatch(
      r"error: run has no checkpoint: its training diverged at step \d+, "
      r"epoch \d+, before the first was saved; lower --learning_rate or set "
      r"--grad_clip in its training command and run it with --workdir=run "
      r"--overwrite", line), line
  assert lh.snapshot(os.path.join(cwd, "run")) == before
  own = [*shlex.split(_config(os.path.join(cwd, "run"))["repeat"]),
         "--workdir=run"]
  own[1] = lh.launch_path(cwd)  # "python launch.py", run from elsewhere.
  rc, _, err = lh.follow(shlex.join([*own, "--learning_rate=0.001",
                                     "--overwrite"]), cwd=cwd)
  assert rc == 0, err
  assert _config(os.path.join(cwd, "run"))["config"]["learning_rate"] == 1e-3
  assert _config(os.path.join(cwd, "run"))["finished"]


def test_ctrl_c_in_the_last_chunk_of_the_last_epoch_stops_then_completes(
    prepared, reference, tmp_path):
  """Ctrl-C while the run trains its last chunk (seen once the chunk is done,
  as the epoch ends): the run saves, exits 130 and says how to resume; the
  same command then completes it (its final evaluation and report) to the
  uninterrupted result."""
  cwd = str(tmp_path)
  args = [*_args(prepared, *FLAGS), "--workdir=run"]
  rc, out, err, marker = lh.run_and_signal(args, lh.SIGINT, epoch=3, cwd=cwd,
                                           at_epoch_end=True)
  assert marker == "@epoch_end epoch=3", marker
  assert rc == 130, (out, err)
  [stopped] = err.strip().splitlines()
  assert stopped.startswith(
      "stopped by SIGINT at the end of epoch 3 (step 99);"), stopped
  assert stopped.endswith(AGAIN)
  command = _same(cwd, args)
  assert not _config(os.path.join(cwd, "run"))["finished"]
  assert [r["epoch"] for r in lh.metrics(os.path.join(cwd, "run"))] == [1, 2, 3]
  _, meta = lh.restore_latest(os.path.join(cwd, "run"))
  assert meta["step"] == 99 and meta["epoch"] == 3 and meta["done"]
  rc, out, err = lh.follow(command, cwd=cwd)
  assert rc == 0, err
  assert "completing run: its training ended at epoch 3" in out, out
  assert _config(os.path.join(cwd, "run"))["finished"]
  assert lh.deterministic(lh.metrics(os.path.join(cwd, "run"))) == (
      reference[1])


@pytest.mark.parametrize("at,says", [
    ("@final_row", "stopped by SIGINT at the end of epoch 3 (step 99); the "
     "checkpoint is in "),
    ("@write", "interrupted (Ctrl-C); run the same command again to resume"
     )], ids=["final_evaluation", "report"])
def test_ctrl_c_after_training_stops_then_the_command_completes_the_run(
    prepared, reference, tmp_path, at, says):
  """Ctrl-C once training has ended, during the final evaluation or the
  report, is not acknowledged and then ignored: the run exits 130 unfinished
  and the printed command completes it, without training, to the
  uninterrupted result."""
  cwd = str(tmp_path)
  args = [*_args(prepared, *(REPORTED if at == "@write" else FLAGS)),
          "--workdir=run"]
  rc, _, err, _ = lh.run_and_signal(args, lh.SIGINT, epoch=3, cwd=cwd, at=at)
  assert rc == 130, err
  assert says in err and "Traceback" not in err, err
  assert not _config(os.path.join(cwd, "run")).get("finished")
  rc, out, err = lh.follow(_same(cwd, args), cwd=cwd)
  assert rc == 0, err
  assert "completing run: its training ended at epoch 3" in out, out
  assert _config(os.path.join(cwd, "run"))["finished"]
  assert lh.deterministic(lh.metrics(os.path.join(cwd, "run"))) == (
      reference[1])


def test_a_run_training_now_is_not_resumed_by_a_second_command(prepared,
                                                               tmp_path):
  """The same command, while the first still trains, starts its own folder;
  naming the busy folder is refused with one line."""
  cwd = str(tmp_path)
  args = _args(prepared, *FLAGS)
  second = {}

  def while_paused():
    [name] = _folders(cwd)
    second["new"] = lh.run(args, cwd=cwd)
    second["named"] = lh.run([*args, f"--workdir=runs/{name}"], cwd=cwd)
    second["busy"] = name

  rc, _, err, _ = lh.run_and_signal(args, lh.SIGTERM, epoch=1, chunk=1,
                                    cwd=cwd, pause_s=45, timeout=300,
                                    on_marker=while_paused)
  assert rc == 143, err
  busy = second["busy"]
  rc, out, err = second["new"]
  assert rc == 0, err
  assert (f"runs/{busy} (these settings) is training in another process; "
          "starting a new run folder") in out
  assert len(_folders(cwd)) == 2
  rc, _, err = second["named"]
  [line] = err.strip().splitlines()
  assert rc == 1 and line == (
      f"error: runs/{busy} is in use: another process holds its lock "
      f"(runs/{busy}/.lock names it); wait for it to end, or pass another "
      "--workdir")

"""A run folder stopped anywhere (kill -9, SIGTERM, Ctrl-C), then the command
its message names, ends as the uninterrupted run, bit for bit; a finished run
missing checkpoints says how to mend it. KILL_SEED seeds the kill trials'
moments, KILL_TRIALS (5: a phase each, the report twice) counts them."""

import functools
import os
import random
import re
import shlex
import shutil
import signal
import time

import pytest

from conftest import assert_trees_equal
import launch_helpers as lh
import tensorboard_helpers as tbh
from mnist_jax.results import report
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir.record import read_record

pytestmark = pytest.mark.slow

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5.
FLAGS = ("--noanalyses", "--model=mlp", "--mlp_hidden=16", "--epochs=3",
         "--batch_size=16", "--chunk_steps=5", "--seed=3")
TRIALS = int(os.environ.get("KILL_TRIALS", "5"))
SEED = int(os.environ.get("KILL_SEED", "0"))
PAUSE_S = 0.3  # How long the child waits at the marker it is killed at.


def _args(prepared, workdir=None):
  return [*FLAGS, *prepared.flags, *[f"--workdir={workdir}"] * bool(workdir)]


def _temporary(workdir):
  """Files a killed write can leave: files.atomic's and orbax's."""
  found = []
  for folder, dirs, names in os.walk(workdir):
    found += [os.path.join(folder, n) for n in names + dirs
              if re.fullmatch(r"\..+\.tmp", n) or
              "orbax-checkpoint-tmp" in n]
  return found


def _outcome(workdir):
  """What a run folder holds, to compare with the uninterrupted run's."""
  state, _ = lh.restore_latest(workdir)
  csvs = {}
  for name in report.FILES:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    if name.endswith(".csv"):
      with open(os.path.join(workdir, name), "rb") as f:
        csvs[name] = f.read()
  scalars = tbh.scalars(tbh.multiplexer(workdir), ".")
  return {"rows": lh.deterministic(lh.metrics(workdir)),
          "state": (state.params, state.opt_state), "csvs": csvs,
          "tensorboard": {t: v for t, v in scalars.items()
                          if not t.startswith("speed/")}}


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """The uninterrupted run: (folder, its outcome, the markers it printed)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  p = lh.start(_args(prepared, workdir))
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  assert read_record(workdir)["finished"]
  return workdir, _outcome(workdir), [
      line.strip() for line in out.splitlines() if line.startswith("@")]


def _assert_as_uninterrupted(workdir, reference):
  got, want = _outcome(workdir), reference[1]
  assert got["rows"] == want["rows"]
  assert_trees_equal(got["state"], want["state"])
  assert got["csvs"] == want["csvs"]
  assert got["tensorboard"] == want["tensorboard"]
  assert read_record(workdir)["finished"]
  assert _temporary(workdir) == []
  assert not os.path.exists(os.path.join(workdir, ".lock"))


# In turn; a kill in the report is followed by the same command, then (the
# next time round) by --mode=report.
PHASES = ("report", "training", "save", "final")


def _moments(markers, phase):
  """Where a phase's markers stand among the uninterrupted run's; the
  report's: from its start to config.json's record."""
  if phase == "report":
    return range(markers.index("@final") + 1, len(markers))
  name = {"training": "@chunk", "save": "@save", "final": "@final"}[phase]
  return [i for i, m in enumerate(markers) if m.split()[0] == name]


def test_kill_9_anywhere_then_the_same_command_ends_as_uninterrupted(
    prepared, reference, tmp_path):
  rng = random.Random(SEED)
  for trial in range(TRIALS):
    phase = PHASES[trial % len(PHASES)]
    at = rng.choice(_moments(reference[2], phase))
    marker = reference[2][at]  # Its nth time in the run, as the child counts.
    nth = reference[2][:at + 1].count(marker)
    # Inside the pause or after it; within milliseconds of a save's start,
    # while orbax writes it in the background.
    delay = rng.uniform(0, 0.03 if phase == "save" else 2 * PAUSE_S)
    workdir = str(tmp_path / f"trial{trial}")
    args = _args(prepared, workdir)
    lh.run_and_signal(args, signal.SIGKILL, marker, nth, pause_s=PAUSE_S,
                      on_marker=functools.partial(time.sleep, delay))
    by_report = phase == "report" and trial // len(PHASES) % 2 == 1
    command = (["--mode=report", f"--workdir={workdir}"] if by_report
               else args)
    rc, out, err = lh.run(command, timeout=300)
    assert rc == 0 and "Traceback" not in err, (
        f"trial {trial}: kill -9 {delay:.2f} s after {marker} ({phase})",
        command, out, err)
    _assert_as_uninterrupted(workdir, reference)


def signalled(name, signum, where, says, then="resuming", **how):
  """Stopped by `signum` at run_and_signal's `where`, its last line matching
  `says`; the command it names then prints `then`."""
  return pytest.param(dict(signum=signum, where=where, says=says, then=then,
                           **how), id=name)


END_OF_3 = r"stopped by SIGINT at the end of epoch 3 \(step 99\);"
DONE = "completing run: its training ended at epoch 3"
MID_2 = (r"stopped by {} at step \d+ \(epoch 2, step \d+ of 33\); the "
         r"checkpoint is in \S*/{}/checkpoints;")
SIGNALS = [
    signalled("sigterm_mid_epoch_with_overwrite", signal.SIGTERM,
              dict(at="@chunk epoch=2", nth=3), MID_2.format("SIGTERM", "run"),
              overwrite=True),
    signalled("ctrl_c_twice_without_workdir", signal.SIGINT,
              dict(at="@chunk epoch=2", nth=3, pause_s=2, repeat=2),
              MID_2.format("SIGINT", "runs/[^/]+"), workdir=False),
    signalled("ctrl_c_in_the_final_evaluation", signal.SIGINT,
              dict(at="@final_row"), END_OF_3, DONE),
    signalled("ctrl_c_in_the_report", signal.SIGINT,
              dict(at="@write"), r"interrupted \(Ctrl-C\)", DONE),
    signalled("sigterm_at_an_epoch_end_then_its_own_command", signal.SIGTERM,
              dict(at="@epoch_end epoch=2"), r"stopped by SIGTERM at the "
              r"end of epoch 2 \(step 66\); the checkpoint is in "
              r"\S*/run/checkpoints;",
              "resuming {workdir} at step 66 (epoch 3, step 0 of 33)",
              own=True),
]


@pytest.mark.parametrize("how", SIGNALS)
def test_a_signal_anywhere_then_the_command_it_names_ends_as_uninterrupted(
    prepared, reference, tmp_path, how):
  """Exit 128 + the signal, a last line saying where it stopped and to run the
  same command (less --overwrite), which (or "repeat") resumes or completes."""
  cwd, overwrite = str(tmp_path), how.get("overwrite", False)
  args = _args(prepared, "run" if how.get("workdir", True) else None)
  rc, out, err, _ = lh.run_and_signal(args + ["--overwrite"] * overwrite,
                                      how["signum"], cwd=cwd, **how["where"])
  assert rc == 128 + how["signum"] and "Traceback" not in err, (out, err)
  line = err.strip().splitlines()[-1]
  assert re.match(how["says"], line) and line.endswith(
      "; run the same command again" + " without --overwrite" * overwrite +
      " to resume"), line
  workdir = os.path.join(cwd, "run")
  if not how.get("workdir", True):  # A new folder under runs/.
    [name] = os.listdir(os.path.join(cwd, "runs"))
    workdir = os.path.join(cwd, "runs", name)
  assert not read_record(workdir)["finished"]
  command = shlex.join(["python", lh.launch_path(cwd), *args])
  if how.get("own"):
    command = f"{read_record(workdir)['repeat']} --workdir={workdir}"
  rc, out, err = lh.follow(command, cwd=lh.ROOT if how.get("own") else cwd)
  assert rc == 0 and how["then"].format(workdir=workdir) in out, (out, err)
  if not how.get("workdir", True):
    assert len(os.listdir(os.path.join(cwd, "runs"))) == 1
    assert read_record(workdir)["resumes"][0]["changed"] == {}
  _assert_as_uninterrupted(workdir, reference)


def test_a_finished_run_missing_checkpoints_says_so_and_how_to_mend_it(
    prepared, reference, tmp_path):
  """Its final checkpoint gone: --mode=report keeps its report, the training
  command says so (the page's and predict's note, run.run_note: test_report.py,
  test_folder.py). All gone: the advice predict and the page give
  (test_refusals.py, test_serve.py) mends it."""
  workdir = shutil.copytree(reference[0], str(tmp_path / "run"))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "99"))  # The newest.
  missing = (f"the final checkpoint, {workdir}/checkpoints/99, is missing "
             "(the latest is step 66)")
  before = lh.snapshot(workdir)
  rc, out, err = lh.run(["--mode=report", f"--workdir={workdir}"])
  assert rc == 1 and err == (f"error: {missing}: its report.md stands for the "
                             "finished run and is kept; put that checkpoint "
                             "back to rewrite it, or train the run again with "
                             "--overwrite\n"), err
  rc, out, err = lh.run(_args(prepared, workdir))
  assert rc == 0 and f"{workdir} already finished: test accuracy " in out, err
  assert "; to train these settings again, pass another --workdir" in out
  assert out.strip().endswith(f"; note: {missing}")
  assert lh.snapshot(workdir) == before
  shutil.rmtree(checkpoints.directory(workdir))
  rc, _, err = lh.follow(
      f"{read_record(workdir)['repeat']} --workdir={workdir} --overwrite")
  assert rc == 0, err
  rc, _, err = lh.run(["--mode=predict", f"--workdir={workdir}",
                       f"--image={lh.ROOT}/docs/img/seven.png"])
  assert rc == 0 and "note" not in err, err

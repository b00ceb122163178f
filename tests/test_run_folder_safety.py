"""A run folder is safe: kill -9 anywhere, then the same command ends as an
uninterrupted run; a torn log, missing checkpoints, a run being trained:
every command a message prints works when followed (the refusals' lines
themselves: test_refusals.py).

Kill trials: `kill -9` at random moments of a real launch.py run (between
chunks, right after a checkpoint save starts, inside the report's file
writes, after the final row), then the same command (or `--mode=report`).
The moments are markers the child prints where the code it wraps does the
work (a renamed function fails here, loudly), chosen by a seeded generator:
KILL_SEED (default 0) makes them reproducible, KILL_TRIALS (default 5: each
phase, and the report again by --mode=report) raises their number for a soak.
"""

import fcntl
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

import launch_helpers as lh
import tensorboard_helpers as tbh
from mnist_jax.results import report
from mnist_jax.errors import UserError
from mnist_jax.results import serve

pytestmark = pytest.mark.slow

# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5.
FLAGS = ("--noanalyses", "--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
         "--chunk_steps=5", "--seed=3")
TRIALS = int(os.environ.get("KILL_TRIALS", "5"))
SEED = int(os.environ.get("KILL_SEED", "0"))
PAUSE_S = 0.3  # How long the child waits at a marker (see _CHILD).

# Runs launch.py with markers: "@chunk ..." between the chunks of an epoch,
# "@save step=S" once a checkpoint save is under way (orbax writes on in the
# background), "@write NAME" while NAME's temporary file is open, "@final"
# once the final row is on disk. The child pauses HOOK_PAUSE_S at each (with
# HOOK_PAUSE_AT, at the HOOK_PAUSE_NTH-th of that marker alone).
_CHILD = r"""
import contextlib, os, runpy, sys, time
script = sys.argv[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
from mnist_jax import files
from mnist_jax import modes
from mnist_jax.rundir import checkpoints, metrics_log
PAUSE = float(os.environ.get("HOOK_PAUSE_S", "0"))
AT, NTH, seen = os.environ.get("HOOK_PAUSE_AT"), int(os.environ.get("HOOK_PAUSE_NTH", "1")), [0]

def mark(text):
  print(f"@{text}", flush=True)
  seen[0] += f"@{text}" == AT
  if AT is None or f"@{text}" == AT and seen[0] == NTH:
    time.sleep(PAUSE)

_chunk = modes.RunFolder.chunk
def chunk(self, state, epoch, done, sums):
  if done:
    mark(f"chunk epoch={epoch} done={done}")
  return _chunk(self, state, epoch, done, sums)
modes.RunFolder.chunk = chunk

_save = checkpoints.save
def save(manager, step, state, meta):
  _save(manager, step, state, meta)
  mark(f"save step={step}")
checkpoints.save = save

_atomic = files.atomic
@contextlib.contextmanager
def atomic(path, mode="w"):
  with _atomic(path, mode) as f:
    mark(f"write {os.path.basename(path)}")
    yield f
files.atomic = atomic

_write = metrics_log.MetricsLog.write
def write(self, row):
  _write(self, row)
  if "test_accuracy" in row:
    mark("final")
metrics_log.MetricsLog.write = write

sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _args(prepared, workdir, *flags):
  mnist_dir, data_dir = prepared
  return [*(flags or FLAGS), f"--mnist_dir={mnist_dir}",
          f"--data_dir={data_dir}", f"--workdir={workdir}"]


def _start(args, pause_s=PAUSE_S, at=None):
  """The child; `at`: (marker, n), pausing at its n-th time alone."""
  where = dict(HOOK_PAUSE_AT=at[0], HOOK_PAUSE_NTH=str(at[1])) if at else {}
  return subprocess.Popen(
      [sys.executable, "-c", _CHILD, "launch.py", *args], cwd=lh.ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=lh.child_env(HOOK_PAUSE_S=str(pause_s), **where))


def _digit_image(tmp_path):
  """A PNG of a one: a white bar on black."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "one.png")
  Image.frombytes("L", (28, 28), bytes(
      255 * (4 <= r < 24 and 12 <= c < 16) for r in range(28)
      for c in range(28))).save(path)
  return path


def _markers(out):
  return [line.strip() for line in out.splitlines() if line.startswith("@")]


def _temporary(workdir):
  """Files a killed write can leave: files.atomic's and orbax's."""
  found = []
  for folder, dirs, names in os.walk(workdir):
    found += [os.path.join(folder, n) for n in names + dirs
              if re.fullmatch(r"\..+\.tmp", n) or
              "orbax-checkpoint-tmp" in n]
  return found


def _config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


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
  return {"rows": lh.deterministic(lh.metrics(workdir)), "params": state.params,
          "csvs": csvs,
          "tensorboard": {t: v for t, v in scalars.items()
                          if not t.startswith("speed/")}}


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """The uninterrupted run: (folder, its outcome, the markers it printed)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  p = _start(_args(prepared, workdir), pause_s=0)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  assert _config(workdir)["finished"]
  return workdir, _outcome(workdir), _markers(out)


def _assert_as_uninterrupted(workdir, reference):
  got, want = _outcome(workdir), reference[1]
  assert got["rows"] == want["rows"]
  lh.assert_trees_equal(got["params"], want["params"])
  assert got["csvs"] == want["csvs"]
  assert got["tensorboard"] == want["tensorboard"]
  assert _config(workdir)["finished"]
  assert _temporary(workdir) == []
  assert not os.path.exists(os.path.join(workdir, ".lock"))


def _kill_at(p, marker, nth, delay_s):
  """Reads p's output up to the `nth` `marker`, then SIGKILLs it after
  `delay_s`. Returns whether the marker was seen (the run got that far)."""
  seen = 0
  for line in p.stdout:
    seen += line.strip() == marker
    if seen == nth:
      time.sleep(delay_s)
      p.kill()
      p.communicate()
      return True
  p.wait()
  return False


# In turn; a kill in the report is followed by the same command, then (the
# next time round) by --mode=report.
PHASES = ("report", "training", "save", "final")


def _moments(markers, phase):
  """The markers of a phase, as the uninterrupted run printed them."""
  final = markers.index("@final")
  if phase == "training":
    return [m for m in markers if m.startswith("@chunk")]
  if phase == "save":
    return [m for m in markers if m.startswith("@save")]
  if phase == "final":
    return ["@final"]
  return markers[final + 1:]  # The report's files, then config.json's record.


def test_kill_9_anywhere_then_the_same_command_ends_as_uninterrupted(
    prepared, reference, tmp_path):
  rng = random.Random(SEED)
  outcomes = []
  for trial in range(TRIALS):
    phase = PHASES[trial % len(PHASES)]
    moments = _moments(reference[2], phase)
    marker = rng.choice(moments)
    nth = moments[:moments.index(marker) + 1].count(marker)
    # Inside the pause or after it; within milliseconds of a save's start,
    # while orbax writes it in the background.
    delay = rng.uniform(0, 0.03 if phase == "save" else 2 * PAUSE_S)
    workdir = str(tmp_path / f"trial{trial}")
    args = _args(prepared, workdir)
    assert _kill_at(_start(args, at=(marker, nth)), marker, nth, delay)
    by_report = phase == "report" and trial // len(PHASES) % 2 == 1
    command = (["--mode=report", f"--workdir={workdir}"] if by_report
               else args)
    how = "--mode=report" if by_report else "the same command"
    rc, out, err = lh.run(command, timeout=300)
    said = next((line for line in out.splitlines()
                 if line.startswith(("resuming", "completing")) or
                 "starts over" in line or "already finished" in line),
                "started anew")
    outcomes.append(f"trial {trial}: kill -9 {delay:.2f} s after {marker} "
                    f"({phase}); {how}: exit {rc}, {said}")
    assert rc == 0, (outcomes[-1], err)
    assert "Traceback" not in err
    _assert_as_uninterrupted(workdir, reference)
  print("\n".join(outcomes))


def _one_line_error(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def test_a_run_being_trained_predicts_from_its_latest_checkpoint(
    tiny_run, tmp_path):
  """Another process holds the run folder (its lock) and has logged 1 of 3
  epochs: predict reads, and says what its answer stands for."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  record = _config(workdir)
  record["finished"], record["config"]["epochs"] = False, 3
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(record, f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = f.readline()
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(first)
  held = os.open(workdir, os.O_RDONLY)
  try:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    image = _digit_image(tmp_path)
    rc, out, err = lh.run(["--mode=predict", f"--workdir={workdir}",
                           f"--image={image}"])
  finally:
    os.close(held)
  assert rc == 0 and out.startswith(f"{image}: ")
  assert err.strip() == (
      f"note: {workdir} is still training (epoch 1 of 3 logged): "
      "these results are of its latest checkpoint, of epoch 1")


def _copy(reference, tmp_path, name="run"):
  workdir = str(tmp_path / name)
  shutil.copytree(reference[0], workdir)
  return workdir


def _report_and_predict(workdir, tmp_path):
  image = _digit_image(tmp_path)
  return {"report": ["--mode=report", f"--workdir={workdir}"],
          "predict": ["--mode=predict", f"--workdir={workdir}",
                      f"--image={image}"]}


def test_other_settings_print_commands_that_work(prepared, reference,
                                                 tmp_path):
  workdir = _copy(reference, tmp_path)
  args = _args(prepared, workdir)
  rc, _, err = lh.run([*args, "--epochs=4"])
  line = _one_line_error(err)
  assert rc == 1 and "(epochs: 3 -> 4)" in line
  assert ("run the command in its config.json (\"repeat\") with "
          f"--workdir={workdir};") in line
  assert "--overwrite, which deletes its checkpoints, logs and report" in line
  own = f"{_config(workdir)['repeat']} --workdir={workdir}"
  rc, out, err = lh.follow(own)
  assert rc == 0 and f"{workdir} already finished" in out, err
  rc, out, err = lh.follow(shlex.join(["python", "launch.py", *args,
                                       "--epochs=4", "--overwrite"]))
  assert rc == 0, err
  assert _config(workdir)["config"]["epochs"] == 4
  rc, out, err = lh.run(["--mode=report", f"--workdir={workdir}"])
  assert rc == 0 and "report.md was rewritten" in out, err


def test_a_torn_log_resumes_without_its_damaged_line(prepared, reference,
                                                     tmp_path):
  workdir = str(tmp_path / "run")
  args = _args(prepared, workdir)
  rc, _, err, _ = lh.run_and_signal(args, lh.SIGTERM, epoch=3, chunk=2)
  assert rc == 143, err
  rows = lh.metrics(workdir)
  assert [r["epoch"] for r in rows] == [1, 2]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("{\"epoch\": 1, \"tr\x00\x00\n" + json.dumps(rows[1]) + "\n")
  rc, _, err = lh.run(args)
  assert rc == 0 and "Traceback" not in err, err
  assert lh.deterministic(lh.metrics(workdir)) == reference[1]["rows"][1:]
  assert _config(workdir)["finished"]


def test_a_finished_run_missing_its_final_checkpoint_says_so_everywhere(
    prepared, reference, tmp_path):
  """Its report stands for the finished run: --mode=report keeps it rather
  than rewrite it from an older checkpoint; predict, the training command and
  the page's card say what they stand for."""
  workdir = _copy(reference, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "99"))  # The newest.
  with open(os.path.join(workdir, "report.md")) as f:
    before = f.read()
  missing = (f"the final checkpoint, {workdir}/checkpoints/99, is missing "
             "(the latest is step 66)")
  modes = _report_and_predict(workdir, tmp_path)
  rc, out, err = lh.run(modes["report"])
  assert rc == 1 and err == (f"error: {missing}: its report.md stands for the "
                             "finished run and is kept; put that checkpoint "
                             "back to rewrite it, or train the run again with "
                             "--overwrite\n"), err
  with open(os.path.join(workdir, "report.md")) as f:
    assert f.read() == before
  rc, out, err = lh.run(_args(prepared, workdir))
  assert rc == 0 and out.strip().endswith(f"; note: {missing}"), err
  said = ("these results are of the checkpoint of epoch 2, older than the "
          "run's last epoch, 3: its later checkpoints are missing")
  rc, out, err = lh.run(modes["predict"])
  assert f"note: {said}" in err.splitlines()
  [served] = serve.load([workdir])  # The page's card says it too.
  assert served.info["note"] == said


def test_a_finished_run_whose_checkpoints_are_gone_says_how_to_restore_them(
    prepared, reference, tmp_path):
  """Predict and the page say so (not "train it first", which answers
  "already finished"), and the advice, followed, restores the run."""
  workdir = _copy(reference, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  said = (f"{workdir} finished, but its checkpoints are gone from "
          f"{workdir}/checkpoints: put them back, or train it again with its "
          "training command (config.json's \"repeat\"), "
          f"--workdir={workdir} and --overwrite, which deletes its logs and "
          "report")
  predict = _report_and_predict(workdir, tmp_path)["predict"]
  rc, _, err = lh.run(predict)
  assert rc == 1 and err == f"error: {said}\n", err
  with pytest.raises(UserError, match=re.escape(said)):
    serve.load([workdir])
  rc, _, err = lh.follow(
      f"{_config(workdir)['repeat']} --workdir={workdir} --overwrite")
  assert rc == 0, err
  rc, _, err = lh.run(predict)
  assert rc == 0 and "note" not in err, err

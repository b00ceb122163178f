"""The run folder: its record (its code, an old config.json), the one a command
without --workdir picks, its lock, metrics log and files (refusals end to end:
test_refusals.py)."""

import errno
import fcntl
import io
import json
import os
import shutil
import stat
from unittest import mock

import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import files
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.results import report
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve
from mnist_jax.rundir import choose
from mnist_jax.rundir import code
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.rundir import resume

CONFIG = registry.get_config("linear", epochs=4)
FINAL = {"test_accuracy": 0.9, "test_loss": 0.3}


def _started(month):
  """config.json's start of a run begun on the 1st of `month`, 2026."""
  return f"2026-{month:02d}-01T10:00:00+0000"


def test_resume_records_only_the_settings_that_changed(tmp_path):
  """A tuple setting (cnn_features, mlp_hidden) is a list in config.json: it
  is not 'changed' by a resume that keeps it."""
  config = registry.get_config("cnn", "best")
  path = str(tmp_path / "run")
  record.begin(path, config, {})
  record.begin(path, config.replace(chunk_steps=7), {}, existing=True,
               meta={"step": 9})
  with open(os.path.join(path, record.CONFIG_FILE)) as f:
    entry = json.load(f)["resumes"][0]
  assert entry["from_step"] == 9
  assert entry["changed"] == {"chunk_steps": 7}


def test_junk_under_runs_is_skipped(tmp_path):
  root = str(tmp_path)
  (tmp_path / "notes.txt").write_text("not a run")
  (tmp_path / "empty").mkdir()
  for name, text in [("garbage", "{not json"), ("a_list", "[1, 2]"),
                     ("no_config", '{"started": "x"}'),
                     ("unknown_key", '{"config": {"colour": "red"}}'),
                     ("bad_bytes", b"\xff\xfe\x00".decode("latin-1"))]:
    (tmp_path / name).mkdir()
    (tmp_path / name / record.CONFIG_FILE).write_text(text, "latin-1")
  unreadable = lh.run_folder(tmp_path / "unreadable")
  os.chmod(os.path.join(unreadable, record.CONFIG_FILE), 0)
  junk_metrics = lh.run_folder(tmp_path / "junk_metrics",
                               started="2026-01-02T10:00:00+0000")
  with open(os.path.join(junk_metrics, metrics_log.METRICS_FILE), "w") as f:
    f.write('3\n"text"\n{"epoch": 1}\n{torn')
  found = choose.find_runs(CONFIG, root)
  readable = os.access(os.path.join(unreadable, record.CONFIG_FILE), os.R_OK)
  assert [r.path for r in found] == [junk_metrics] + [unreadable] * readable
  assert found[0].status == "unfinished" and found[0].last["epoch"] == 1
  assert choose.choose(CONFIG, root=root).path == junk_metrics
  assert choose.find_runs(CONFIG, str(tmp_path / "missing")) == []
  first = choose.choose(CONFIG, root=str(tmp_path / "missing"))
  assert not first.news  # A first run says nothing.


def test_the_newest_run_of_these_settings_by_its_recorded_start(tmp_path):
  """Not by name or mtime; settings that may differ on a resume (workdir,
  chunk_steps, data_dir, parallel) still match, other ones do not."""
  root = str(tmp_path)
  newer = lh.run_folder(tmp_path / "a-newer", started=_started(3))
  older = lh.run_folder(tmp_path / "z-older", CONFIG.replace(
      workdir="elsewhere", chunk_steps=7, data_dir="/data", parallel="none"),
                        started="2026-02-01T10:00:00+0100")
  undated = lh.run_folder(tmp_path / "zz-undated", started="yesterday")
  lh.run_folder(tmp_path / "other", CONFIG.replace(epochs=5),
                started=_started(4))  # Other settings: not a candidate.
  os.utime(older)  # The newest mtime: it must not matter.
  assert [r.path for r in choose.find_runs(CONFIG, root)] == [
      newer, older, undated]
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == newer
  assert choice.reason.startswith(f"resuming {newer}, the newest unfinished")


def test_unfinished_runs_are_resumed_and_finished_ones_start_a_new_folder(
    tmp_path):
  """Finished is what config.json records once the report is written, not a
  final row: a run killed in its report is completed."""
  root = str(tmp_path)
  finished = lh.run_folder(tmp_path / "finished", started=_started(3),
                           rows=[{"epoch": 4}, FINAL])
  choice = choose.choose(CONFIG, root=root)
  assert choice.path.startswith(os.path.join(root, "linear-"))
  assert f"{finished} trained these settings to the end" in choice.reason
  unfinished = lh.run_folder(tmp_path / "unfinished", started=_started(2))
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == unfinished
  assert "(1 of 4 epochs logged)" in choice.reason
  killed = lh.run_folder(tmp_path / "killed_in_report", started=_started(4),
                         rows=[{"epoch": 4}, FINAL], finished=False)
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == killed
  assert choice.reason.startswith(f"completing {killed}, the newest unfinished")
  record.finish(killed, FINAL)
  assert choose.choose(CONFIG, root=root).path == unfinished


def test_overwrite_without_workdir_deletes_nothing(tmp_path):
  """It names a new folder, leaving unfinished and diverged runs; a diverged
  run with other settings, or no run, is not refused (test_divergence.py)."""
  root = str(tmp_path)
  lh.run_folder(tmp_path / "unfinished")
  diverged = lh.run_folder(tmp_path / "diverged", rows=[{"epoch": 1}, {
      "epoch": 2, "step": 70, "diverged": True, "message": "..."}])
  choice = choose.choose(CONFIG, overwrite=True, root=root)
  assert not os.path.exists(choice.path)
  assert "deletes no folder" in choice.reason
  assert sorted(os.listdir(root)) == ["diverged", "unfinished"]
  resume.check_not_diverged(diverged, CONFIG.replace(learning_rate=1e-4))
  resume.check_not_diverged(str(tmp_path / "new"), CONFIG)


def test_default_workdir_never_names_an_existing_folder(tmp_path, monkeypatch):
  monkeypatch.setattr(choose.time, "strftime", lambda _: "20260101-000000")
  first = choose.default_workdir("mlp", str(tmp_path))
  os.makedirs(first)
  second = choose.default_workdir("mlp", str(tmp_path))
  assert second == first + "-2"


def test_a_run_training_in_another_process_is_left_alone(tmp_path):
  """A command without --workdir starts a new folder, or resumes an idle
  one."""
  root = str(tmp_path)
  busy = lh.run_folder(tmp_path / "busy", started=_started(3))
  fd = os.open(busy, os.O_RDONLY)  # Another open file: another holder.
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    choice = choose.choose(CONFIG, root=root)
    assert choice.reason == (f"{busy} (these settings) is training in another "
                             f"process; starting a new run folder, "
                             f"{choice.path}")
    idle = lh.run_folder(tmp_path / "idle", started=_started(2))
    assert [r.status for r in choose.find_runs(CONFIG, root)] == [
        "running", "unfinished"]
    assert choose.choose(CONFIG, root=root).path == idle
  finally:
    os.close(fd)
  assert not lock.in_use(busy)


def test_a_run_holds_its_folder_while_it_writes_it_and_names_itself(tmp_path):
  """Its lock file names its pid and mode (a killed holder's refuses nothing:
  the flock is the lock); outside locking() (the Python API), none."""
  path = lh.run_folder(tmp_path / "run")
  files.write_json(os.path.join(path, lock.LOCK_FILE), {"pid": 999999999})
  with lock.locking() as held:
    lock.claim(path, mode="report")
    record.begin(path, CONFIG, {}, existing=True, overwrite=False, meta=None)
    assert os.path.realpath(path) in held
    assert not lock.in_use(path)  # Not to this process itself.
    with open(os.path.join(path, lock.LOCK_FILE)) as f:
      note = json.load(f)
    assert note["pid"] == os.getpid() and note["mode"] == "report"
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.close(fd)
  assert not lock.in_use(path)
  assert sorted(os.listdir(path)) == [record.CONFIG_FILE, "metrics.jsonl"]
  record.begin(path, CONFIG, {}, existing=True, overwrite=False, meta=None)
  assert not lock.in_use(path)


def test_a_folder_a_claim_created_goes_if_nothing_was_written(tmp_path):
  empty, used = str(tmp_path / "a" / "empty"), str(tmp_path / "used")
  with lock.locking():
    lock.claim(empty)
    lock.claim(used)
    assert sorted(os.listdir(empty)) == [lock.LOCK_FILE]
    resume.check_run_folder(empty, CONFIG)  # The lock file is no content.
    record.begin(used, CONFIG, {})
  assert not os.path.exists(tmp_path / "a")  # Its parent, made for it, too.
  assert os.listdir(used) == [record.CONFIG_FILE]
  with lock.locking():
    lock.claim(str(tmp_path / "missing"), mode="report", create=False)
  assert not os.path.exists(tmp_path / "missing")


# The code a run trained with (rundir/code.py), and what every mode that
# loads the run says where the code here differs.

def test_every_mode_says_the_code_differs(tiny_run, tmp_path, monkeypatch,
                                         capsys):
  """A run records the core files it trained with; where they differ since,
  predict, the page and a resume say so in one line (a resume's checkpoint
  fits the module: then it trains on)."""
  recorded = record.trained_code(tiny_run)
  assert recorded["files"] == code.core_files() and "diff" not in recorded
  assert {"models/dense.py", "training/train.py", "optim.py"} <= set(
      recorded["files"])
  assert code.changed(recorded) == [] and code.note(tiny_run, recorded) is None
  work = shutil.copytree(tiny_run, str(tmp_path / "run"))
  edited = {**code.core_files(), "models/dense.py": "edited"}  # Since then.
  monkeypatch.setattr(code, "core_files", lambda: edited)
  said = run_lib.run_note(work, run_lib.load_run(work))
  assert said == (f"{work} was trained with other code: models/dense.py "
                  "changed since (its config.json's environment.code holds "
                  "what it ran); these results are of the code here now")
  out, err = io.StringIO(), io.StringIO()
  run_lib.print_predictions(work, [os.path.join(
      lh.ROOT, "docs", "img", "seven.png")], out=out, err=err)
  assert err.getvalue().startswith(f"note: {said}")
  assert serve.load([work])[0].info["note"] == said  # Its card; and a line:
  assert capsys.readouterr().err == f"note: {said}\n"
  config = record.read_config(work).replace(epochs=2, workdir=work)
  files.write_json(os.path.join(work, record.CONFIG_FILE), {
      **record.read_record(work), "finished": False, "config": config.to_dict()})
  out = io.StringIO()
  modes.train_and_evaluate(config, work, stream=out)
  assert (f"note: {work} was trained with other code: models/dense.py "
          "changed since") in out.getvalue()
  assert "training goes on with the code here now" in out.getvalue()
  assert record.status(work)[0] == "finished"


def test_edited_code_is_named_with_its_diff(tmp_path, monkeypatch):
  """A dirty tree: config.json names the edited files, the run folder keeps
  their diff, and the report's summary line names them."""
  edited = {"commit": "c" * 40, "dirty": True,
            "edited": ["mnist_jax/models/cnn.py"], "files": code.core_files(),
            "diff": "--- a/mnist_jax/models/cnn.py\n+++ b/..."}
  monkeypatch.setattr(code, "record", lambda: dict(edited))
  work = str(tmp_path / "run")
  config = models.get_config("linear", "seed", workdir=work)
  record.begin(work, config, record.environment())
  assert open(os.path.join(work, code.DIFF_FILE)).read() == edited["diff"]
  kept = record.trained_code(work)
  assert "diff" not in kept and kept["edited"] == edited["edited"]
  assert code.summary(kept) == ("code: ccccccc, edited: "
                                "mnist_jax/models/cnn.py")


def test_an_old_run_folder_loads_resumes_and_predicts_the_same(tiny_run,
                                                               tmp_path):
  """A config.json as written before models declared their settings: every
  model's settings, at their old defaults, beside the run's own."""
  root = tmp_path / "runs"
  old = shutil.copytree(tiny_run, str(root / "old"))
  recorded = record.read_record(old)
  recorded["config"] = {
      "hidden": 128, "num_layers": 1, "bidirectional": False,
      "mlp_hidden": [512, 256], "dropout": 0.0, "cnn_features": [32, 64],
      "cnn_kernel": 3, "cnn_dense": 128, "cnn_padding": "VALID",
      "remat": False, "sequence": "rows", "permute_seed": 0,
      **recorded["config"]}
  files.write_json(os.path.join(old, record.CONFIG_FILE), recorded)
  config = record.read_config(old)
  new = config.replace(workdir=None)
  assert new == record.read_config(tiny_run).replace(workdir=None)
  assert not {"cnn_features", "sequence"} & set(config.to_dict())
  # The same command resumes it: its settings match a new run's.
  assert [r.path for r in choose.find_runs(new, str(root))] == [old]
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8)
  np.testing.assert_array_equal(run_lib.load_run(old).logits(images),
                                run_lib.load_run(tiny_run).logits(images))
  os.remove(os.path.join(old, "report.md"))
  modes.rewrite_report(old)
  assert os.path.exists(os.path.join(old, "report.md"))


# metrics.jsonl, its one writer (what TensorBoard then shows on a resume:
# test_tensorboard.py).

def test_rows_go_to_metrics_jsonl_then_to_the_events_and_resume_drops(
    tmp_path):
  """metrics.jsonl, then the events; a resume drops later epochs and the final
  row (a completion keeps it), and a line a kill cut short."""
  path = os.path.join(tmp_path, "metrics.jsonl")
  events = mock.Mock()
  log = metrics_log.MetricsLog(str(tmp_path), events)
  log.resume(0)
  rows = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}, {"test_accuracy": 0.9}]
  for row in rows:
    log.write(row)
  assert events.mock_calls == [mock.call.resume([]), *map(mock.call.write,
                                                          rows)]
  assert metrics_log.read_metrics(path) == rows
  metrics_log.MetricsLog(str(tmp_path)).resume(3, keep_final=True)
  assert metrics_log.read_metrics(path) == rows
  with open(path, "a") as f:
    f.write('{garbage\n[1]\n{"epoch": 4, "tr')
  events = mock.Mock()
  log = metrics_log.MetricsLog(str(tmp_path), events)
  assert log.read() == rows
  log.resume(2)
  assert events.mock_calls == [mock.call.resume(rows[:2])]
  with open(path) as f:
    assert [json.loads(line) for line in f] == rows[:2]


# Files written whole or not at all (mnist_jax/files.py), with the user's
# normal permissions.

UMASK = 0o002  # Group-writable: unlike the usual 0o022, also tells 0o664 from 0o644.
EXPECTED = 0o666 & ~UMASK


@pytest.fixture
def umask():
  old = os.umask(UMASK)
  yield
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_a_write_is_whole_or_not_at_all_with_the_umask(tmp_path, umask):
  """A failed write leaves the old file and no temporary; a killed write's
  temporary file (a run's, or --mode=predict --plot's) is the next write's."""
  path = str(tmp_path / "a.json")
  files.write_json(path, {"b": 1, "a": [1, 2]})
  assert open(path).read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  with files.atomic(str(tmp_path / "b.bin"), "wb") as f:
    f.write(b"\x00\x01")
  assert _mode(path) == _mode(tmp_path / "b.bin") == EXPECTED
  with pytest.raises(RuntimeError):
    with files.atomic(path) as f:
      f.write("half a new")
      raise RuntimeError("interrupted")
  assert open(path).read().startswith('{\n  "a"')
  with pytest.raises(OSError) as full:  # Its error names the file meant.
    with files.atomic(path) as f:
      raise OSError(errno.ENOSPC, "No space left on device", f.name)
  assert full.value.filename == path
  (tmp_path / ".report.md.tmp").write_text("half a report, its writer killed")
  files.write_text(str(tmp_path / "report.md"), "the report")
  assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin", "report.md"]
  assert (tmp_path / "report.md").read_text() == "the report"


@pytest.mark.slow
def test_run_files_get_the_users_permissions(prepared, tmp_path, umask):
  """config.json, metrics.jsonl, the report, the events, the checkpoint and
  the dataset cache: 0o666 & ~umask, not tempfile's 0o600."""
  mnist_dir, data_dir = prepared
  fresh = str(tmp_path / "tfds")
  shutil.copytree(data_dir, fresh)
  cache = os.path.join(fresh, "mnist", "3.0.1", "mnist_jax_arrays.npz")
  os.remove(cache)
  workdir = str(tmp_path / "run")
  config = models.get_config("mlp", "seed", epochs=1, mlp_hidden=(8,),
                             batch_size=50, mnist_dir=mnist_dir,
                             data_dir=fresh, workdir=workdir)
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  events = [f for f in os.listdir(workdir) if "tfevents" in f]
  assert events
  checkpoint_files = [os.path.join(d, n) for d, _, names in
                      os.walk(os.path.join(workdir, "checkpoints")) for n in names]
  assert checkpoint_files
  for path in [os.path.join(workdir, name) for name in (
      "config.json", "metrics.jsonl", *report.FILES, *events)] + [
          cache, *checkpoint_files]:
    assert _mode(path) == EXPECTED, path
  assert pipeline.prepare("mnist", fresh)["train_images"].shape == (600, 28, 28, 1)

"""The run folder: its record, the one a command without --workdir picks, its
lock, a config.json it cannot read (refusals end to end: test_refusals.py)."""

import fcntl
import json
import os

import pytest

from mnist_jax.errors import UserError
from mnist_jax.models import registry
from mnist_jax.rundir import choose
from mnist_jax import files
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.rundir import resume

CONFIG = registry.get_config("linear", epochs=4)
FINAL = {"test_accuracy": 0.9, "test_loss": 0.3}


def _run(root, name, config=CONFIG, started="2026-01-01T10:00:00+0000",
         rows=(), finished=None):
  """A run folder as launch.py writes it; finished (None: a final row)."""
  path = os.path.join(root, name)
  os.makedirs(path)
  if finished is None:
    finished = any("test_accuracy" in r for r in rows)
  files.write_json(os.path.join(path, record.CONFIG_FILE),
                   {"config": config.to_dict(), "started": started,
                    "finished": finished})
  log = metrics_log.MetricsLog(path)
  for row in rows:
    log.write(row)
  return path


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
  unreadable = _run(root, "unreadable")
  os.chmod(os.path.join(unreadable, record.CONFIG_FILE), 0)
  junk_metrics = _run(root, "junk_metrics", started="2026-01-02T10:00:00+0000")
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
  newer = _run(root, "a-newer", started="2026-03-01T10:00:00+0000")
  older = _run(root, "z-older", CONFIG.replace(
      workdir="elsewhere", chunk_steps=7, data_dir="/data", parallel="none"),
               started="2026-02-01T10:00:00+0100")
  undated = _run(root, "zz-undated", started="yesterday")
  _run(root, "other", CONFIG.replace(epochs=5),
       started="2026-04-01T10:00:00+0000")  # Other settings: not a candidate.
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
  finished = _run(root, "finished", started="2026-03-01T10:00:00+0000",
                  rows=[{"epoch": 4}, FINAL])
  choice = choose.choose(CONFIG, root=root)
  assert choice.path.startswith(os.path.join(root, "linear-"))
  assert f"{finished} trained these settings to the end" in choice.reason
  unfinished = _run(root, "unfinished", started="2026-02-01T10:00:00+0000",
                    rows=[{"epoch": 1}])
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == unfinished
  assert "(1 of 4 epochs logged)" in choice.reason
  killed = _run(root, "killed_in_report", rows=[{"epoch": 4}, FINAL],
                started="2026-04-01T10:00:00+0000", finished=False)
  assert record.status(killed)[0] == "unfinished"
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == killed
  assert choice.reason.startswith(f"completing {killed}, the newest unfinished")
  record.finish(killed, FINAL)
  assert record.status(killed)[0] == "finished"
  assert choose.choose(CONFIG, root=root).path == unfinished


def test_overwrite_without_workdir_deletes_nothing(tmp_path):
  """It names a new folder, leaving unfinished and diverged runs; a diverged
  run with other settings, or no run, is not refused (test_divergence.py)."""
  root = str(tmp_path)
  _run(root, "unfinished", rows=[{"epoch": 1}])
  diverged = _run(root, "diverged", rows=[{"epoch": 1}, {
      "epoch": 2, "step": 70, "diverged": True, "message": "..."}])
  choice = choose.choose(CONFIG, overwrite=True, root=root)
  assert not os.path.exists(choice.path)
  assert "deletes no folder" in choice.reason
  assert sorted(os.listdir(root)) == ["diverged", "unfinished"]
  resume.check_not_diverged(diverged, CONFIG.replace(learning_rate=1e-4))
  resume.check_not_diverged(str(tmp_path / "new"), CONFIG)


def test_default_workdir_never_names_an_existing_folder(tmp_path):
  first = choose.default_workdir("mlp", str(tmp_path))
  os.makedirs(first)
  second = choose.default_workdir("mlp", str(tmp_path))
  assert second == first + "-2"


def test_a_run_training_in_another_process_is_left_alone(tmp_path):
  """A command without --workdir starts a new folder, or resumes an idle
  one."""
  root = str(tmp_path)
  busy = _run(root, "busy", started="2026-03-01T10:00:00+0000")
  fd = os.open(busy, os.O_RDONLY)  # Another open file: another holder.
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert lock.in_use(busy)
    choice = choose.choose(CONFIG, root=root)
    assert choice.reason == (f"{busy} (these settings) is training in another "
                             f"process; starting a new run folder, "
                             f"{choice.path}")
    idle = _run(root, "idle", started="2026-02-01T10:00:00+0000")
    assert not lock.in_use(idle)
    assert [r.status for r in choose.find_runs(CONFIG, root)] == [
        "running", "unfinished"]
    assert choose.choose(CONFIG, root=root).path == idle
  finally:
    os.close(fd)
  assert not lock.in_use(busy)


def test_a_run_holds_its_folder_while_it_writes_it_and_names_itself(tmp_path):
  """Its lock file names the holder's pid and mode (one a killed holder left
  refuses nothing: the flock is the lock; a folder another process holds:
  test_api.py, test_refusals.py); outside locking() (the Python API),
  nothing is locked."""
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
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


@pytest.mark.parametrize("damage, said", [  # Not JSON, a folder: test_refusals.
    ("a_list", "holds settings this mnist_jax cannot use (TypeError: "),
    ("no_permission", "cannot be read (Permission denied)")])
def test_a_damaged_config_json_advises_deleting_nothing(tmp_path, damage, said):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  config = os.path.join(path, record.CONFIG_FILE)
  if damage == "a_list":
    files.write_text(config, "[1, 2]")
  else:
    os.chmod(config, 0)
    if os.access(config, os.R_OK):
      pytest.skip("this user (root) reads files whatever their permissions")
  with pytest.raises(UserError) as e:
    resume.check_run_folder(path, CONFIG)
  message = str(e.value)
  assert message.startswith(f"{config} {said}"), message
  assert "nothing was changed" in message and "another --workdir" in message
  assert "--overwrite" not in message and "delet" not in message

"""The run folder: its record, the one a command without --workdir picks, its
lock, resuming it, metrics.jsonl."""

import fcntl
import json
import os

import pytest

import launch_helpers as lh
from mnist_jax.errors import Diverged, UserError
from mnist_jax.models import registry
from mnist_jax.rundir import choose
from mnist_jax import files
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.rundir import resume

CONFIG = registry.get_config("linear", epochs=4)


def _run(root, name, config=CONFIG, started="2026-01-01T10:00:00+0000",
         rows=(), finished=None):
  """Writes a run folder as launch.py does: config.json and metrics.jsonl.

  finished: what config.json records (None: a final row means finished).
  """
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


FINAL = {"test_accuracy": 0.9, "test_loss": 0.3}
DIVERGED = {"epoch": 2, "step": 70, "diverged": True, "message": "..."}


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


def test_newest_by_recorded_start_time_not_name_or_mtime(tmp_path):
  root = str(tmp_path)
  newer = _run(root, "a-newer", started="2026-03-01T10:00:00+0000")
  older = _run(root, "z-older", started="2026-02-01T10:00:00+0100")
  undated = _run(root, "zz-undated", started="yesterday")
  _run(root, "other", CONFIG.replace(epochs=5),
       started="2026-04-01T10:00:00+0000")  # Other settings: not a candidate.
  os.utime(older)  # The newest mtime: it must not matter.
  assert [r.path for r in choose.find_runs(CONFIG, root)] == [
      newer, older, undated]
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == newer
  assert choice.reason.startswith(f"resuming {newer}, the newest unfinished")


def test_settings_that_may_differ_on_resume_still_match(tmp_path):
  path = _run(str(tmp_path), "run", CONFIG.replace(
      workdir="elsewhere", chunk_steps=7, data_dir="/data", parallel="none"))
  assert choose.choose(CONFIG, root=str(tmp_path)).path == path


def test_finished_runs_start_a_new_folder_and_unfinished_are_resumed(tmp_path):
  root = str(tmp_path)
  finished = _run(root, "finished", started="2026-03-01T10:00:00+0000",
                  rows=[{"epoch": 4}, FINAL])
  choice = choose.choose(CONFIG, root=root)
  assert choice.path.startswith(
      os.path.join(root, "linear-"))
  assert f"{finished} trained these settings to the end" in choice.reason
  unfinished = _run(root, "unfinished", started="2026-02-01T10:00:00+0000",
                    rows=[{"epoch": 1}])
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == unfinished
  assert "(1 of 4 epochs logged)" in choice.reason


def test_a_diverged_run_is_not_repeated(tmp_path):
  root = str(tmp_path)
  _run(root, "finished", started="2026-01-01T10:00:00+0000",
       rows=[{"epoch": 4}, FINAL])
  diverged = _run(root, "diverged", started="2026-02-01T10:00:00+0000",
                  rows=[{"epoch": 1}, DIVERGED])
  with pytest.raises(Diverged, match=f"^{diverged} trained these settings and "
                     "diverged \\(at step 70, epoch 2\\)"):
    choose.choose(CONFIG, root=root)
  choice = choose.choose(CONFIG, overwrite=True, root=root)
  assert not os.path.exists(choice.path)
  assert "deletes no folder" in choice.reason
  # Another setting is another run: it starts.
  other = CONFIG.replace(learning_rate=1e-4)
  assert not os.path.exists(choose.choose(other, root=root).path)
  # Given by --workdir, the same settings are refused, other ones are not.
  with pytest.raises(Diverged, match="resuming would diverge again"):
    resume.check_not_diverged(diverged, CONFIG)
  resume.check_not_diverged(diverged, CONFIG.replace(learning_rate=1e-4))
  resume.check_not_diverged(str(tmp_path / "new"), CONFIG)


def test_overwrite_without_workdir_deletes_nothing(tmp_path):
  root = str(tmp_path)
  _run(root, "unfinished", rows=[{"epoch": 1}])
  choice = choose.choose(CONFIG, overwrite=True, root=root)
  assert not os.path.exists(choice.path)
  assert os.listdir(root) == ["unfinished"]


def test_a_run_training_in_another_process_is_left_alone(tmp_path):
  root = str(tmp_path)
  busy = _run(root, "busy", started="2026-03-01T10:00:00+0000")
  idle = _run(root, "idle", started="2026-02-01T10:00:00+0000")
  fd = os.open(busy, os.O_RDONLY)  # Another open file: another holder.
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert lock.in_use(busy) and not lock.in_use(idle)
    assert [r.status for r in choose.find_runs(CONFIG, root)] == [
        "running", "unfinished"]
    assert choose.choose(CONFIG, root=root).path == idle
    with pytest.raises(UserError, match="is in use"):
      lock.check_not_in_use(busy)
  finally:
    os.close(fd)
  assert not lock.in_use(busy)


def test_a_run_holds_its_folder_while_it_writes_it(tmp_path):
  path = str(tmp_path / "run")
  with lock.locking() as held:
    record.begin(path, CONFIG, {}, existing=False, overwrite=False, meta=None)
    assert os.path.realpath(path) in held
    assert not lock.in_use(path)  # Not to this process itself.
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.close(fd)
  assert not lock.in_use(path)
  # Outside locking() (the Python API), nothing is locked.
  record.begin(path, CONFIG, {}, existing=True, overwrite=False, meta=None)
  assert not lock.in_use(path)


def test_default_workdir_never_names_an_existing_folder(tmp_path):
  first = choose.default_workdir("mlp", str(tmp_path))
  os.makedirs(first)
  second = choose.default_workdir("mlp", str(tmp_path))
  assert second == first + "-2"


def test_a_run_begun_by_another_process_meanwhile_is_refused(tmp_path):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  before = lh.snapshot(path)
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    with lock.locking():
      with pytest.raises(UserError, match="is in use"):
        record.begin(path, CONFIG, {}, existing=True, overwrite=False,
                     meta=None)
  finally:
    os.close(fd)
  assert lh.snapshot(path) == before


def test_a_held_folder_is_refused_in_one_line_naming_its_lock_file(tmp_path):
  """The refusal points to the lock file (which names the holder) and says
  what to do; a .lock file a killed holder left refuses nothing."""
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  with open(os.path.join(path, lock.LOCK_FILE), "w") as f:
    json.dump({"pid": 999999999, "mode": "train"}, f)  # A killed holder's.
  with lock.locking():
    lock.claim(path)
  fd = os.open(path, os.O_RDONLY)  # Another open file: another holder.
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    with lock.locking():
      with pytest.raises(lock.InUse) as e:
        lock.claim(path)
    lock_file = os.path.join(path, lock.LOCK_FILE)
    assert str(e.value) == (
        f"{path} is in use: another process holds its lock ({lock_file} "
        "names it); wait for it to end, or pass another --workdir")
    with lock.locking():
      with pytest.raises(lock.InUse, match=(
          f"^{path} is in use: .*; wait for it to end, then run this again$")):
        lock.claim(path, mode="report")
  finally:
    os.close(fd)


def test_a_claim_writes_who_holds_it(tmp_path):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  with lock.locking() as held:
    lock.claim(path, mode="report")
    assert os.path.realpath(path) in held
    with open(os.path.join(path, lock.LOCK_FILE)) as f:
      note = json.load(f)
    assert note["pid"] == os.getpid() and note["mode"] == "report"
    assert not lock.in_use(path)  # Not to this process itself.
  assert not os.path.exists(os.path.join(path, lock.LOCK_FILE))
  assert sorted(os.listdir(path)) == ["config.json", "metrics.jsonl"]


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


def test_finished_is_recorded_after_the_report_not_read_from_the_last_row(
    tmp_path):
  root = str(tmp_path)
  path = _run(root, "killed_in_report", rows=[{"epoch": 4}, FINAL],
              finished=False)
  assert record.status(path)[0] == "unfinished"
  choice = choose.choose(CONFIG, root=root)
  assert choice.path == path
  assert choice.reason.startswith(f"completing {path}, the newest unfinished")
  record.finish(path, FINAL)
  assert record.status(path)[0] == "finished"
  assert not os.path.exists(choose.choose(CONFIG, root=root).path)


def test_a_final_row_is_kept_for_a_run_being_completed(tmp_path):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}, {"epoch": 2}, FINAL],
              finished=False)
  log = metrics_log.MetricsLog(path)
  log.resume(2, keep_final=True)
  assert log.read() == [{"epoch": 1}, {"epoch": 2}, FINAL]
  log.resume(2)
  assert log.read() == [{"epoch": 1}, {"epoch": 2}]


@pytest.mark.parametrize("damage, said", [
    ("not_json", "holds settings this mnist_jax cannot use (JSONDecodeError: "),
    ("a_list", "holds settings this mnist_jax cannot use (TypeError: "),
    ("a_folder", "cannot be read (Is a directory)"),
    ("no_permission", "cannot be read (Permission denied)")])
def test_a_damaged_config_json_advises_deleting_nothing(tmp_path, damage, said):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  config = os.path.join(path, record.CONFIG_FILE)
  if damage == "not_json":
    with open(config, "w") as f:
      f.write('{"config": {"model": ')
  elif damage == "a_list":
    with open(config, "w") as f:
      f.write("[1, 2]")
  elif damage == "a_folder":
    os.remove(config)
    os.mkdir(config)
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


def test_other_settings_say_how_to_resume_and_what_overwrite_deletes(
    tmp_path):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}, {"epoch": 2}])
  with pytest.raises(UserError) as e:
    resume.check_run_folder(path, CONFIG.replace(epochs=9))
  assert str(e.value) == (
      f"{path} holds a run with other settings (epochs: 4 -> 9); to resume "
      "that run, run the command in its config.json (\"repeat\") with "
      f"--workdir={path}; to train these settings there instead, add "
      "--overwrite, which deletes its checkpoints, logs and report; or pass "
      "another --workdir")


def test_another_models_command_on_a_run_folder_is_refused_in_one_line(
    tmp_path):
  """A linear command given an mlp run's folder: one line naming the model
  (it used to end in a KeyError on the mlp's 'dropout')."""
  mlp = registry.get_config("mlp", epochs=4, mlp_hidden=(8,))
  path = _run(str(tmp_path), "run", mlp, rows=[{"epoch": 1}])
  before = lh.snapshot(path)
  with pytest.raises(UserError) as e:
    resume.check_run_folder(path, CONFIG)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{path} holds a run with other settings (")
  assert "model: 'mlp' -> 'linear'" in message
  assert "another --workdir" in message
  assert lh.snapshot(path) == before

"""The run folder: the one a command without --workdir picks; locks; resumes."""

import fcntl
import json
import os

import pytest

import launch_helpers as lh
from mnist_jax.errors import Diverged
from mnist_jax.models import registry
from mnist_jax.rundir import files
from mnist_jax.rundir import folder

CONFIG = registry.get_config("linear", epochs=4)


def _run(root, name, config=CONFIG, started="2026-01-01T10:00:00+0000",
         rows=()):
  """Writes a run folder as launch.py does: config.json and metrics.jsonl."""
  path = os.path.join(root, name)
  os.makedirs(path)
  files.write_json(os.path.join(path, folder.CONFIG_FILE),
                   {"config": config.to_dict(), "started": started})
  log = folder.MetricsLog(path)
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
  folder.start(path, config, {})
  folder.record_resume(path, config.replace(chunk_steps=7), {}, {"step": 9})
  with open(os.path.join(path, folder.CONFIG_FILE)) as f:
    resume = json.load(f)["resumes"][0]
  assert resume["from_step"] == 9
  assert resume["changed"] == {"chunk_steps": 7}


def test_junk_under_runs_is_skipped(tmp_path):
  root = str(tmp_path)
  (tmp_path / "notes.txt").write_text("not a run")
  (tmp_path / "empty").mkdir()
  for name, text in [("garbage", "{not json"), ("a_list", "[1, 2]"),
                     ("no_config", '{"started": "x"}'),
                     ("unknown_key", '{"config": {"colour": "red"}}'),
                     ("bad_bytes", b"\xff\xfe\x00".decode("latin-1"))]:
    (tmp_path / name).mkdir()
    (tmp_path / name / folder.CONFIG_FILE).write_text(text, "latin-1")
  unreadable = _run(root, "unreadable")
  os.chmod(os.path.join(unreadable, folder.CONFIG_FILE), 0)
  junk_metrics = _run(root, "junk_metrics", started="2026-01-02T10:00:00+0000")
  with open(os.path.join(junk_metrics, folder.METRICS_FILE), "w") as f:
    f.write('3\n"text"\n{"epoch": 1}\n{torn')
  found = folder.find_runs(CONFIG, root)
  readable = os.access(os.path.join(unreadable, folder.CONFIG_FILE), os.R_OK)
  assert [r.path for r in found] == [junk_metrics] + [unreadable] * readable
  assert found[0].status == "unfinished" and found[0].epochs_logged == 1
  assert folder.choose(CONFIG, root=root).path == junk_metrics
  assert folder.find_runs(CONFIG, str(tmp_path / "missing")) == []
  first = folder.choose(CONFIG, root=str(tmp_path / "missing"))
  assert not first.resume and not first.news  # A first run says nothing.


def test_newest_by_recorded_start_time_not_name_or_mtime(tmp_path):
  root = str(tmp_path)
  newer = _run(root, "a-newer", started="2026-03-01T10:00:00+0000")
  older = _run(root, "z-older", started="2026-02-01T10:00:00+0100")
  undated = _run(root, "zz-undated", started="yesterday")
  _run(root, "other", CONFIG.replace(epochs=5),
       started="2026-04-01T10:00:00+0000")  # Other settings: not a candidate.
  os.utime(older)  # The newest mtime: it must not matter.
  assert [r.path for r in folder.find_runs(CONFIG, root)] == [
      newer, older, undated]
  choice = folder.choose(CONFIG, root=root)
  assert choice.resume and choice.path == newer
  assert choice.reason.startswith(f"resuming {newer}, the newest unfinished")


def test_settings_that_may_differ_on_resume_still_match(tmp_path):
  path = _run(str(tmp_path), "run", CONFIG.replace(
      workdir="elsewhere", chunk_steps=7, data_dir="/data", parallel="none"))
  assert folder.choose(CONFIG, root=str(tmp_path)).path == path


def test_finished_runs_start_a_new_folder_and_unfinished_are_resumed(tmp_path):
  root = str(tmp_path)
  finished = _run(root, "finished", started="2026-03-01T10:00:00+0000",
                  rows=[{"epoch": 4}, FINAL])
  choice = folder.choose(CONFIG, root=root)
  assert not choice.resume and choice.path.startswith(
      os.path.join(root, "linear-"))
  assert f"{finished} trained these settings to the end" in choice.reason
  unfinished = _run(root, "unfinished", started="2026-02-01T10:00:00+0000",
                    rows=[{"epoch": 1}])
  choice = folder.choose(CONFIG, root=root)
  assert choice.resume and choice.path == unfinished
  assert "(1 of 4 epochs logged)" in choice.reason


def test_a_diverged_run_is_not_repeated(tmp_path):
  root = str(tmp_path)
  _run(root, "finished", started="2026-01-01T10:00:00+0000",
       rows=[{"epoch": 4}, FINAL])
  diverged = _run(root, "diverged", started="2026-02-01T10:00:00+0000",
                  rows=[{"epoch": 1}, DIVERGED])
  with pytest.raises(Diverged, match=f"^{diverged} trained these settings and "
                     "diverged \\(at step 70, epoch 2\\)"):
    folder.choose(CONFIG, root=root)
  choice = folder.choose(CONFIG, overwrite=True, root=root)
  assert not choice.resume and "deletes no folder" in choice.reason
  # Another setting is another run: it starts.
  other = CONFIG.replace(learning_rate=1e-4)
  assert not folder.choose(other, root=root).resume
  # Given by --workdir, the same settings are refused, other ones are not.
  with pytest.raises(Diverged, match="resuming would diverge again"):
    folder.check_not_diverged(diverged, CONFIG)
  folder.check_not_diverged(diverged, CONFIG.replace(learning_rate=1e-4))
  folder.check_not_diverged(str(tmp_path / "new"), CONFIG)


def test_overwrite_without_workdir_deletes_nothing(tmp_path):
  root = str(tmp_path)
  unfinished = _run(root, "unfinished", rows=[{"epoch": 1}])
  choice = folder.choose(CONFIG, overwrite=True, root=root)
  assert not choice.resume and choice.path != unfinished
  assert os.listdir(root) == ["unfinished"]


def test_a_run_training_in_another_process_is_left_alone(tmp_path):
  root = str(tmp_path)
  busy = _run(root, "busy", started="2026-03-01T10:00:00+0000")
  idle = _run(root, "idle", started="2026-02-01T10:00:00+0000")
  fd = os.open(busy, os.O_RDONLY)  # Another open file: another holder.
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert folder.in_use(busy) and not folder.in_use(idle)
    assert [r.status for r in folder.find_runs(CONFIG, root)] == [
        "running", "unfinished"]
    assert folder.choose(CONFIG, root=root).path == idle
    with pytest.raises(folder.UserError, match="is in use"):
      folder.check_not_in_use(busy)
  finally:
    os.close(fd)
  assert not folder.in_use(busy)


def test_a_run_holds_its_folder_while_it_writes_it(tmp_path):
  path = str(tmp_path / "run")
  with folder.locking() as held:
    folder.begin(path, CONFIG, {}, existing=False, overwrite=False, meta=None)
    assert os.path.realpath(path) in held
    assert not folder.in_use(path)  # Not to this process itself.
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.close(fd)
  assert not folder.in_use(path)
  # Outside locking() (the Python API), nothing is locked.
  folder.begin(path, CONFIG, {}, existing=True, overwrite=False, meta=None)
  assert not folder.in_use(path)


def test_default_workdir_never_names_an_existing_folder(tmp_path):
  first = folder.default_workdir("mlp", str(tmp_path))
  os.makedirs(first)
  second = folder.default_workdir("mlp", str(tmp_path))
  assert second == first + "-2"


def test_a_run_begun_by_another_process_meanwhile_is_refused(tmp_path):
  path = _run(str(tmp_path), "run", rows=[{"epoch": 1}])
  before = lh.snapshot(path)
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    with folder.locking():
      with pytest.raises(folder.UserError, match="is in use"):
        folder.begin(path, CONFIG, {}, existing=True, overwrite=False,
                     meta=None)
  finally:
    os.close(fd)
  assert lh.snapshot(path) == before

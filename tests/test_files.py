"""Files are written whole or not at all (mnist_jax/files.py), with the
user's normal permissions."""

import errno
import io
import os
import shutil
import stat

import pytest

from mnist_jax import files
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import pipeline
from mnist_jax.results import report

UMASK = 0o002  # Group-writable: unlike the usual 0o022, also tells 0o664 from 0o644.
EXPECTED = 0o666 & ~UMASK


@pytest.fixture
def umask():
  old = os.umask(UMASK)
  try:
    yield
  finally:
    os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_a_write_is_whole_or_not_at_all_with_the_umask(tmp_path, umask):
  """A failed write leaves the old file and no temporary; the temporary
  file a killed write left (a run's, or --mode=predict --plot's) is the
  next write's."""
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

"""Files are written whole or not at all, with the user's normal permissions."""

import io
import os
import shutil
import stat

import pytest

from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.results import report
from mnist_jax.rundir import files
from mnist_jax.training import train

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


def test_atomic_writes_the_whole_file_with_the_umask(tmp_path, umask):
  path = str(tmp_path / "a.json")
  files.write_json(path, {"b": 1, "a": [1, 2]})
  assert open(path).read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  assert _mode(path) == EXPECTED
  with files.atomic(str(tmp_path / "b.bin"), "wb") as f:
    f.write(b"\x00\x01")
  assert _mode(tmp_path / "b.bin") == EXPECTED
  assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "keep.txt")
  files.write_text(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic(path) as f:
      f.write("half a new")
      raise RuntimeError("interrupted")
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.slow
def test_run_files_get_the_users_permissions(prepared, tmp_path, umask):
  """config.json, metrics.jsonl, the report, the checkpoint and the dataset
  cache: 0o666 & ~umask, not tempfile's 0o600."""
  mnist_dir, data_dir = prepared
  fresh = str(tmp_path / "tfds")
  shutil.copytree(data_dir, fresh)
  cache = os.path.join(fresh, "mnist", "3.0.1", "mnist_jax_arrays.npz")
  os.remove(cache)
  workdir = str(tmp_path / "run")
  config = models.get_config("mlp", "seed", epochs=1, mlp_hidden=(8,),
                             batch_size=50, mnist_dir=mnist_dir,
                             data_dir=fresh, workdir=workdir)
  train.train_and_evaluate(config, workdir, stream=io.StringIO())
  events = [f for f in os.listdir(workdir) if "tfevents" in f]
  written = ["config.json", "metrics.jsonl", *report.FILES, *events]
  assert events
  for name in written:
    assert _mode(os.path.join(workdir, name)) == EXPECTED, name
  assert _mode(cache) == EXPECTED
  checkpoint_files = [os.path.join(d, n) for d, _, names in
                      os.walk(os.path.join(workdir, "checkpoints")) for n in names]
  assert checkpoint_files
  for path in checkpoint_files:
    assert _mode(path) == EXPECTED, path
  assert pipeline.prepare("mnist", fresh)["train_images"].shape == (600, 28, 28)

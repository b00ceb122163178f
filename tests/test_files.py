"""Files are written whole or not at all, with the user's normal permissions."""

import io
import os
import shutil
import signal
import stat
import subprocess
import sys

from PIL import Image
from PIL import ImageDraw
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.results import report
from mnist_jax import files
from mnist_jax import modes

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


def test_the_temporary_file_a_killed_write_left_is_the_next_writes(tmp_path):
  stale = tmp_path / ".report.md.tmp"
  stale.write_text("half a report, its writer killed")
  files.write_text(str(tmp_path / "report.md"), "the report")
  assert os.listdir(tmp_path) == ["report.md"]
  assert (tmp_path / "report.md").read_text() == "the report"


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
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
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
  assert pipeline.prepare("mnist", fresh)["train_images"].shape == (600, 28, 28, 1)


# Runs launch.py with files.atomic pausing once it has created the temporary
# file of a plot under WORKDIR/predict, after printing a marker.
_PAUSE_IN_PLOT = r"""
import contextlib, os, runpy, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
from mnist_jax import files
_atomic = files.atomic
@contextlib.contextmanager
def atomic(path, mode="w"):
  with _atomic(path, mode) as f:
    if os.path.basename(os.path.dirname(path)) == "predict":
      print("@writing", flush=True)
      time.sleep(120)
    yield f
files.atomic = atomic
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_temporary_file_a_killed_predict_left_is_removed(tiny_run,
                                                           tmp_path):
  """A kill during --mode=predict --plot leaves a temporary file in
  WORKDIR/predict; the next predict --plot removes it."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  image = str(tmp_path / "seven.png")
  picture = Image.new("L", (56, 56), 255)  # A black 1 on white paper.
  ImageDraw.Draw(picture).line([(28, 8), (28, 48)], fill=0, width=6)
  picture.save(image)
  args = ["--mode=predict", f"--workdir={workdir}", f"--image={image}",
          "--plot"]
  p = subprocess.Popen(
      [sys.executable, "-c", _PAUSE_IN_PLOT,
       os.path.join(lh.ROOT, "launch.py"), *args], cwd=lh.ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=lh.child_env())
  try:
    for line in p.stdout:
      if line.strip() == "@writing":
        break
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  predict = os.path.join(workdir, "predict")
  left = [n for n in os.listdir(predict) if n.endswith(".tmp")]
  assert left and os.path.getsize(os.path.join(predict, left[0])) == 0, (
      os.listdir(predict), p.stderr.read())
  rc, out, err = lh.run(args)
  assert rc == 0, err
  assert sorted(os.listdir(predict)) == ["seven.png"], out + err

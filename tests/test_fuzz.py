"""Property tests: damaged IDX files and checkpoints give the clear error, never
another exception or a hang."""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

import jax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

import launch_helpers as lh
from conftest import write_idx
from mnist_jax import models
from mnist_jax.data import idx
from mnist_jax.errors import UserError
from mnist_jax.rundir import checkpoints
from mnist_jax import optim
from mnist_jax.training import train

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_idx(kind: str, n: int = 3) -> bytes:
  rng = np.random.default_rng(n)
  if kind == "images":
    array = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  else:
    array = rng.integers(0, 10, (n,), dtype=np.uint8)
  return struct.pack(f">I{array.ndim}I", 0x800 + array.ndim,
                     *array.shape) + array.tobytes()


def _read(raw: bytes, kind: str):
  magic = idx.IMAGES_MAGIC if kind == "images" else idx.LABELS_MAGIC
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "file")
    with open(path, "wb") as f:
      f.write(raw)
    try:
      array = idx.read(path, magic)
    except idx.IdxError as e:
      assert path in str(e) and "\n" not in str(e)
      return None
  assert array.dtype == np.uint8
  assert array.shape[1:] == ((28, 28, 1) if kind == "images" else ())
  return array


KINDS = st.sampled_from(["images", "labels"])


@SETTINGS
@given(raw=st.binary(max_size=3000), kind=KINDS, gz=st.booleans())
def test_idx_random_bytes(raw, kind, gz):
  _read(gzip.compress(raw) if gz else raw, kind)


@SETTINGS
@given(kind=KINDS, gz=st.booleans(), data=st.data())
def test_idx_truncated(kind, gz, data):
  raw = _valid_idx(kind)
  if gz:
    raw = gzip.compress(raw)
  cut = data.draw(st.integers(0, len(raw) - 1))
  assert _read(raw[:cut], kind) is None


@SETTINGS
@given(kind=KINDS, data=st.data())
def test_idx_corrupted_header(kind, data):
  raw = bytearray(_valid_idx(kind))
  header = 16 if kind == "images" else 8
  pos = data.draw(st.integers(0, header - 1))
  raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
  _read(bytes(raw), kind)  # A valid different header is fine; anything else errs.


def test_idx_read_pair_rejects_mismatched_counts(tmp_path):
  images, labels = tmp_path / "i", tmp_path / "l"
  write_idx(str(images), np.zeros((3, 28, 28), np.uint8))
  write_idx(str(labels), np.zeros((2,), np.uint8))
  with pytest.raises(idx.IdxError, match="3 images but"):
    idx.read_pair(str(images), str(labels))


def _tree(seed):
  """What a checkpoint holds of a fresh linear model's train state."""
  config = models.get_config("linear", "seed")
  model, _ = models.build(config, say=lambda _: None)
  return jax.tree.map(jax.numpy.asarray, checkpoints.tree(
      train.create_train_state(jax.random.key(seed), model,
                               optim.make_optimizer(config, 5), (28, 28, 1))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of a small linear model: (workdir, template, state), the
  latter two what a checkpoint holds of a train state."""
  state, template = (_tree(seed) for seed in (1, 2))
  workdir = str(tmp_path_factory.mktemp("ckpt"))
  writer = checkpoints.manager(workdir, keep=3)
  checkpoints.save(writer, 7, state, {"epoch": 1, "epoch_step": 0, "step": 7,
                                      "model": "linear"})
  writer.close()
  return workdir, template, state


def _files(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, fs in os.walk(folder) for f in fs)


def _restore_within(workdir, template, seconds=60):
  """Restores in a thread, failing the test if it takes over `seconds`."""
  result = {}

  def target():
    try:
      result["value"] = checkpoints.read(workdir, template, "linear")
    except BaseException as e:  # pylint: disable=broad-except
      result["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), "restoring a damaged checkpoint hung"
  return result


MUTATIONS = st.sampled_from(["truncate", "random", "flip", "delete"])


@pytest.mark.slow
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), mutation=MUTATIONS)
def test_checkpoint_damage_is_a_checkpoint_error(saved, data, mutation,
                                                 capsys):
  source, template, state = saved
  capsys.readouterr()
  files = _files(source)
  name = data.draw(st.sampled_from(files))
  with tempfile.TemporaryDirectory() as workdir:
    shutil.copytree(os.path.join(source, "checkpoints"),
                    os.path.join(workdir, "checkpoints"))
    path = os.path.join(workdir, name)
    size = os.path.getsize(path)
    if mutation == "truncate":
      with open(path, "r+b") as f:
        f.truncate(data.draw(st.integers(0, max(size - 1, 0))))
    elif mutation == "random":
      with open(path, "wb") as f:
        f.write(data.draw(st.binary(max_size=2 * size + 16)))
    elif mutation == "flip" and size:
      pos = data.draw(st.integers(0, size - 1))
      with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ data.draw(st.integers(1, 255))]))
    else:
      os.remove(path)
    result = _restore_within(workdir, template)
  # orbax's abandoned reads print tracebacks from other threads; none may show.
  stray = capsys.readouterr().err
  assert "Traceback" not in stray and "Exception ignored" not in stray, stray
  if "error" in result:
    error = result["error"]
    assert isinstance(error, checkpoints.CheckpointError), repr(error)
    assert isinstance(error, UserError) and "\n" not in str(error)
    if "delete" in str(error) or "--overwrite" in str(error):
      assert "is damaged or truncated" in str(error), str(error)
  else:  # Damage orbax does not need (metadata it rebuilds) must be harmless.
    restored, _ = result["value"]
    lh.assert_trees_equal(restored["params"], state["params"])
    lh.assert_trees_equal(restored["opt_state"], state["opt_state"])


_DAMAGE_EVERY_FILE = """
import os, shutil, sys
sys.path.insert(0, os.getcwd())
import jax
from mnist_jax import models
from mnist_jax.rundir import checkpoints
from mnist_jax import optim
from mnist_jax.training import train
source, scratch, files = sys.argv[1], sys.argv[2], sys.argv[3:]
config = models.get_config("linear", "seed")
model, _ = models.build(config, say=lambda _: None)
template = jax.tree.map(jax.numpy.asarray, checkpoints.tree(
    train.create_train_state(jax.random.key(2), model,
                             optim.make_optimizer(config, 5), (28, 28, 1))))
for name in files:
  for cut in (False, True):
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(source, scratch)
    path = os.path.join(scratch, name)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if cut:
        f.truncate(size // 2)
      elif size:
        f.seek(size // 2)
        byte = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([byte ^ 0x5A]))
    try:
      checkpoints.read(scratch, template, "linear")
      print("restored", name, cut)
    except checkpoints.CheckpointError as e:
      print("refused", name, cut, e)
"""


@pytest.mark.slow
def test_damaged_checkpoints_leave_no_stray_tracebacks(saved, tmp_path):
  """Restoring each damaged copy in a fresh process prints nothing to stderr.

  orbax's failed reads leave tensorstore callbacks and coroutines that print
  tracebacks from other threads, during the restore or at exit, after the
  one-line error. The whole process's stderr is checked, exit included.
  """
  source, _, _ = saved
  out = subprocess.run(
      [sys.executable, "-c", _DAMAGE_EVERY_FILE, source, str(tmp_path / "x"),
       *_files(source)],
      capture_output=True, text=True, timeout=300, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "refused" in out.stdout
  for marker in ("Traceback", "Exception ignored", "never retrieved",
                 "never awaited"):
    assert marker not in out.stderr, out.stderr[:3000]


def _edit_meta(workdir, edit):
  """Rewrites a checkpoint's meta record (valid JSON) with `edit(meta)`."""
  [path] = [os.path.join(workdir, f) for f in _files(workdir)
            if f.endswith(os.path.join("meta", "metadata"))]
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def test_checkpoint_meta_edited_is_damaged_not_another_model(saved, tmp_path):
  """A changed byte that leaves the meta valid JSON still reads as damage."""
  source, template, _ = saved
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  _edit_meta(workdir, lambda m: m.update(model="mlp"))
  with pytest.raises(checkpoints.CheckpointError,
                     match="damaged.*does not match the checksum saved with it"):
    checkpoints.read(workdir, template, "linear")


def test_checkpoint_restore_round_trip_and_missing(saved, tmp_path):
  source, template, state = saved
  restored, meta = checkpoints.read(source, template, "linear")
  lh.assert_trees_equal(restored, state)
  assert meta["epoch"] == 1 and meta["format"] == checkpoints.FORMAT
  assert meta["digest"] == checkpoints.digest([state[k] for k in sorted(state)])
  with pytest.raises(checkpoints.CheckpointError,
                     match="has no complete checkpoint yet"):
    checkpoints.read(str(tmp_path), template)
  with pytest.raises(checkpoints.CheckpointError,
                     match="says model 'mlp', but the run's checkpoints were "
                     "written by model 'linear'"):
    checkpoints.read(source, template, "mlp")

"""Property tests: damaged IDX files and checkpoints give the clear error, never
another exception or a hang."""

import gzip
import os
import shutil
import struct
import tempfile
import threading

import jax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import checkpoint, idx, models, train
from mnist_jax.errors import UserError

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
  assert array.shape[1:] == ((28, 28) if kind == "images" else ())
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
  idx.write(str(images), np.zeros((3, 28, 28), np.uint8))
  idx.write(str(labels), np.zeros((2,), np.uint8))
  with pytest.raises(idx.IdxError, match="3 images but"):
    idx.read_pair(str(images), str(labels))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of a small linear model: (workdir, template, state)."""
  config = models.get_config("linear", "seed")
  model = models.get("linear").build(config)
  state = train.create_train_state(jax.random.PRNGKey(1), config, model, 5)
  template = train.create_train_state(jax.random.PRNGKey(2), config, model, 5)
  workdir = str(tmp_path_factory.mktemp("ckpt"))
  writer = checkpoint.Checkpointer(workdir)
  writer.save(7, state, {"epoch": 1, "epoch_step": 0, "step": 7,
                         "model": "linear",
                         "param_shapes": checkpoint.param_shapes(state.params)})
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
      result["value"] = checkpoint.Checkpointer(
          workdir, read_only=True).restore(template, model="linear")
    except BaseException as e:  # pylint: disable=broad-except
      result["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), "restoring a damaged checkpoint hung"
  return result


MUTATIONS = st.sampled_from(["truncate", "random", "flip", "delete"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), mutation=MUTATIONS)
def test_checkpoint_damage_is_a_checkpoint_error(saved, data, mutation):
  source, template, state = saved
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
  if "error" in result:
    error = result["error"]
    assert isinstance(error, checkpoint.CheckpointError), repr(error)
    assert isinstance(error, UserError) and "\n" not in str(error)
  else:  # Damage orbax does not need (metadata it rebuilds) must be harmless.
    restored, _ = result["value"]
    lh.assert_trees_equal(restored.params, state.params)
    lh.assert_trees_equal(restored.opt_state, state.opt_state)


def test_checkpoint_restore_round_trip_and_missing(saved, tmp_path):
  source, template, state = saved
  restored, meta = checkpoint.Checkpointer(source, read_only=True).restore(
      template, model="linear")
  lh.assert_trees_equal(restored, state)
  assert meta["epoch"] == 1 and meta["digest"] == checkpoint.state_digest(state)
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
    checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(template)
  with pytest.raises(checkpoint.CheckpointError, match="not 'mlp'"):
    checkpoint.Checkpointer(source, read_only=True).restore(template, model="mlp")

"""The Python API (mnist_jax/api.py): its names, a Run, README's blocks."""

import fcntl
import os
import re

import jax
import numpy as np
import pytest

from conftest import seven
from launch_helpers import ROOT, snapshot
import mnist_jax
from mnist_jax import api
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record


@pytest.fixture(scope="module")
def run(tiny_run):
  return mnist_jax.load_run(tiny_run)


@pytest.fixture(scope="module")
def split(run):
  return mnist_jax.load_data(run.config).test


def test_the_package_exports_the_api_names():
  """`import mnist_jax` gives each name of the API, and nothing else."""
  assert sorted(mnist_jax.__all__) == sorted(api.__all__)
  assert set(mnist_jax.__all__) <= set(dir(mnist_jax))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    _ = mnist_jax.nope


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
  BLOCKS = re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readmes_python_blocks_run_as_written(prepared, tmp_path, monkeypatch,
                                               capsys, block):
  """Every Python block runs. The API's (the first) trains, loads (the run's
  test accuracy) and predicts the shipped photo; the core's (the second)
  trains with no run folder, talking on stderr."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TFDS_DATA_DIR", prepared[1])
  (tmp_path / "docs").symlink_to(os.path.join(ROOT, "docs"))  # Its photo.
  code = BLOCKS[block]
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  out, err = capsys.readouterr()
  if block == 0:
    accuracy, final_accuracy, digit = out.split()[-3:]
    assert float(accuracy) == pytest.approx(float(final_accuracy), abs=1e-6)
    assert digit in list("0123456789")
    assert os.path.exists(tmp_path / "runs" / "mlp-api" / "report.md")
  elif block == 1:
    lines = err.splitlines()
    assert any(l.startswith("compiling the train step") for l in lines)
    assert [l.split(":")[0] for l in lines if "train loss" in l] == [
        "epoch 1", "epoch 2"]
    last = out.splitlines()[-1]
    assert 0 <= float(last.split()[0]) <= 1  # The test accuracy.
    assert "batch_stats" in last  # BatchNorm's statistics: the model state.
    assert os.listdir(tmp_path) == ["docs"]


def test_every_layout_and_dtype_gives_the_same_answer(run, split):
  """run.logits, predict, probabilities and run.model on the raw images
  agree, on one image or a batch."""
  images = split.images[:12]
  expected = run.logits(images)
  assert expected.shape == (12, 10)
  for same in (images.reshape(12, 784), images[..., 0],
               images.astype(np.int64), images / 255.0,
               (images / 255.0).astype(np.float32).reshape(12, 784)):
    np.testing.assert_allclose(run.logits(same), expected, atol=1e-5)
  for same in (images[3], images[3].ravel()):
    np.testing.assert_allclose(run.logits(same), expected[3], atol=1e-5)
  assert run.predict(images[3]) == int(expected[3].argmax())
  assert isinstance(run.predict(images[3]), int)
  np.testing.assert_array_equal(run.predict(images), expected.argmax(-1))
  np.testing.assert_allclose(run.probabilities(images).sum(-1), 1.0)
  assert run.predict(images[:0]).shape == (0,)
  assert run.probabilities(images[:0], ensemble=True).shape == (0, 10)
  for raw in (images, images.astype(np.float32)):
    np.testing.assert_allclose(run.model.apply(run.variables, raw), expected,
                               atol=1e-5)
  assert run.variables["params"] is run.params
  assert jax.tree.structure(run.params) == jax.tree.structure(
      run.model.init(jax.random.key(0), images[:1])["params"])


@pytest.mark.parametrize("images,message", [
    (np.zeros((3, 28, 27), np.uint8), r"shape \[3, 28, 27\]: pass one image"),
    (np.zeros((3, 28, 28)) + 255.0, r"values from 255.0 to 255.0: pass uint8"),
    (np.full((28, 28), np.nan), "floats in"),
    (np.full((28, 28), 300), "integers in 0..255"),
])
def test_other_images_are_refused_with_what_to_pass(run, images, message):
  with pytest.raises(ValueError, match=message):
    run.predict(images)


def test_evaluate_and_read_metrics_give_the_training_runs_numbers(
    run, split, tiny_run):
  """(The accuracy: the README block's test above.)"""
  result = run.evaluate(split.images, split.labels)
  *epochs, final = mnist_jax.read_metrics(tiny_run)
  assert [r["epoch"] for r in epochs] == [1]
  assert final == metrics_log.final_metrics(tiny_run)
  assert result["loss"] == pytest.approx(final["test_loss"], rel=1e-4)
  assert np.trace(result["confusion"]) == round(result["accuracy"] *
                                                len(split))


def test_load_image_takes_a_path_or_a_pil_image(tmp_path):
  """A picture in memory reads as its file does (at a colour dataset's shape
  too)."""
  picture = seven()
  picture.save(tmp_path / "seven.png")
  from_path = mnist_jax.load_image(tmp_path / "seven.png")
  assert from_path.shape == (28, 28, 1) and from_path.dtype == np.uint8
  np.testing.assert_array_equal(mnist_jax.load_image(picture), from_path)
  assert mnist_jax.load_image(tmp_path / "seven.png", (16, 12, 3)).shape == (
      16, 12, 3)


def test_train_and_evaluate_returns_a_finished_run_unless_another_holds_it(
    tiny_run, capsys):
  """A finished run (the config's workdir) is returned as it is; a folder
  another process holds is refused in one line naming it, unchanged."""
  config = record.read_config(tiny_run)
  assert mnist_jax.train_and_evaluate(config) == metrics_log.final_metrics(
      tiny_run)
  assert f"{tiny_run} already finished" in capsys.readouterr().out
  before = snapshot(tiny_run)
  held = os.open(tiny_run, os.O_RDONLY)  # As launch.py holds it.
  fcntl.flock(held, fcntl.LOCK_EX)
  try:
    with pytest.raises(lock.InUse, match=re.escape(tiny_run)):
      mnist_jax.train_and_evaluate(config)
  finally:
    os.close(held)
  assert not lock.in_use(tiny_run)
  assert snapshot(tiny_run) == before

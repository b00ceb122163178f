"""The Python API: mnist_jax's lazy names, a loaded Run, and README's example."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
from PIL import Image, ImageDraw
import pytest


import mnist_jax
from mnist_jax import api
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tiny_run):
  return mnist_jax.load_run(tiny_run)


@pytest.fixture(scope="module")
def test_split(run):
  return mnist_jax.load_data(run.config).test


def _readme_blocks() -> list:
  """The README's Python code blocks, in order."""
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def _seven(path):
  """A dark 7 drawn on a light background, as a photographed digit is."""
  image = Image.new("L", (120, 160), 235)
  ImageDraw.Draw(image).line([(20, 30), (100, 30), (50, 140)], fill=20, width=12)
  image.save(path)


def test_import_loads_the_api_only_when_used():
  code = ("import sys, mnist_jax; print(sorted(m for m in ('jax', 'flax', "
          "'numpy', 'mnist_jax.api') if m in sys.modules)); "
          "mnist_jax.load_run; print('mnist_jax.api' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=True, timeout=120)
  assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_the_package_exports_the_api_names():
  assert sorted(mnist_jax.__all__) == sorted(api.__all__)
  assert mnist_jax.load_run is api.load_run
  assert set(mnist_jax.__all__) <= set(dir(mnist_jax))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    _ = mnist_jax.nope


@pytest.mark.slow
def test_readme_example_runs(prepared, tmp_path, monkeypatch, capsys):
  """README's "Python API" code, verbatim: trains a run, loads it, predicts."""
  _, data_dir = prepared
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  (tmp_path / "docs").symlink_to(os.path.join(ROOT, "docs"))  # Its photo.
  exec(compile(_readme_blocks()[0], "README.md", "exec"), {})  # pylint: disable=exec-used
  accuracy, final_accuracy, digit = capsys.readouterr().out.split()[-3:]
  # The loaded run's test accuracy is the one the training run reported.
  assert float(accuracy) == pytest.approx(float(final_accuracy), abs=1e-6)
  assert digit in list("0123456789")
  assert os.path.exists(tmp_path / "runs" / "mlp-api" / "report.md")


def test_the_readme_has_its_two_python_blocks():
  """The slow tests below run each, as written."""
  first, core = _readme_blocks()
  assert "mnist_jax.load_run(" in first and "loop.train_and_evaluate(" in core


@pytest.mark.slow
def test_readme_core_example_runs(prepared, tmp_path, monkeypatch, capsys):
  """README's research-core code, verbatim: no run folder, and it says what
  it is doing while it works."""
  _, data_dir = prepared
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  exec(compile(_readme_blocks()[1], "README.md", "exec"), {})  # pylint: disable=exec-used
  out, err = capsys.readouterr()
  lines = err.splitlines()  # What it is doing, as progress, on stderr.
  assert any(l.startswith("compiling the train step") for l in lines)
  assert [l.split(":")[0] for l in lines if "train loss" in l] == [
      "epoch 1", "epoch 2"]
  last = out.splitlines()[-1]
  assert 0 <= float(last.split()[0]) <= 1  # The test accuracy.
  assert "batch_stats" in last  # BatchNorm's statistics: the model state.
  assert os.listdir(tmp_path) == []


def test_the_shipped_photo_is_a_seven_as_predict_sees_it():
  """docs/img/seven.png, the README's example photo, preprocessed."""
  image = mnist_jax.load_image(os.path.join(ROOT, "docs", "img", "seven.png"))
  assert image.shape == (28, 28, 1) and image.dtype == np.uint8
  image = image[..., 0]
  ink = image > 128  # White ink on black, the digit's box centred by mass.
  assert 0.05 < ink.mean() < 0.4
  rows, cols = np.nonzero(ink)
  assert abs(rows.mean() - 13.5) < 3 and abs(cols.mean() - 13.5) < 3
  assert ink[rows.min()].sum() > ink[rows.max()].sum()  # A 7's bar on top.


def test_every_layout_and_dtype_gives_the_same_answer(run, test_split):
  images = test_split.images[:12]
  expected = run.logits(images)
  assert expected.shape == (12, 10)
  for same in (images.reshape(12, 784), images[..., 0],
               images.astype(np.int64), images / 255.0,
               (images / 255.0).astype(np.float32).reshape(12, 784)):
    np.testing.assert_allclose(run.logits(same), expected, atol=1e-5)
  np.testing.assert_allclose(run.logits(images[3]), expected[3], atol=1e-5)
  np.testing.assert_allclose(run.logits(images[3].ravel()), expected[3],
                             atol=1e-5)
  assert run.predict(images[3]) == int(expected[3].argmax())
  assert isinstance(run.predict(images[3]), int)
  np.testing.assert_array_equal(run.predict(images), expected.argmax(-1))
  np.testing.assert_allclose(run.probabilities(images).sum(-1), 1.0)
  assert run.predict(images[:0]).shape == (0,)
  assert run.probabilities(images[:0], ensemble=True).shape == (0, 10)


@pytest.mark.parametrize("images,message", [
    (np.zeros((3, 28, 27), np.uint8), r"shape \[3, 28, 27\]: pass one image"),
    (np.zeros((3, 28, 28)) + 255.0, r"values from 255.0 to 255.0: pass uint8"),
    (np.full((28, 28), np.nan), "floats in"),
    (np.full((28, 28), 300), "integers in 0..255"),
])
def test_other_images_are_refused_with_what_to_pass(run, images, message):
  with pytest.raises(ValueError, match=message):
    run.predict(images)


def test_the_flax_module_computes_the_runs_logits(run, test_split):
  """`run.model` takes the raw images ([N, 28, 28], uint8 or floats on the
  0-255 scale) and `run.variables`, and gives the run's own logits."""
  images = test_split.images[:7]
  logits = run.model.apply(run.variables, images)
  assert logits.shape == (7, 10)
  np.testing.assert_allclose(logits, run.logits(images), atol=1e-5)
  np.testing.assert_allclose(
      run.model.apply(run.variables, images.astype(np.float32)), logits,
      atol=1e-5)
  assert run.variables["params"] is run.params
  assert jax.tree.structure(run.params) == jax.tree.structure(
      run.model.init(jax.random.key(0), images[:1])["params"])


def test_evaluate_gives_the_training_runs_test_metrics(run, test_split,
                                                       tiny_run):
  result = run.evaluate(test_split.images, test_split.labels)
  final = metrics_log.final_metrics(tiny_run)
  assert result["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-6)
  assert result["loss"] == pytest.approx(final["test_loss"], rel=1e-4)
  assert result["confusion"].sum() == len(test_split)
  assert np.trace(result["confusion"]) == round(result["accuracy"] *
                                                len(test_split))


def test_read_metrics_gives_the_epochs_then_the_final_row(tiny_run):
  rows = mnist_jax.read_metrics(tiny_run)
  assert [r["epoch"] for r in rows if "train_loss" in r] == [1]
  assert "test_accuracy" in rows[-1]


def test_load_image_takes_a_path_or_a_pil_image(tmp_path):
  _seven(tmp_path / "seven.png")
  from_path = mnist_jax.load_image(tmp_path / "seven.png")
  assert from_path.shape == (28, 28, 1) and from_path.dtype == np.uint8
  with Image.open(tmp_path / "seven.png") as image:
    np.testing.assert_array_equal(mnist_jax.load_image(image), from_path)
  assert from_path[14].max() == 255 and from_path[0].max() == 0  # Ink, centred.
  assert mnist_jax.load_image(tmp_path / "seven.png", (16, 12, 3)).shape == (
      16, 12, 3)  # A colour dataset's: the picture, resized.


def test_train_and_evaluate_defaults_to_the_configs_workdir(tiny_run, capsys):
  """A finished run folder is returned as it is, not trained again."""
  final = mnist_jax.train_and_evaluate(record.read_config(tiny_run))
  assert final == metrics_log.final_metrics(tiny_run)
  assert f"{tiny_run} already finished" in capsys.readouterr().out


def test_train_and_evaluate_is_refused_a_folder_another_process_holds(
    tiny_run):
  """The API is a run folder's one writer as launch.py is: a folder another
  process holds (with the flock launch.py takes) is refused in one line
  naming it, and nothing in it changes."""
  before = {f: os.path.getmtime(os.path.join(tiny_run, f))
            for f in os.listdir(tiny_run)}
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, os, sys, time; "
       "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX);"
       " print('held', flush=True); time.sleep(60)", tiny_run],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.InUse, match=re.escape(tiny_run)):
      mnist_jax.train_and_evaluate(record.read_config(tiny_run))
  finally:
    holder.kill()
    holder.wait()
  assert not lock.in_use(tiny_run)  # Released with the process.
  assert {f: os.path.getmtime(os.path.join(tiny_run, f))
          for f in os.listdir(tiny_run)} == before

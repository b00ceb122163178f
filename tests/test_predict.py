"""--mode=predict: a picture of a digit on any paper, in any ink, size or photo
becomes MNIST's input (data/images.py); a run's predictions and their plots."""

import io
import json
import os
import shutil
import warnings

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageOps
import pytest

from conftest import dot, seven
import launch_helpers as lh
from experiments import photo_digits
from mnist_jax.data import images
from mnist_jax.results import plots
from mnist_jax.results import run as run_lib

DIGITS = [str(k) for k in range(10)]  # MNIST's class names.
# Polylines on a 28x28 grid, drawn 4x larger and shrunk (anti-aliased strokes
# about 3 px wide, as MNIST's).
SHAPES = {"7": [(7, 7), (20, 7), (11, 22)],
          "4": [(16, 22), (16, 6), (7, 17), (21, 17)]}


def _digit(name):
  """A synthetic MNIST-style digit: [28, 28] uint8, white on black."""
  image = Image.new("L", (112, 112), 0)
  ImageDraw.Draw(image).line([(4 * x, 4 * y) for x, y in SHAPES[name]],
                             fill=255, width=11, joint="curve")
  return np.asarray(image.resize((28, 28), Image.Resampling.LANCZOS))


PICTURES = {  # name: (the picture, its clean scan).
    "light_on_dark": lambda: (seven(ink=255, paper=0), seven()),
    "grey_paper": lambda: (seven(ink=40, paper=200), seven()),
    "colour": lambda: (seven(ink=(10, 20, 150), paper=(250, 240, 200),
                              mode="RGB"), seven()),
    "transparent": lambda: (seven(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0),
                                   mode="RGBA"), seven()),
    # Photos (photo_digits.py's; one code path, whatever the digit): IoU >=
    # 0.63, correlation >= 0.79 over 20; shading taken for ink: <= 0.33, 0.65.
    **{f"photo_{k}_of_{d}": lambda k=k, d=d: (
        photo_digits.render_photo(_digit(d), np.random.default_rng([3, k])),
        photo_digits.clean_scan(_digit(d))) for k, d in enumerate("74")},
    "light_ink_on_a_dark_photo": lambda: (ImageOps.invert(
        photo_digits.render_photo(_digit("4"), np.random.default_rng(1))),
                                          photo_digits.mnist_style(_digit("4"))),
}


@pytest.mark.parametrize("name", PICTURES)
def test_a_picture_of_a_digit_gives_its_clean_scans_input(name):
  """MNIST's input: white ink on black, its longer side 20 px, centred by
  its centre of mass (not its box), whatever the picture's paper and ink."""
  picture, scan = PICTURES[name]()
  got = images.preprocess(picture, notes=(notes := []))
  clean = images.preprocess(scan)
  assert got.shape == (28, 28) and got.dtype == np.uint8 and not notes
  assert got[0, 0] == 0 and got.max() == 255
  a = got.astype(np.float64)
  idx = np.arange(28)
  centre = ((a.sum(1) * idx).sum() / a.sum(), (a.sum(0) * idx).sum() / a.sum())
  np.testing.assert_allclose(centre, images.CENTRE, atol=0.5)
  rows, cols = np.flatnonzero(got.any(1)), np.flatnonzero(got.any(0))
  assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == images.BOX
  ink, clean_ink = got > 127, clean > 127
  assert (ink & clean_ink).sum() / (ink | clean_ink).sum() >= 0.5  # IoU.
  assert np.corrcoef(got.ravel(), clean.ravel())[0, 1] >= 0.7


def test_a_thin_pen_on_a_big_canvas_is_thickened():
  thin = images.preprocess(seven(1200, width=3))
  thick = images.preprocess(seven(1200, width=90))
  assert (thin > 127).sum() >= 0.5 * (thick > 127).sum()


@pytest.mark.parametrize("size,expect", [((1600, 300), (5, 20)),  # Wide and big.
                                         ((7, 40), (20, 5))])  # Tiny and tall.
def test_big_and_odd_sizes_keep_the_aspect_ratio(size, expect):
  w, h = size
  image = Image.new("L", size, 0)
  # A bar filling 80% x 80% of the canvas: its aspect is the canvas's.
  ImageDraw.Draw(image).rectangle([0.1 * w, 0.1 * h, 0.9 * w - 1, 0.9 * h - 1],
                                  fill=255)
  out = images.preprocess(image) > 64
  rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
  np.testing.assert_allclose([rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1],
                             expect, atol=1)


def _gradient(w=400, h=300, shadow=False):
  """Paper lit by a gradient (and a soft shadow across a corner): no digit."""
  y, x = np.mgrid[0:h, 0:w] / max(w, h)
  light = 0.9 - 0.4 * x - 0.1 * y
  if shadow:
    light *= 1 - 0.4 / (1 + np.exp(-(x + y - 0.5) / 0.05))
  return Image.fromarray(np.uint8(255 * light))


def _save(picture, path):
  picture.save(path)
  return str(path)


@pytest.mark.parametrize("paper", [
    _gradient, lambda: _gradient(shadow=True),
    lambda: photo_digits.render_photo(np.zeros((28, 28), np.uint8),
                                      np.random.default_rng(0))],
                         ids=["gradient", "shadow", "blank_photo"])
def test_lit_paper_without_a_digit_is_refused_in_one_line(tmp_path, paper):
  """Its light is not taken for ink (a flat blank page, and files that are no
  picture: test_refusals.py's image cases and test_serve.py's table)."""
  path = _save(paper(), tmp_path / "blank.png")
  with pytest.raises(images.ImageError, match="has no digit on it") as info:
    images.load(path)
  assert str(info.value).startswith(path) and "\n" not in str(info.value)


def test_a_picture_past_pillows_warning_size_is_read_quietly(monkeypatch,
                                                            tmp_path):
  """A scan past Pillow's warning size (89 million pixels, here 1,000) is
  shrunk and read without its warning (past twice that: test_refusals.py)."""
  path = _save(seven(40, width=3), tmp_path / "scan.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert images.load(path).shape == (28, 28, 1)


def test_predictions_go_on_past_a_bad_file_and_note_a_dot(tiny_run, tmp_path):
  """--json: a line per file, a bad one's error (on stderr too; exit 1), a
  dot's note; --plot draws each file's input, files of one name apart."""
  tiny_run = str(shutil.copytree(tiny_run, tmp_path / "run"))  # Its plots.
  paths = [_save(seven(ink=ink, paper=255 - ink), str(tmp_path / name))
           for name, ink in (("a.png", 0), ("b.jpg", 255))]
  (tmp_path / "bad.txt").write_text("hello\n")
  bad = str(tmp_path / "bad.txt")
  os.makedirs(tmp_path / "again")
  paths += [bad, _save(dot(), str(tmp_path / "dot.png")),
            _save(seven(), str(tmp_path / "again" / "a.png"))]
  out, err = io.StringIO(), io.StringIO()
  assert run_lib.print_predictions(tiny_run, paths, as_json=True, plot=True,
                                   out=out, err=err) == 1
  lines = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [line["file"] for line in lines] == paths
  assert [line["digit"] is None for line in lines] == [0, 0, 1, 0, 0]
  for line in lines[:2] + lines[3:]:
    assert line["digit"] == int(np.argmax(line["probabilities"]))
    assert sum(line["probabilities"]) == pytest.approx(1.0, abs=1e-4)
  assert "not an image" in lines[2]["error"]
  assert [line.get("note") for line in lines] == [
      None, None, None, images.NO_DIGIT, None]
  said = err.getvalue().splitlines()
  assert f"error: {bad} is not an image" in err.getvalue()
  assert f"note: {paths[3]}: {images.NO_DIGIT}" in said
  folder = os.path.join(tiny_run, run_lib.PLOT_DIR)
  for name in ("a.png", "b.png", "dot.png", "a-2.png"):
    assert os.path.exists(os.path.join(folder, name)), os.listdir(folder)


def test_predict_plots_draw_the_input_as_the_model_sees_it(monkeypatch,
                                                           tmp_path):
  """README: the model sees white ink (255) on black (0); --plot and the
  report's digit figures draw the input so, unchanged, captioned its size."""
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, *_: figures.append(fig))
  image = images.preprocess(seven())
  plots.prediction(image, np.full(10, 0.1), str(tmp_path / "p.png"), "7.png",
                   DIGITS)
  plots.image_grid(image[None], ["#0"], [], str(tmp_path / "g.png"), 8)
  plots.image_grid(image[None], ["#0"], [0], str(tmp_path / "m.png"), 6)
  plots.sample_probabilities([{"image": image, "probabilities": np.full(
      10, 0.1)}], str(tmp_path / "s.png"), DIGITS)
  plots.prediction(np.zeros((16, 12), np.uint8), np.full(3, 1 / 3),
                   str(tmp_path / "p.png"), "x.png", ["a", "b", "c"])
  assert [ax.get_title() for fig in figures for ax in fig.axes
          if ax.images and ax.get_title().startswith("as the model")] == [
              "as the model saw it (28x28)", "as the model saw it (16x12)"]
  for fig in figures[:-1]:
    [drawn] = [im for ax in fig.axes for im in ax.images]
    np.testing.assert_array_equal(drawn.get_array(), image)
    ink, paper = drawn.to_rgba(np.array([[255.0, 0.0]]), norm=True)[0, :, :3]
    np.testing.assert_allclose(ink, 1.0)  # White.
    np.testing.assert_allclose(paper, 0.0)  # Black.
  for fig in figures:
    plots.plt.close(fig)


def test_image_lists_take_folders_patterns_and_commas_in_names(tmp_path,
                                                               monkeypatch):
  """--image names files, folders (their images, sorted) and patterns; a
  comma in a file's name survives the flag's comma split."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("b.png", "a.JPG", "c,d.png", "e, f.png"):
    seven().convert("RGB").save(photos / name)
  (photos / "notes.txt").write_text("not an image\n")
  (photos / "sub").mkdir()
  empty = tmp_path / "empty"
  empty.mkdir()
  # How launch.py splits "c,d.png,e, f.png, b.png" (a space after a comma).
  split = [str(photos / "c"), "d.png", str(photos / "e"), " f.png",
           f" {photos / 'b.png'}"]
  found = images.expand([str(photos), str(tmp_path / "*" / "*.png"), *split,
                         str(tmp_path / "*.gif"), str(empty)])
  monkeypatch.setenv("HOME", str(photos))
  assert images.expand(["~/b.png", " ~/c", "d.png"]) == [
      str(photos / "b.png"), str(photos / "c,d.png")]
  assert found == [str(photos / n) for n in (
      "a.JPG", "b.png", "c,d.png", "e, f.png", "b.png", "c,d.png", "e, f.png",
      "c,d.png", "e, f.png", "b.png")] + [str(tmp_path / "*.gif"), str(empty)]
  # (What names no image is refused by name: test_refusals.py's image cases.)


@pytest.mark.slow
def test_the_image_flag_is_split_by_expand_alone(tiny_run, tmp_path):
  """Spaces kept (absl's list flag strips them): three files named."""
  for name in ("b.png", "c,d.png", "e, f.png"):
    seven().save(tmp_path / name)
  rc, out, err = lh.run(["--mode=predict", f"--workdir={tiny_run}",
                         f"--image={tmp_path}/c,d.png,{tmp_path}/e, f.png, "
                         f"{tmp_path}/b.png"])
  assert rc == 0, err
  assert [line.split(": ")[0] for line in out.splitlines()] == [
      str(tmp_path / n) for n in ("c,d.png", "e, f.png", "b.png")]

"""MNIST-style preprocessing of image files and prediction with a trained run."""

import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
from PIL import Image
from PIL import ImageDraw
import pytest

from mnist_jax.data import images
from mnist_jax.errors import UserError
from mnist_jax.results import plots
from mnist_jax.results import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = [str(k) for k in range(10)]  # MNIST's class names.


def _centre_of_mass(a):
  a = a.astype(np.float64)
  idx = np.arange(a.shape[0])
  return (a.sum(axis=1) * idx).sum() / a.sum(), (a.sum(axis=0) * idx).sum() / a.sum()


def _box(a):
  rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _seven(size=(200, 200), ink=0, paper=255, width=14, mode="L"):
  """A '7' drawn off-centre (in the top-left part) of a canvas."""
  image = Image.new(mode, size, paper)
  w, h = size
  ImageDraw.Draw(image).line([(0.1 * w, 0.1 * h), (0.5 * w, 0.1 * h),
                              (0.25 * w, 0.6 * h)], fill=ink, width=width)
  return image


def test_output_is_centred_by_centre_of_mass_and_fits_20x20():
  out = images.preprocess(_seven())
  assert out.shape == (28, 28) and out.dtype == np.uint8
  cy, cx = _centre_of_mass(out)
  assert abs(cy - images.CENTRE) <= 0.5 and abs(cx - images.CENTRE) <= 0.5
  assert max(_box(out)) == 20
  # Off-centre input: the centre of mass moved, not just the bounding box.
  assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0


def test_light_background_is_inverted_to_mnist_polarity():
  dark_on_light = images.preprocess(_seven(ink=0, paper=255))
  light_on_dark = images.preprocess(_seven(ink=255, paper=0))
  grey_paper = images.preprocess(_seven(ink=40, paper=200))
  for out in (dark_on_light, light_on_dark, grey_paper):
    assert out[0, 0] == 0 and out.max() == 255  # Black background, white ink.
  np.testing.assert_array_equal(dark_on_light, light_on_dark)
  assert np.abs(grey_paper.astype(int) - dark_on_light).mean() < 3


def test_colour_and_transparent_images():
  rgb = images.preprocess(_seven(ink=(10, 20, 150), paper=(250, 240, 200),
                                 mode="RGB"))
  transparent = images.preprocess(_seven(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0),
                                         mode="RGBA"))
  reference = images.preprocess(_seven())
  for out in (rgb, transparent):
    assert out[0, 0] == 0
    assert np.abs(out.astype(int) - reference).mean() < 5


@pytest.mark.parametrize("size,expect", [((1600, 300), (5, 20)),  # Wide and big.
                                         ((7, 40), (20, 5))])  # Tiny and tall.
def test_big_and_odd_sizes_keep_the_aspect_ratio(size, expect):
  w, h = size
  image = Image.new("L", size, 0)
  # A bar filling 80% x 80% of the canvas: its aspect is the canvas's.
  ImageDraw.Draw(image).rectangle([0.1 * w, 0.1 * h, 0.9 * w - 1, 0.9 * h - 1],
                                  fill=255)
  out = images.preprocess(image)
  assert out.shape == (28, 28)
  height, width = _box(out > 64)
  assert abs(height - expect[0]) <= 1 and abs(width - expect[1]) <= 1


def test_thin_pen_on_a_big_canvas_is_thickened():
  thin = images.preprocess(_seven(size=(1200, 1200), width=3))
  thick = images.preprocess(_seven(size=(1200, 1200), width=90))
  assert (thin > 127).sum() >= 0.5 * (thick > 127).sum()


def test_a_picture_past_pillows_warning_size_is_read_quietly(monkeypatch,
                                                            tmp_path):
  """A big scan (Pillow warns past 89 million pixels, here 1,000) is shrunk
  and read without Pillow's two-line warning; past twice that it is refused
  in one line (test_error_paths_name_the_file)."""
  path = tmp_path / "scan.png"
  _seven(size=(40, 40), width=3).save(path)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert images.load(str(path)).shape == (28, 28, 1)


def test_error_paths_name_the_file(tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("not an image\n")
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  truncated = tmp_path / "cut.png"
  buffer = io.BytesIO()
  _seven().save(buffer, format="PNG")
  truncated.write_bytes(buffer.getvalue()[:60])
  blank = tmp_path / "blank.png"
  Image.new("L", (50, 50), 255).save(blank)
  cases = {str(text): "is not an image", str(empty): "is empty",
           str(tmp_path / "missing.png"): "does not exist",
           str(tmp_path): "is a folder", str(truncated): "cannot be read",
           str(blank): "has no digit"}
  for path, words in cases.items():
    with pytest.raises(images.ImageError) as info:
      images.load(path)
    message = str(info.value)
    assert message.startswith(path) and words in message, message
    assert "\n" not in message


def _write_digits(folder):
  good = []
  for i, (ink, paper, ext) in enumerate([(0, 255, "png"), (255, 0, "jpg")]):
    path = os.path.join(folder, f"good{i}.{ext}")
    _seven(ink=ink, paper=paper).save(path)
    good.append(path)
  bad = os.path.join(folder, "bad.txt")
  with open(bad, "w") as f:
    f.write("hello\n")
  return good, bad


def test_predict_files_keeps_going_after_a_bad_file(tiny_run, tmp_path):
  good, bad = _write_digits(str(tmp_path))
  run = run_lib.load_run(tiny_run)
  results = run_lib.predict_files(run, [good[0], bad, good[1]])
  assert [r.file for r in results] == [good[0], bad, good[1]]
  assert results[1].error is not None and results[1].digit is None
  for r in (results[0], results[2]):
    assert r.error is None and 0 <= r.digit <= 9
    assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-4)
    assert r.digit == int(np.argmax(r.probabilities))
  out, err = io.StringIO(), io.StringIO()
  failed = run_lib.print_predictions(tiny_run, [good[0], bad], as_json=True, plot=True,
                                     out=out, err=err)
  assert failed == 1
  lines = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [line["file"] for line in lines] == [good[0], bad]
  assert lines[0]["digit"] == results[0].digit and len(lines[0]["probabilities"]) == 10
  assert lines[1]["digit"] is None and "not an image" in lines[1]["error"]
  assert f"error: {bad} is not an image" in err.getvalue()
  assert os.path.exists(os.path.join(tiny_run, run_lib.PLOT_DIR, "good0.png"))


def test_a_dot_is_predicted_with_a_note_that_it_is_no_digit(tiny_run, tmp_path):
  dot = str(tmp_path / "dot.png")
  image = Image.new("L", (280, 280))  # A dot on the page's pad.
  ImageDraw.Draw(image).ellipse((130, 130, 150, 150), fill=255)
  image.save(dot)
  images.preprocess(_seven(), notes=(notes := []))
  assert notes == []
  out, err = io.StringIO(), io.StringIO()
  assert run_lib.print_predictions(tiny_run, [dot], as_json=True, out=out,
                                   err=err) == 0
  [line] = [json.loads(line) for line in out.getvalue().splitlines()]
  assert line["note"] == images.NO_DIGIT and line["digit"] is not None
  assert f"note: {dot}: {images.NO_DIGIT}" in err.getvalue().splitlines()


def test_ensemble_of_one_seed_is_refused_before_anything(tiny_run, tmp_path):
  good, _ = _write_digits(str(tmp_path))
  run = run_lib.load_run(tiny_run)
  assert run.seeds == (0,)
  before = sorted(os.walk(tiny_run))
  out, err = io.StringIO(), io.StringIO()
  with pytest.raises(UserError) as info:
    run_lib.print_predictions(tiny_run, good, plot=True, out=out, err=err, ensemble=True)
  message = str(info.value)
  assert message.startswith("--ensemble averages the seeds")
  assert "\n" not in message
  assert "predict without --ensemble" in message and "--num_seeds=N" in message
  assert out.getvalue() == err.getvalue() == ""
  assert sorted(os.walk(tiny_run)) == before


def test_report_and_predict_figures_draw_digits_alike(monkeypatch, tmp_path):
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, *_: figures.append(fig))
  image = images.preprocess(_seven())
  probs = np.full(10, 0.1)
  plots.prediction(image, probs, str(tmp_path / "p.png"), "seven.png", DIGITS)
  plots.image_grid(image[None], ["#0"], [], str(tmp_path / "g.png"), 8)
  plots.image_grid(image[None], ["#0"], [0], str(tmp_path / "m.png"), 6)
  plots.sample_probabilities([{"image": image, "probabilities": probs}],
                             str(tmp_path / "s.png"), DIGITS)
  assert len(figures) == 4
  for fig in figures:
    drawn = [im for ax in fig.axes for im in ax.images]
    assert drawn and {im.get_cmap().name for im in drawn} == {"gray"}
    plots.plt.close(fig)


def test_predict_plot_draws_the_input_as_the_model_sees_it(monkeypatch,
                                                           tmp_path):
  """README: the model sees white ink (255) on black (0); --plot draws the
  28x28 input so, unchanged, and the report's digit figures alike."""
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, *_: figures.append(fig))
  image = images.preprocess(_seven())
  assert image.max() == 255 and image[0, 0] == 0  # The model's polarity.
  plots.prediction(image, np.full(10, 0.1), str(tmp_path / "p.png"), "7.png",
                   DIGITS)
  plots.image_grid(image[None], ["#0"], [], str(tmp_path / "g.png"), 8)
  for fig in figures:
    [drawn] = [im for ax in fig.axes for im in ax.images]
    np.testing.assert_array_equal(drawn.get_array(), image)
    ink, paper = drawn.to_rgba(np.array([[255.0, 0.0]]), norm=True)[0, :, :3]
    np.testing.assert_allclose(ink, 1.0)  # White.
    np.testing.assert_allclose(paper, 0.0)  # Black.
    plots.plt.close(fig)


def test_predict_plot_captions_the_images_own_size(monkeypatch, tmp_path):
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, *_: figures.append(fig))
  for shape in ((28, 28), (16, 12)):
    plots.prediction(np.zeros(shape, np.uint8), np.full(3, 1 / 3),
                     str(tmp_path / "p.png"), "x.png", ["a", "b", "c"])
  assert [ax.get_title() for fig in figures for ax in fig.axes if ax.images
          ] == ["as the model saw it (28x28)", "as the model saw it (16x12)"]
  for fig in figures:
    plots.plt.close(fig)


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, check=False)


@pytest.mark.slow
def test_predict_mode_exit_status(tiny_run, tmp_path):
  good, _ = _write_digits(str(tmp_path))
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  missing = str(tmp_path / "missing.png")
  result = _launch("--mode=predict", f"--workdir={tiny_run}",
                   f"--image={good[0]},{empty},{missing},{good[1]}", "--json")
  assert result.returncode == 1, result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r["file"] for r in records] == [good[0], str(empty), missing, good[1]]
  assert [r["digit"] is None for r in records] == [False, True, True, False]
  errors = result.stderr.strip().splitlines()
  assert errors == [f"error: {empty} is empty (0 bytes); pass a PNG or JPEG file",
                    f"error: {missing} does not exist; check the path"]

  refused = _launch("--mode=predict", f"--workdir={tiny_run}",
                    f"--image={good[0]}", "--ensemble", "--plot")
  assert refused.returncode == 1 and refused.stdout == ""
  assert refused.stderr.startswith("error: --ensemble averages the seeds")
  assert len(refused.stderr.strip().splitlines()) == 1

  ok = _launch("--mode=predict", f"--workdir={tiny_run}", f"--image={good[0]}")
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.startswith(f"{good[0]}: ") and "probabilities 0:" in ok.stdout


def test_image_lists_take_folders_patterns_and_commas_in_names(tiny_run, tmp_path,
                                                               monkeypatch):
  """--image names files, folders of images (their image files, sorted) and
  patterns (`*.png`, which the shell leaves alone after `--image=`); a comma
  in a file's name survives the flag's comma split."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("b.png", "a.JPG", "c,d.png", "e, f.png"):
    _seven().convert("RGB").save(photos / name)
  (photos / "notes.txt").write_text("not an image\n")
  (photos / "sub").mkdir()
  empty = tmp_path / "empty"
  empty.mkdir()
  # How launch.py splits "c,d.png,e, f.png, b.png" (a space after a comma).
  split = [str(photos / "c"), "d.png", str(photos / "e"), " f.png",
           f" {photos / 'b.png'}"]
  listed = [str(photos), str(tmp_path / "*" / "*.png"), *split,
            str(tmp_path / "*.gif"), str(empty)]
  found = images.expand(listed)
  monkeypatch.setenv("HOME", str(photos))
  assert images.expand(["~/b.png", " ~/c", "d.png"]) == [
      str(photos / "b.png"), str(photos / "c,d.png")]
  named = ["c,d.png", "e, f.png", "b.png"]
  assert found == [str(photos / n) for n in ("a.JPG", "b.png", "c,d.png",
                                             "e, f.png")] + [
      str(photos / n) for n in ("b.png", "c,d.png", "e, f.png")] + [
          str(photos / n) for n in named] + [str(tmp_path / "*.gif"),
                                             str(empty)]
  results = run_lib.predict_files(run_lib.load_run(tiny_run), found)
  assert [r.error is None for r in results] == [True] * 10 + [False, False]
  assert results[10].error == (f"{tmp_path / '*.gif'} matches no file; check "
                               "the pattern")
  assert results[11].error.startswith(f"{empty} is a folder with no image file")
  # Through the flag: its value is split by expand alone, spaces kept.
  proc = _launch("--mode=predict", f"--workdir={tiny_run}",
                 f"--image={','.join(split)}")
  assert proc.returncode == 0, proc.stderr
  assert [line.split(": ")[0] for line in proc.stdout.splitlines()] == [
      str(photos / n) for n in named]


def test_plots_of_files_with_one_name_do_not_overwrite_each_other(tiny_run,
                                                                  tmp_path):
  paths = []
  for folder, ink in (("a", 0), ("b", 255)):
    os.makedirs(tmp_path / folder)
    paths.append(str(tmp_path / folder / "seven.png"))
    _seven(ink=ink, paper=255 - ink).save(paths[-1])
  paths.append(str(tmp_path / "a" / "seven.jpg"))
  _seven().save(paths[-1])
  out, err = io.StringIO(), io.StringIO()
  assert run_lib.print_predictions(tiny_run, paths, plot=True, out=out,
                                   err=err) == 0
  plotted = [line.split(": ", 1)[1] for line in out.getvalue().splitlines()
             if line.startswith("plot: ")]
  folder = os.path.join(tiny_run, run_lib.PLOT_DIR)
  assert plotted == [os.path.join(folder, n)
                     for n in ("seven.png", "seven-2.png", "seven-3.png")]
  assert all(os.path.exists(p) for p in plotted)

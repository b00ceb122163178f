"""images.preprocess on phone-photo-like pictures (experiments/photo_digits.py's
renderings of synthetic digits) and on pictures with no digit."""

import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageOps
import pytest

from experiments import photo_digits
from mnist_jax.data import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Polylines on a 28x28 grid, drawn 4x larger and shrunk (anti-aliased strokes
# about 3 px wide, as MNIST's).
SHAPES = {"7": [(7, 7), (20, 7), (11, 22)],
          "4": [(16, 22), (16, 6), (7, 17), (21, 17)],
          "1": [(12, 9), (15, 6), (15, 22)],
          "2": [(8, 10), (11, 6), (17, 6), (19, 10), (8, 22), (20, 22)]}


def _digit(name):
  """A synthetic MNIST-style digit: [28, 28] uint8, white on black."""
  image = Image.new("L", (112, 112), 0)
  draw = ImageDraw.Draw(image)
  if name == "0":
    draw.ellipse([36, 24, 80, 88], outline=255, width=11)
  else:
    draw.line([(4 * x, 4 * y) for x, y in SHAPES[name]], fill=255, width=11,
              joint="curve")
  return np.asarray(image.resize((28, 28), Image.Resampling.LANCZOS))


def _iou(a, b):
  a, b = a > 127, b > 127
  return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("k,name", list(enumerate("74120" * 2)))
def test_photo_gives_the_clean_scans_input(k, name):
  # The photo's pen edges are rendered thinner or thicker than the scan's by
  # up to a pixel of the 28x28 input, which alone keeps the IoU of 3-px strokes
  # near 0.65-0.9 (measured over 20 photos: IoU >= 0.63, correlation >= 0.79).
  # Taking the shading for ink, as the preprocess before lighting correction
  # did, gave IoU <= 0.33 and correlation <= 0.65 on the same photos.
  digit = _digit(name)
  clean = images.preprocess(photo_digits.clean_scan(digit))
  photo = photo_digits.render_photo(digit, np.random.default_rng([3, k]))
  got = images.preprocess(photo, notes=(notes := []))
  assert _iou(got, clean) >= 0.5 and not notes  # A digit, not a dot.
  assert np.corrcoef(got.ravel(), clean.ravel())[0, 1] >= 0.7


def test_light_ink_on_a_dark_photo():
  digit = _digit("4")
  clean = images.preprocess(photo_digits.mnist_style(digit))
  photo = ImageOps.invert(photo_digits.render_photo(digit,
                                                    np.random.default_rng(1)))
  assert _iou(images.preprocess(photo), clean) >= 0.5


def _gradient(w=400, h=300, shadow=False):
  """Paper lit by a gradient (and a soft shadow across a corner): no digit."""
  y, x = np.mgrid[0:h, 0:w] / max(w, h)
  light = 0.9 - 0.4 * x - 0.1 * y
  if shadow:
    light *= 1 - 0.4 / (1 + np.exp(-(x + y - 0.5) / 0.05))
  return Image.fromarray(np.uint8(255 * light))


@pytest.mark.parametrize("picture", [
    lambda: Image.new("RGB", (300, 200), (255, 255, 255)),
    lambda: Image.new("L", (50, 80), 128),
    _gradient,
    lambda: _gradient(shadow=True),
    lambda: photo_digits.render_photo(np.zeros((28, 28), np.uint8),
                                      np.random.default_rng(0)),
    lambda: photo_digits.render_photo(np.zeros((28, 28), np.uint8),
                                      np.random.default_rng(7)),
], ids=["white", "grey", "gradient", "shadow", "blank_photo", "blank_photo2"])
def test_no_digit_is_one_line(tmp_path, picture):
  path = str(tmp_path / "blank.png")
  picture().save(path)
  with pytest.raises(images.ImageError) as info:
    images.load(path)
  message = str(info.value)
  assert message.startswith(f"{path} has no digit on it") and "\n" not in message
  assert "pass a picture" in message


def test_the_test_digits_are_grey_28x28_arrays_the_renderers_take(idx_dir):
  """photo_digits.py reads MNIST's test set (as the data's [N, 28, 28, 1])
  and renders each digit [28, 28], as its montage command does."""
  digits, labels = photo_digits.test_digits(mnist_dir=idx_dir)
  assert digits.shape[1:] == (28, 28) and len(labels) == len(digits)
  photo = photo_digits.photo_jpeg(digits[0], np.random.default_rng([0, 0]))
  assert photo


@pytest.mark.slow
def test_the_photo_table_measures_a_run_now_and_before_photos(
    idx_dir, tiny_run, tmp_path):
  """photo_digits.py --table --train: each case (TABLE_CASES) now and with
  the preprocess before photos were handled, into a copy of
  docs/performance.md; --check then finds the table matching the runs."""
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  base = [sys.executable, photo_digits.__file__, "--table",
          f"--runs={tmp_path / 'r'}", f"--doc={doc}"]
  made = subprocess.run(base + ["--train", f"--run={tiny_run}",
                                f"--mnist_dir={idx_dir}"],
                        capture_output=True, text=True, check=False)
  assert made.returncode == 0, made.stderr[-3000:]
  marker = photo_digits.TABLE_MARKER
  table = doc.read_text().split(marker.format("table"))[1].split(
      marker.format("end"))[0]
  rows = [l for l in table.splitlines() if l.startswith(("| before", "| now"))]
  assert len(rows) == 2 and all(
      r.count("%") == len(photo_digits.TABLE_CASES) for r in rows), table
  check = subprocess.run(base + ["--check"], capture_output=True, text=True,
                         check=False)
  assert check.returncode == 0 and "matches" in check.stdout, check.stdout

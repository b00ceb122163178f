"""Predicting the digit in image files with a trained run.

Any PNG or JPEG (any size, colour or background) is turned into an MNIST-style
input first, the way the MNIST digits themselves were made: grayscale, light ink
on a dark background (inverted when the background is light), cropped to the
digit, scaled to fit a 20x20 box keeping its aspect ratio, and placed in a 28x28
field so that its centre of mass is at pixel (14, 14), where the MNIST training
digits have theirs on average.
"""

import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from mnist_jax import datasets
from mnist_jax import trained
from mnist_jax.errors import UserError

SIZE = 28
BOX = 20  # The digit's longer side after scaling, as in MNIST.
CENTRE = 14.0  # Mean centre of mass (row and column) of MNIST training digits.
NOISE = 0.2  # Ink below this fraction of the strongest ink is background.
MIN_CONTRAST = 0.08  # Less ink contrast than this is a blank image.
STROKE = 2.0  # Minimum stroke width in the 20x20 box (MNIST pens are 2-3 px).
MAX_SIDE = 1024  # Bigger images are shrunk first (a digit needs no more).
WORK_SIDE = 4 * BOX  # Crops above this are max-pooled down: thin strokes survive.
PLOT_DIR = "predict"


class ImageError(UserError):
  """One input file cannot be used; the others are still predicted."""


@dataclasses.dataclass
class Prediction:
  file: str
  digit: Optional[int] = None
  probabilities: Optional[List[float]] = None
  image: Optional[np.ndarray] = None  # [28, 28] uint8, as the model saw it.
  error: Optional[str] = None

  def to_json(self) -> str:
    record = {"file": self.file, "digit": self.digit,
              "probabilities": self.probabilities}
    if self.error is not None:
      record["error"] = self.error
    return json.dumps(record)


def open_image(path: str) -> Image.Image:
  """Opens an image file, with a one-line ImageError naming it when it cannot."""
  hint = "pass a PNG or JPEG file"
  if not os.path.exists(path):
    raise ImageError(f"{path} does not exist; check the path")
  if os.path.isdir(path):
    raise ImageError(f"{path} is a folder, not an image; {hint}")
  if os.path.getsize(path) == 0:
    raise ImageError(f"{path} is empty (0 bytes); {hint}")
  try:
    image = Image.open(path)
    image.load()
  except UnidentifiedImageError:
    raise ImageError(f"{path} is not an image (unknown format); {hint}") from None
  except Image.DecompressionBombError:
    raise ImageError(f"{path} is too large to be a digit image; pass a smaller "
                     "one") from None
  except (OSError, SyntaxError, ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ImageError(f"{path} cannot be read ({reason}); {hint}") from None
  return image


def _gray(image: Image.Image) -> np.ndarray:
  """Luminance in [0, 1] (1 = white), transparent areas filled as background."""
  image = ImageOps.exif_transpose(image)
  if max(image.size) > MAX_SIDE:
    image = image.copy()
    image.thumbnail((MAX_SIDE, MAX_SIDE))
  if image.mode in ("I", "F") or image.mode.startswith("I;"):
    a = np.asarray(image, np.float64)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)
  has_alpha = image.mode in ("RGBA", "LA", "PA") or (
      image.mode == "P" and "transparency" in image.info)
  if not has_alpha:
    return np.asarray(image.convert("L"), np.float64) / 255.0
  rgba = image.convert("RGBA")
  alpha = np.asarray(rgba.getchannel("A"), np.float64) / 255.0
  gray = np.asarray(rgba.convert("L"), np.float64) / 255.0
  opaque = alpha > 0.5
  # Fill transparency with the colour opposite the drawn (opaque) pixels.
  background = 1.0 if not opaque.any() or np.median(gray[opaque]) < 0.5 else 0.0
  return alpha * gray + (1.0 - alpha) * background


def _dilate(a: np.ndarray, radius: int) -> np.ndarray:
  """Grey-level dilation by a (2 radius + 1)^2 square, as repeated 3x3 maxima."""
  for _ in range(radius):
    p = np.pad(a, 1)
    a = np.max([p[i:i + a.shape[0], j:j + a.shape[1]]
                for i in range(3) for j in range(3)], axis=0)
  return a


def _max_pool(a: np.ndarray, k: int) -> np.ndarray:
  """k x k block maxima (zero-padded at the far edges): shrinks, keeps thin lines."""
  h, w = -(-a.shape[0] // k) * k, -(-a.shape[1] // k) * k
  a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])))
  return a.reshape(h // k, k, w // k, k).max(axis=(1, 3))


def _stroke_width(ink: np.ndarray) -> float:
  """Mean stroke width in pixels: 2 area / boundary length of the ink mask."""
  mask = ink > 0.5
  area = mask.sum()
  if area == 0:
    return 0.0
  p = np.pad(mask, 1)
  inner = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
  return 2.0 * area / max(area - inner.sum(), 1)


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
  image = Image.fromarray(a.astype(np.float32))
  smaller = height <= a.shape[0] and width <= a.shape[1]
  method = Image.Resampling.LANCZOS if smaller else Image.Resampling.BILINEAR
  return np.clip(np.asarray(image.resize((width, height), method)), 0.0, 1.0)


def preprocess(image: Image.Image, name: str = "image") -> np.ndarray:
  """An image of one digit as an MNIST-style input.

  Args:
    image: a PIL image of any size and mode.
    name: how errors refer to it (the file name).

  Returns:
    [28, 28] uint8: white ink on black, the digit inside a 20x20 box, its
    centre of mass at pixel (14, 14).

  Raises:
    ImageError: the image holds no digit (it is one flat colour).
  """
  gray = _gray(image)
  h, w = gray.shape
  ring = max(1, round(0.02 * min(h, w)))
  border = np.concatenate([gray[:ring].ravel(), gray[-ring:].ravel(),
                           gray[:, :ring].ravel(), gray[:, -ring:].ravel()])
  background = float(np.median(border))
  ink = 1.0 - gray if background > 0.5 else gray
  background = min(background, 1.0 - background)
  contrast = ink.max() - background
  if contrast < MIN_CONTRAST:
    raise ImageError(f"{name} has no digit on it (the image is one flat "
                     "colour); pass a picture of a digit")
  ink = np.clip((ink - background) / contrast, 0.0, 1.0)
  ink = np.clip((ink - NOISE) / (1.0 - NOISE), 0.0, 1.0)
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  if max(ink.shape) > 2 * WORK_SIDE:
    ink = _max_pool(ink, max(ink.shape) // WORK_SIDE)

  scale = BOX / max(ink.shape)
  thin = STROKE / scale - _stroke_width(ink)
  if thin > 1:  # Thin pen on a big canvas: thicken it before shrinking.
    ink = _dilate(ink, int(np.ceil(thin / 2)))
    scale = BOX / max(ink.shape)
  height = max(1, round(ink.shape[0] * scale))
  width = max(1, round(ink.shape[1] * scale))
  digit = _resize(ink, height, width)
  if digit.max() > 0:
    digit = digit / digit.max()

  total = digit.sum()
  cy = (digit.sum(axis=1) * np.arange(height)).sum() / total
  cx = (digit.sum(axis=0) * np.arange(width)).sum() / total
  top = int(np.clip(round(CENTRE - cy), 0, SIZE - height))
  left = int(np.clip(round(CENTRE - cx), 0, SIZE - width))
  out = np.zeros((SIZE, SIZE))
  out[top:top + height, left:left + width] = digit
  return np.round(255.0 * out).astype(np.uint8)


def load(path: str) -> np.ndarray:
  """Opens and preprocesses one file: [28, 28] uint8, or ImageError."""
  with open_image(path) as image:
    return preprocess(image, path)


def predict_files(run: trained.Run, paths: Sequence[str],
                  ensemble: bool = False) -> List[Prediction]:
  """Predicts each file with a loaded run (trained.load_run); failures kept in order.

  ensemble: average the probabilities of the chosen grid point's seeds.
  """
  results = []
  for path in paths:
    try:
      results.append(Prediction(path, image=load(path)))
    except ImageError as e:
      results.append(Prediction(path, error=str(e)))
  good = [r for r in results if r.error is None]
  if good:
    images = np.stack([r.image for r in good])
    probs = run.probabilities(images, ensemble, batch_size=len(good))
    for r, p in zip(good, probs):
      r.digit = int(np.argmax(p))
      r.probabilities = [round(float(v), 6) for v in p]
  return results


def main(workdir: str, paths: Sequence[str], as_json: bool = False,
         plot: bool = False, out=None, err=None, ensemble: bool = False,
         **overrides) -> int:
  """The `--mode=predict` command: prints one line per file.

  ensemble: predict with the mean probabilities of the chosen grid point's
    seeds (`--ensemble`), not the chosen member alone.
  overrides: Config fields to change when loading the run (e.g. impl).

  Returns:
    the number of files that failed (launch.py exits 1 when it is not 0).
  """
  out = out or sys.stdout
  err = err or sys.stderr
  if not paths:
    raise UserError("--mode=predict needs --image=FILE[,FILE...]")
  run = trained.load_run(workdir, **overrides)
  note = trained.checkpoint_note(workdir, run)
  if note:  # A run still training, unfinished, or an older checkpoint.
    print(f"note: {note}", file=err)
  names = datasets.class_names(run.config.dataset)
  results = predict_files(run, paths, ensemble)
  for r in results:
    if r.error is not None:
      print(f"error: {r.error}", file=err)
      if as_json:
        print(r.to_json(), file=out)
      continue
    if as_json:
      print(r.to_json(), file=out)
    else:
      probs = " ".join(f"{names[i]}:{p:.3f}" for i, p in enumerate(r.probabilities))
      print(f"{r.file}: {names[r.digit]} ({100 * r.probabilities[r.digit]:.1f}%)"
            f"  probabilities {probs}", file=out)
    if plot:
      # matplotlib only for --plot: launch.py imports this module for every
      # command, and a training run starts without matplotlib.
      from mnist_jax import plots  # pylint: disable=g-import-not-at-top
      folder = os.path.join(workdir, PLOT_DIR)
      os.makedirs(folder, exist_ok=True)
      stem = os.path.splitext(os.path.basename(r.file))[0]
      saved = plots.prediction(r.image, np.asarray(r.probabilities),
                               os.path.join(folder, f"{stem}.png"), r.file, names)
      print(f"plot: {saved}", file=err if as_json else out)
  return sum(r.error is not None for r in results)

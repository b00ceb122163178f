"""Predicting the digit in image files with a trained run.

Any PNG or JPEG (any size, colour or background) is turned into an MNIST-style
input first, the way the MNIST digits themselves were made: grayscale, light ink
on a dark background (inverted when the background is light), cropped to the
digit, scaled to fit a 20x20 box keeping its aspect ratio, and placed in a 28x28
field so that its centre of mass is at pixel (14, 14), where the MNIST training
digits have theirs on average. A photo's uneven lighting and paper colour are
divided out first, and marks apart from the digit dropped.
"""

import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

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
FLAT = 0.04  # A border whose brightness spreads less than this is flat.
LIGHT = 0.42  # Light background unless pixels sit this near the dark end.
GRID = 48  # Lighting is estimated on a grid this many cells across.
WINDOW = 0.25  # Paper is estimated over windows this fraction of the image.
MASK_SIDE = 160  # The digit is looked for at most this many pixels across.
MIN_INK = 0.4  # In a photo, pen strokes are this much darker than the paper.
NEAR = 0.3  # Pieces this close (fraction of the digit's size) are kept,
STRONG = 0.5  # if their ink is at least this fraction of the digit's darkest.
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


def _border(a: np.ndarray) -> np.ndarray:
  """The pixels of a ring 2% of the image wide along its edges."""
  ring = max(1, round(0.02 * min(a.shape)))
  return np.concatenate([a[:ring].ravel(), a[-ring:].ravel(),
                         a[:, :ring].ravel(), a[:, -ring:].ravel()])


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
  """k x k block means (edge blocks padded by repetition): a smaller image."""
  h, w = -(-a.shape[0] // k) * k, -(-a.shape[1] // k) * k
  a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])), mode="edge")
  return a.reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _shifts(a: np.ndarray, radius: int, extrapolate: bool = False) -> np.ndarray:
  """[(2 radius + 1)^2, H, W]: a shifted by every offset up to radius, for
  filters over a square window; padded by repeating the edges, or by
  continuing them linearly (odd reflection)."""
  if extrapolate:
    p = np.pad(a, radius, mode="reflect", reflect_type="odd")
  else:
    p = np.pad(a, radius, mode="edge")
  n = 2 * radius + 1
  return np.stack([p[i:i + a.shape[0], j:j + a.shape[1]]
                   for i in range(n) for j in range(n)])


def _closing(a: np.ndarray, radius: int) -> np.ndarray:
  """Grey closing (maxima, then minima, over a square window): removes dark
  features narrower than the window and keeps ramps and straight edges.
  The image is continued linearly past its edges, so that a shadow edge
  leaving the frame stays straight there."""
  closed = _shifts(a, radius, extrapolate=True).max(axis=0)
  return _shifts(closed, radius, extrapolate=True).min(axis=0)


def _light_background(grid: np.ndarray, radius: int) -> bool:
  """Whether the background is lighter than the ink.

  Where the window holds both ink and background, a pixel lies between the
  window's darkest and lightest values; the background covers more of such
  windows than the strokes do (also inside loops), so pixels sit mostly near
  the background's end. Weighted by the window's contrast, so that lighting
  alone (a ramp: halfway) barely counts; without clear evidence, light paper.
  """
  windows = _shifts(grid, radius)
  lo, hi = windows.min(axis=0), windows.max(axis=0)
  weight = (hi - lo) ** 2
  position = (grid - lo) / np.maximum(hi - lo, 1e-6)
  return float((weight * position).sum()) >= LIGHT * float(weight.sum())


def _paper(gray: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
  """The image with its background light, and the paper's brightness there.

  A flat border means a flat background (a scan, a drawing): the border's
  median, and the image is inverted if it is dark. Otherwise the lighting is
  estimated on a coarse grid by a closing over windows a quarter of the image
  wide: wider than a stroke, so strokes are removed, while gradients and
  shadow edges are kept.

  Returns:
    light [H, W] and paper [H, W], both in [0, 1], and whether the
    background is flat.
  """
  border = _border(gray)
  if np.percentile(border, 95) - np.percentile(border, 5) < FLAT:
    background = float(np.median(border))
    light = gray if background > 0.5 else 1.0 - gray
    return light, np.full(gray.shape, max(background, 1.0 - background)), True
  k = max(1, round(min(gray.shape) / GRID))
  grid = _block_mean(gray, k)
  radius = max(1, round(WINDOW * min(grid.shape) / 2))
  if not _light_background(grid, radius):
    grid, gray = 1.0 - grid, 1.0 - gray
  paper = _shifts(_closing(grid, radius), 1).mean(axis=0)
  image = Image.fromarray(paper.astype(np.float32))
  size = (grid.shape[1] * k, grid.shape[0] * k)
  paper = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
  return gray, paper[:gray.shape[0], :gray.shape[1]], False


def _components(mask: np.ndarray) -> np.ndarray:
  """Labels [H, W] of the 8-connected components of mask (-1 outside them)."""
  n = mask.size
  label = np.where(mask.ravel(), np.arange(n), n)
  h, w = mask.shape
  while True:
    grid = label.reshape(h, w)
    smallest = _shifts(grid, 1).min(axis=0).ravel()
    new = np.where(mask.ravel(), smallest, n)
    inside = new < n
    while True:  # Pointer jumping: each label to its label's label.
      jumped = new.copy()
      jumped[inside] = new[new[inside]]
      if np.array_equal(jumped, new):
        break
      new = jumped
    if np.array_equal(new, label):
      break
    label = new
  return np.where(mask, label.reshape(h, w), -1)


def _digit_mask(ink: np.ndarray) -> np.ndarray:
  """The digit's pixels [H, W] bool in a photo's ink [H, W] (0 = paper).

  The heaviest connected ink and the dark pieces near it; stray marks, ruled
  lines and what is left of shadows elsewhere are dropped. None if no ink is
  as dark as a pen's (the picture is blank).
  """
  k = max(1, round(max(ink.shape) / MASK_SIDE))
  coarse = _block_mean(ink, k)
  if coarse.max() < MIN_INK:
    return np.zeros(ink.shape, bool)
  labels = _components(coarse > NOISE * coarse.max())
  ids, inverse = np.unique(labels.ravel(), return_inverse=True)
  mass = np.bincount(inverse, weights=coarse.ravel())
  mass[ids < 0] = 0
  heaviest = int(np.argmax(mass))
  main = labels == ids[heaviest]
  rows, cols = np.flatnonzero(main.any(axis=1)), np.flatnonzero(main.any(axis=0))
  reach = max(1, round(NEAR * max(rows[-1] - rows[0], cols[-1] - cols[0], 1)))
  near = np.zeros(main.shape, bool)
  near[max(rows[0] - reach, 0):rows[-1] + reach + 1,
       max(cols[0] - reach, 0):cols[-1] + reach + 1] = True
  peak = np.zeros(len(ids))
  np.maximum.at(peak, inverse, coarse.ravel())
  pieces = ids[(peak >= STRONG * peak[heaviest]) & (ids >= 0)]
  keep = np.isin(labels, np.intersect1d(pieces, labels[near]))
  keep = _shifts(keep, 1).max(axis=0)
  keep = np.repeat(np.repeat(keep, k, axis=0), k, axis=1)
  return keep[:ink.shape[0], :ink.shape[1]]


def preprocess(image: Image.Image, name: str = "image") -> np.ndarray:
  """An image of one digit as an MNIST-style input.

  The paper's brightness is estimated and divided out first, so that uneven
  light, shadows and tinted paper are not taken for ink. On a background that
  is not flat (a photo), the digit is then the heaviest connected ink and the
  dark pieces near it; other marks are dropped.

  Args:
    image: a PIL image of any size and mode.
    name: how errors refer to it (the file name).

  Returns:
    [28, 28] uint8: white ink on black, the digit inside a 20x20 box, its
    centre of mass at pixel (14, 14).

  Raises:
    ImageError: no digit stands out from the background.
  """
  light, paper, flat = _paper(_gray(image))
  ink = np.clip(1.0 - light / np.maximum(paper, 1e-3), 0.0, 1.0)
  if not flat:
    ink = ink * _digit_mask(ink)
  contrast = ink.max()
  if contrast < MIN_CONTRAST:
    raise ImageError(f"{name} has no digit on it (no strokes stand out from the "
                     "background); pass a picture of one digit")
  ink = ink / contrast
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

  Raises:
    UserError: ensemble with one seed at the chosen grid point (nothing to
      average).
  """
  if ensemble and len(run.seeds) < 2:
    raise UserError(
        "--ensemble averages the seeds of the run's chosen grid point, and "
        "this run has one seed there; predict without --ensemble, or train "
        "with --num_seeds=N")
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

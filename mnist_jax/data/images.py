"""A picture of one digit as an MNIST-style input: what `--mode=predict` sees (a
dataset of colour images: the picture in its colours, resized).

As the MNIST digits were made: light ink on dark, cropped, scaled into a 20x20
box, centre of mass at (14, 14) of 28x28; a photo's lighting and paper colour
are divided out first, and marks apart from the digit dropped."""

import glob
import os
import warnings
from typing import List, Literal, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError
from scipy import ndimage

from mnist_jax.errors import UserError, first_line

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
# Crops above this are max-pooled down: thin strokes survive.
WORK_SIDE = 4 * BOX
# A mark at most this many stroke widths long is no digit: a dot or a blob
# (a filled disc is 1.7; MNIST's test digits are 2.5 and over).
MIN_LENGTH = 2.0
NO_DIGIT = ("no digit here: the mark is about as long as it is wide (a dot "
            "or a blob), and is read blown up to a digit's size")


class ImageError(UserError):
  """One input file cannot be used; the others are still predicted."""


def _image_files(folder: str) -> List[str]:
  """`folder`'s files that Pillow opens by extension, sorted, not hidden."""
  known = {e for e, f in Image.registered_extensions().items()
           if f in Image.OPEN}
  paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
           if os.path.splitext(n)[1].lower() in known and n[0] != "."]
  return [p for p in paths if os.path.isfile(p)]


def expand(entries: Sequence[str]) -> List[str]:
  """The files an --image list names, in order: a folder's image files and a
  pattern's (`photos/*.jpg`) sorted; a file name a comma split joined again,
  `a.png, b.png`'s spaces dropped, `~` expanded; what names no file kept, to
  fail by its name."""
  def existing(text):
    return next((p for p in map(os.path.expanduser, (text, text.strip()))
                 if os.path.exists(p)), None)

  paths, i = [], 0
  while i < len(entries):
    j = next((j for j in range(i + 1, len(entries) + 1)
              if existing(",".join(entries[i:j]))), i + 1)
    text, i = ",".join(entries[i:j]), j
    path = existing(text) or os.path.expanduser(text.strip())
    if os.path.isdir(path):
      paths.extend(_image_files(path) or [path])
    elif not os.path.exists(path) and glob.escape(path) != path:
      paths.extend(sorted(p for p in glob.glob(path) if os.path.isfile(p))
                   or [path])
    else:
      paths.append(path)
  return paths


def _within(image: Image.Image, name, max_pixels: int) -> None:
  """Before `image` is decoded: a JPEG over `max_pixels` set to decode at a
  reduced scale (as thumbnail would draft it), any image still over them
  refused in one line (ImageError) with its size."""
  if image.width * image.height > max_pixels:  # Its longer side to 2 x
    k = 2 * MAX_SIDE / max(image.size)  # MAX_SIDE or more, in its aspect.
    image.draft(None, (max(1, int(image.width * k)),
                       max(1, int(image.height * k))))
  if image.width * image.height > max_pixels:
    raise ImageError(
        f"{name} is {image.width}x{image.height} pixels, over the "
        f"{max_pixels / 1e6:.0f} million read here; scale it down (a digit "
        f"needs no more than {MAX_SIDE} across)")


def open_image(path, name=None, max_pixels=None) -> Image.Image:
  """Opens an image file (a path, or a file object called `name`), or a
  one-line ImageError naming it if it cannot. With `max_pixels`, a bigger
  image is refused, or a JPEG decoded at a reduced scale, before a full-size
  decode (memory is bounded by the decoded size)."""
  hint, name = "pass a PNG or JPEG file", name or path
  if name is path and os.path.isdir(path):
    raise ImageError(f"{path} is a folder, not an image; {hint}"
                     if _image_files(path) else
                     f"{path} is a folder with no image file in it; {hint}s")
  if name is path and not os.path.exists(path):
    if glob.escape(path) != path:
      raise ImageError(f"{path} matches no file; check the pattern")
    raise ImageError(f"{path} does not exist; check the path")
  if name is path and os.path.getsize(path) == 0:
    raise ImageError(f"{path} is empty (0 bytes); {hint}")
  try:
    with warnings.catch_warnings():  # A big scan is shrunk (MAX_SIDE).
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)
      if max_pixels:
        _within(image, name, max_pixels)
      image.load()
  except UnidentifiedImageError:
    raise ImageError(f"{name} is not an image (unknown format); "
                     f"{hint}") from None
  except Image.DecompressionBombError:
    raise ImageError(f"{name} is too large to be a digit image; pass a smaller "
                     "one") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"{name} cannot be read ({first_line(e)}); {hint}"
                     ) from None
  return image


def _gray(image: Image.Image) -> np.ndarray:
  """Luminance in [0, 1] (1 = white), transparent areas filled as background."""
  image = ImageOps.exif_transpose(image)  # A copy: shrunk in place.
  if max(image.size) > MAX_SIDE:
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


def _stroke_width(ink: np.ndarray) -> float:
  """Mean stroke width in pixels: 2 area / boundary length of the ink mask."""
  mask = ink > 0.5
  area = mask.sum()
  if area == 0:
    return 0.0
  inner = ndimage.binary_erosion(mask)  # Ink with ink on all four sides.
  return 2.0 * area / max(area - inner.sum(), 1)


def _blocks(a: np.ndarray, k: int,
            mode: Literal["edge", "constant"] = "edge") -> np.ndarray:
  """a's k x k blocks [H/k, k, W/k, k], its far edges padded (np.pad mode)."""
  h, w = -(-a.shape[0] // k) * k, -(-a.shape[1] // k) * k
  a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])), mode=mode)
  return a.reshape(h // k, k, w // k, k)


def _window(filter_, a: np.ndarray, radius: int) -> np.ndarray:
  """An ndimage max or min `filter_` over square windows of `radius`, past
  the edges continuing them linearly (a ramp of light stays a ramp)."""
  p = np.pad(a, radius, mode="reflect", reflect_type="odd")
  return filter_(p, 2 * radius + 1)[radius:-radius, radius:-radius]


def _light_background(grid: np.ndarray, radius: int) -> bool:
  """Whether the background is lighter than the ink: in windows with both,
  most pixels sit near its end of the range, weighted by contrast."""
  lo = ndimage.minimum_filter(grid, 2 * radius + 1, mode="nearest")
  hi = ndimage.maximum_filter(grid, 2 * radius + 1, mode="nearest")
  weight = (hi - lo) ** 2
  position = (grid - lo) / np.maximum(hi - lo, 1e-6)
  return float((weight * position).sum()) >= LIGHT * float(weight.sum())


def _paper(gray: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
  """(The image with its background light [H, W], the paper's brightness
  [H, W] (a closing wider than a stroke), whether the border is flat)."""
  ring = max(1, round(0.02 * min(gray.shape)))  # 2% of the image wide.
  border = np.concatenate([gray[:ring].ravel(), gray[-ring:].ravel(),
                           gray[:, :ring].ravel(), gray[:, -ring:].ravel()])
  if np.percentile(border, 95) - np.percentile(border, 5) < FLAT:
    background = float(np.median(border))
    light = gray if background > 0.5 else 1.0 - gray
    return light, np.full(gray.shape, max(background, 1.0 - background)), True
  k = max(1, round(min(gray.shape) / GRID))
  grid = _blocks(gray, k).mean(axis=(1, 3))
  radius = max(1, round(WINDOW * min(grid.shape) / 2))
  if not _light_background(grid, radius):
    grid, gray = 1.0 - grid, 1.0 - gray
  # A grey closing: removes dark strokes, keeps ramps and (past the frame
  # too) shadow edges.
  closed = _window(ndimage.minimum_filter,
                   _window(ndimage.maximum_filter, grid, radius), radius)
  paper = ndimage.uniform_filter(closed, 3, mode="nearest")
  image = Image.fromarray(paper.astype(np.float32))
  size = (grid.shape[1] * k, grid.shape[0] * k)
  paper = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
  return gray, paper[:gray.shape[0], :gray.shape[1]], False


def _digit_mask(ink: np.ndarray) -> np.ndarray:
  """The digit's pixels [H, W] bool in a photo's ink (0 = paper): the
  heaviest connected ink and the dark pieces near it; none if it is blank."""
  k = max(1, round(max(ink.shape) / MASK_SIDE))
  coarse = _blocks(ink, k).mean(axis=(1, 3))
  if coarse.max() < MIN_INK:
    return np.zeros(ink.shape, bool)
  # 8-connected pieces of ink, numbered from 1 (0: paper).
  labels, count = ndimage.label(coarse > NOISE * coarse.max(), np.ones((3, 3)))
  pieces = np.arange(1, count + 1)
  peak = ndimage.maximum(coarse, labels, pieces)
  heaviest = np.argmax(ndimage.sum_labels(coarse, labels, pieces))
  rows, cols = ndimage.find_objects(labels)[heaviest]
  reach = max(1, round(NEAR * max(rows.stop - rows.start - 1,
                                  cols.stop - cols.start - 1, 1)))
  near = np.zeros(labels.shape, bool)
  near[max(rows.start - reach, 0):rows.stop + reach,
       max(cols.start - reach, 0):cols.stop + reach] = True
  strong = pieces[peak >= STRONG * peak[heaviest]]
  keep = np.isin(labels, np.intersect1d(strong, labels[near]))
  keep = ndimage.binary_dilation(keep, np.ones((3, 3)))
  keep = np.repeat(np.repeat(keep, k, axis=0), k, axis=1)
  return keep[:ink.shape[0], :ink.shape[1]]


def preprocess(image: Image.Image, name: str = "image",
               notes=None) -> np.ndarray:
  """A PIL image of one digit as [28, 28] uint8 (white ink on black), or an
  ImageError naming it `name` when no digit stands out; NO_DIGIT is added to
  the list `notes` for a mark too short to be one."""
  light, paper, flat = _paper(_gray(image))
  ink = np.clip(1.0 - light / np.maximum(paper, 1e-3), 0.0, 1.0)
  if not flat:
    ink = ink * _digit_mask(ink)
  contrast = ink.max()
  if contrast < MIN_CONTRAST:
    raise ImageError(f"{name} has no digit on it (no strokes stand out from "
                     "the background); pass a picture of one digit")
  ink = ink / contrast
  ink = np.clip((ink - NOISE) / (1.0 - NOISE), 0.0, 1.0)
  ink = ink[ndimage.find_objects((ink > 0).astype(int))[0]]  # Its box.
  if max(ink.shape) > 2 * WORK_SIDE:
    ink = _blocks(ink, max(ink.shape) // WORK_SIDE, "constant").max(axis=(1, 3))

  scale, width = BOX / max(ink.shape), _stroke_width(ink)
  if notes is not None and max(ink.shape) <= MIN_LENGTH * width:
    notes.append(NO_DIGIT)
  thin = STROKE / scale - width
  if thin > 1:  # Thin pen on a big canvas: thicken it before shrinking.
    for _ in range(int(np.ceil(thin / 2))):  # Dilation (ink >= 0).
      ink = ndimage.maximum_filter(ink, 3, mode="nearest")
    scale = BOX / max(ink.shape)
  height = max(1, round(ink.shape[0] * scale))
  width = max(1, round(ink.shape[1] * scale))
  smaller = height <= ink.shape[0] and width <= ink.shape[1]
  method = Image.Resampling.LANCZOS if smaller else Image.Resampling.BILINEAR
  digit = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(
      (width, height), method))
  digit = np.clip(digit, 0.0, 1.0)
  if digit.max() > 0:
    digit = digit / digit.max()

  cy, cx = ndimage.center_of_mass(digit)
  top = int(np.clip(round(CENTRE - cy), 0, SIZE - height))
  left = int(np.clip(round(CENTRE - cx), 0, SIZE - width))
  out = np.zeros((SIZE, SIZE))
  out[top:top + height, left:left + width] = digit
  return np.round(255.0 * out).astype(np.uint8)


# Pillow's mode of a picture of C channels, C > 1.
COLOURS = {3: "RGB", 4: "RGBA"}


def load(path, shape=(SIZE, SIZE, 1), name=None, max_pixels=None,
         notes=None) -> np.ndarray:
  """Opens one file (as open_image) as an input [H, W, C] uint8 of a dataset's
  `shape` (H, W, C): one channel, a digit preprocessed as MNIST's were made
  (`preprocess`, resized from 28 x 28); three or four, the picture in its
  colours (RGB, RGBA), resized whole. ImageError, `notes` as preprocess's."""
  (h, w), c = shape[:2], (shape[2] if len(shape) > 2 else 1)
  if c != 1 and c not in COLOURS:
    raise UserError(f"a picture has 1, 3 or 4 channels, and these images "
                    f"have {c}; pass arrays [N, {h}, {w}, {c}] to the Python "
                    "API's Run.predict instead")
  with open_image(path, name, max_pixels) as image:
    if c != 1:
      return np.asarray(image.convert(COLOURS[c]).resize(
          (w, h), Image.Resampling.LANCZOS), np.uint8).reshape(h, w, c)
    x = preprocess(image, name or path, notes)
  if x.shape != (h, w):
    x = np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling.LANCZOS))
  return x[..., None]

r"""Phone-photo-like pictures of MNIST test digits, and how predict copes with them.

Each test digit is drawn in dark ink on tinted (sometimes ruled) paper, a third
to a half of a 300-1200 px frame, under a lighting gradient and a soft shadow,
with sensor noise, blur and JPEG compression, and kept clean too (a scan, and
MNIST's image). Prints a run's accuracy on each kind (images.py's preprocess):

  python experiments/photo_digits.py --run=RUN --mnist_dir=DIR --num=12 \
      --montage=docs/img/photo_digits.png
"""

import io
import os
import sys

import numpy as np
from PIL import Image
from PIL import ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib.pyplot as plt
from mnist_jax.data import idx
from mnist_jax.data import images as images_lib
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.results import plots
from mnist_jax.results import run as run_lib

from experiments.tables import parser, script

# RGB of the paper in full light, and of the ink.
PAPERS = {"white": (238, 238, 232), "cream": (240, 228, 196),
          "grey": (196, 196, 190), "bluish": (210, 222, 238),
          "yellow": (246, 234, 160)}
INKS = {"black": (28, 28, 34), "blue": (28, 40, 128),
        "dark red": (122, 22, 28), "dark green": (22, 84, 44)}
LINE_RGB = (120, 160, 215)  # Ruled lines: light blue.


def photo_jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
  """A phone photo (JPEG bytes) of `digit` ([28, 28] uint8) on paper."""
  # The frame: the longer side 300-1200 px, 4:3, 16:9 or square.
  long_side = int(rng.integers(300, 1201))
  short_side = int(round(long_side / float(rng.choice([4 / 3, 16 / 9, 1.0]))))
  w, h = ((long_side, short_side) if rng.random() < 0.3 else
          (short_side, long_side))
  # A digit's 20x20 box (of its 28x28) spans 1/3-1/2 of the shorter side.
  size = min(int(round(rng.uniform(1 / 3, 1 / 2) * min(w, h) * 28 / 20)), w, h)
  coverage = np.zeros((h, w))
  top, left = (int(rng.integers(0, n - size + 1)) for n in (h, w))
  # Ink coverage in [0, 1]: the digit upscaled, its edges sharp as a pen's.
  ink = Image.fromarray(digit.astype(np.float32) / 255.0).resize(
      (size, size), Image.Resampling.BICUBIC)
  coverage[top:top + size, left:left + size] = np.clip(
      (np.asarray(ink) - 0.3) / 0.35, 0.0, 1.0)
  coverage *= rng.uniform(0.85, 1.0)
  pick = lambda d: np.array(list(d.values())[rng.integers(len(d))], np.float64)
  paper_rgb = np.clip(pick(PAPERS) + rng.normal(0, 6, 3), 0, 255)
  paper = np.broadcast_to(paper_rgb, (h, w, 3)).copy()
  if rng.random() < 0.3:  # Faint ruled lines.
    spacing, width = rng.uniform(0.06, 0.1) * h, max(1, int(round(0.004 * h)))
    strength = rng.uniform(0.25, 0.5)
    for top in np.arange(rng.uniform(0, spacing), h, spacing).astype(int):
      rows = slice(top, top + width)
      paper[rows] = (1 - strength) * paper[rows] + strength * np.array(LINE_RGB)
  ink_rgb = pick(INKS)
  pixels = paper * (1 - coverage[..., None]) + ink_rgb * coverage[..., None]
  # The light: a gradient, times a soft-edged shadow (a hand's, the phone's).
  y, x = np.mgrid[0:h, 0:w].astype(np.float64) / max(h, w)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * x + np.sin(angle) * y
  ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9)
  light = 1.0 - rng.uniform(0.15, 0.5) * ramp
  angle = rng.uniform(0, 2 * np.pi)
  edge = np.cos(angle) * (x - rng.uniform(0.1, 0.9) * w / max(h, w)) + (
      np.sin(angle) * (y - rng.uniform(0.1, 0.9) * h / max(h, w)))
  shadow = 1.0 / (1.0 + np.exp(-edge / rng.uniform(0.03, 0.1)))
  pixels *= (light * (1.0 - rng.uniform(0.25, 0.55) * shadow))[..., None]
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
  pixels = np.asarray(image, np.float64)
  sigma = rng.uniform(2.0, 7.0)
  grain = rng.normal(0, sigma, (h, w, 1))  # Luminance noise, then colour noise.
  pixels = pixels + grain + rng.normal(0, sigma / 2, (h, w, 3))
  image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=int(rng.integers(60, 86)))
  return buffer.getvalue()


def render_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """photo_jpeg's picture, decoded: an RGB image."""
  return Image.open(io.BytesIO(photo_jpeg(digit, rng))).convert("RGB")


def clean_scan(digit: np.ndarray) -> Image.Image:
  """The digit as a clean scan: black ink on white at 112x112 px (grayscale)."""
  field = Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC)
  return Image.fromarray(255 - np.asarray(field))


def mnist_style(digit: np.ndarray) -> Image.Image:
  """The digit as it is in MNIST: 28x28, white on black (grayscale)."""
  return Image.fromarray(digit)


def montage(photos, inputs, labels, probs, path: str, cols: int = 4) -> str:
  """Photos with the model's answers, each beside its 28x28 input."""
  rows = -(-len(photos) // cols)
  fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.9 * cols, 2.1 * rows),
                           gridspec_kw={"width_ratios": [2.2, 1] * cols},
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for (ax, ax_input), photo, image, y, p in zip(axes.reshape(-1, 2), photos,
                                                inputs, labels, probs):
    picture = Image.open(io.BytesIO(photo))
    picture.thumbnail((260, 260))
    ax.imshow(picture)
    ax_input.imshow(image, cmap=plots.DIGIT_CMAP, vmin=0, vmax=255)
    ax_input.axis("on")
    ax_input.set(xticks=[], yticks=[])
    best = int(np.argmax(p))
    ax.set_title(f"a {y}, read as {best} ({100 * p[best]:.0f}%)", fontsize=9,
                 color="black" if best == y else "red", loc="left")
  fig.suptitle("Generated phone photos of MNIST test digits, the model's answer "
               "(red if wrong) and its 28x28 input", fontsize=10)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  # 256 colours keep the figure small enough for the README.
  Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
  return path


def main(argv=None):
  p = parser(__doc__)
  p.add_argument("--run", required=True, help="a trained run folder")
  p.add_argument("--num", type=int, default=1000,
                 help="test digits to use (each as a photo and clean)")
  p.add_argument("--seed", type=int, default=0, help="picks the test digits "
                 "(IDX files' and tfds's orders differ) and the photos")
  p.add_argument("--montage", help="save the first 12 photos with the run's "
                 "answers as this PNG")
  args = p.parse_args(argv)
  if args.mnist_dir:  # Read as they are: the IDX files' order, not tfds's.
    paths = pipeline.find_idx_files(args.mnist_dir)
    images, labels = idx.read_pair(paths["test_images"], paths["test_labels"])
  else:
    arrays = pipeline.prepare("mnist", data_dir=args.data_dir)
    images, labels = arrays["test_images"], arrays["test_labels"]
  images = images.reshape(images.shape[:3])  # [10000, 28, 28]: grey digits.
  chosen = np.random.default_rng(args.seed).choice(
      len(images), min(args.num, len(images)), replace=False)
  digits, labels = images[chosen], labels[chosen]
  photos = [photo_jpeg(d, np.random.default_rng([args.seed, i]))
            for i, d in enumerate(digits)]
  print(f"accuracy of {args.run} on {len(digits)} test digits (no digit found "
        "counts as wrong):")
  run, results, line = run_lib.load_run(args.run), {}, []
  for kind, pictures in {"photo": photos,
                         "scan": [clean_scan(d) for d in digits],
                         "mnist": [mnist_style(d) for d in digits]}.items():
    inputs = np.zeros((len(pictures), 28, 28), np.uint8)
    failed = np.zeros(len(pictures), bool)  # No digit found: zeros, wrong.
    for i, picture in enumerate(pictures):
      if isinstance(picture, bytes):
        picture = Image.open(io.BytesIO(picture))
      try:
        inputs[i] = images_lib.preprocess(picture)
      except UserError:  # ImageError: no digit found.
        failed[i] = True
    probs = run.probabilities(inputs)
    predicted = np.where(failed, -1, probs.argmax(axis=1))
    results[kind] = inputs, probs
    line.append(f"{kind} {100 * np.mean(predicted == labels):.2f}% "
                f"({failed.sum()} no digit)")
  print(", ".join(line), flush=True)
  if args.montage:
    inputs, probs = results["photo"]
    print("montage:", montage(photos[:12], inputs[:12], labels[:12],
                              probs[:12], args.montage))


if __name__ == "__main__":
  script(main)

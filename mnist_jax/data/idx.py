"""Reading the IDX format the MNIST files come in; every malformed
input raises a one-line `IdxError` naming the file."""

import gzip
import struct
import zlib
from typing import Tuple

import numpy as np

from mnist_jax.data import datasets
from mnist_jax.errors import UserError

IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions: [N, H, W] (grey).
COLOUR_MAGIC = 0x00000804  # uint8 data, 4 dimensions: [N, H, W, C].
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension.
MAX_ITEMS = 10_000_000  # Refuse absurd headers before allocating for them.


class IdxError(UserError):
  """An IDX file is missing, unreadable, truncated or not what it claims."""


def read(path: str, expect_magic: int,
         image_shape: Tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
  """One IDX file (gzip or not): uint8 images [N, H, W, C] of `image_shape`
  (expect_magic IMAGES_MAGIC; a grey [N, H, W] file where C is 1) or labels
  [N] (LABELS_MAGIC)."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise IdxError(f"cannot read {path}: {e.strerror or e}") from None
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise IdxError(f"{path} is a corrupt or truncated gzip file ({e}); "
                     "replace it with a fresh copy") from None
  images = expect_magic == IMAGES_MAGIC
  kind = "images" if images else "labels"
  magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else -1
  allowed = (IMAGES_MAGIC, COLOUR_MAGIC) if images else (LABELS_MAGIC,)
  ndim = magic & 0xFF if magic in allowed else expect_magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise IdxError(f"{path} is truncated: {len(raw)} bytes, shorter than an "
                   f"IDX {kind} header; replace it with a fresh copy")
  if magic not in allowed:
    raise IdxError(f"{path} is not an IDX {kind} file (magic 0x{magic:08x}, "
                   f"expected 0x{expect_magic:08x})")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  shape = tuple(image_shape)
  grey = shape[2] == 1  # Its files may leave out the channel axis.
  if images and tuple(dims[1:]) not in (shape, shape[:2] if grey else None):
    text = lambda d: "x".join(map(str, d[:2] if grey and len(d) > 2 and d[2]
                                   == 1 else d))
    raise IdxError(f"{path} holds {text(dims[1:])} images; "
                   f"{text(shape)} expected")
  if not 0 < dims[0] <= MAX_ITEMS:
    raise IdxError(f"{path} claims {dims[0]} {kind}; that is not a valid count")
  size, body = int(np.prod(dims)), len(raw) - header
  if body != size:
    state = "truncated" if body < size else "longer than its header says"
    raise IdxError(f"{path} is {state}: {body} data bytes for {size} expected; "
                   "replace it with a fresh copy")
  out = np.frombuffer(raw, np.uint8, count=size, offset=header)
  return out.reshape(dims[0], *shape) if images else out


def read_pair(images_path: str, labels_path: str,
              dataset: datasets.DatasetInfo = datasets.DATASETS["mnist"]):
  """A dataset's matching image and label files, checked to agree: images
  [N, H, W, C] uint8, upright, and labels [N] int32 as class indices 0..K-1."""
  images = read(images_path, IMAGES_MAGIC, dataset.image_shape)
  labels = read(labels_path, LABELS_MAGIC)
  if len(images) != len(labels):
    raise IdxError(f"{images_path} has {len(images)} images but {labels_path} "
                   f"has {len(labels)} labels")
  low, high = dataset.first_label, dataset.first_label + dataset.num_classes - 1
  if labels.min() < low or labels.max() > high:
    bad = int(labels.max() if labels.max() > high else labels.min())
    raise IdxError(f"{labels_path} has a label {bad}; labels must be "
                   f"{low}-{high} ({dataset.name})")
  if dataset.transposed:
    images = np.ascontiguousarray(images.transpose(0, 2, 1, 3))
  return images, labels.astype(np.int32) - low


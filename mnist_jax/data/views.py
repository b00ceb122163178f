"""The input views: uint8 images as a model reads them, scaled to [0, 1].

`to_view` gives the layouts: flat [B, 784] (linear, MLP), image
[B, 28, 28, 1] (CNN), or a sequence for the recurrent models (`view`): 28
rows, 784 pixels, or 784 permuted pixels. rows is the seeds' reading (28
steps of 28 pixels). pixels is sequential MNIST (784 steps of 1 pixel,
row-major); permuted applies one fixed random permutation of the 784
positions first (permuted MNIST). The permutation is a pure function of
`Config.permute_seed` (numpy's PCG64), so train, validation, test and every
later `predict` see the same order; the run folder records the seed in
config.json and the order itself in permutation.npy.
"""

import os
from typing import Callable, Union

import numpy as np

from mnist_jax.config import SEQUENCES
from mnist_jax.rundir import files

VIEWS = ("flat", "image", "rows")
PERMUTATION_FILE = "permutation.npy"
NUM_PIXELS = 28 * 28


def to_view(images, view):
  """Scales uint8 images [B, 28, 28] to float32 in [0, 1] in a model's layout.

  `view` is a name, or a function of the scaled [B, 28, 28] images (what
  `view()` returns for pixel and permuted sequences).

  Returns:
    flat: [B, 784]; image: [B, 28, 28, 1]; rows: [B, 28, 28] (28 steps of 28).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = images.astype(jnp.float32) * (1.0 / 255.0)
  if callable(view):
    return view(x)
  if view == "flat":
    return x.reshape(x.shape[0], -1)
  if view == "image":
    return x[..., None]
  if view == "rows":
    return x
  raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


def permutation(seed: int) -> np.ndarray:
  """The fixed order of the 784 pixel positions for `seed`: [784] int32."""
  return np.random.default_rng(seed).permutation(NUM_PIXELS).astype(np.int32)


def view(sequence: str, permute_seed: int = 0) -> Union[str, Callable]:
  """The input view (see `to_view`) for a recurrent model.

  Returns:
    "rows", or a function mapping float images [B, 28, 28] to [B, 784, 1].
  """
  if sequence == "rows":
    return "rows"
  if sequence == "pixels":
    return lambda x: x.reshape(x.shape[0], NUM_PIXELS, 1)
  if sequence == "permuted":
    order = permutation(permute_seed)
    return lambda x: x.reshape(x.shape[0], NUM_PIXELS)[:, order, None]
  raise ValueError(f"unknown sequence {sequence!r}; expected one of {SEQUENCES}")


def record(workdir: str, config) -> None:
  """Writes the permutation of a permuted run into its folder (no-op otherwise)."""
  if getattr(config, "sequence", "rows") == "permuted":
    with files.atomic(os.path.join(workdir, PERMUTATION_FILE), "wb") as f:
      np.save(f, permutation(config.permute_seed))

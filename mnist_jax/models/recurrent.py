"""Recurrent models (SimpleRNN, LSTM, GRU) reading an image as a sequence: its
rows (MNIST: 28 of 28 pixels), or its pixels in order (sequential MNIST) or in
a fixed random order (permuted MNIST). How each --sequence reads is declared
once (SEQUENCES); the analyses and the page ask the model (`reading`)."""

import functools
from typing import NamedTuple, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class Reading(NamedTuple):
  """How a model reads an image [H, W, C] in steps: `order` [T, P], the flat
  indices (row * W + column) of the pixels step t reads; every `every`
  steps read one `unit` ((singular, plural): what the analyses and the page
  count, e.g. ("row", "rows"))."""
  order: np.ndarray
  unit: Tuple[str, str]
  every: int


def permutation(seed: int, size: int = 784) -> np.ndarray:
  """The fixed pixel order of --sequence=permuted: [size] int32."""
  return np.random.default_rng(seed).permutation(size).astype(np.int32)


# --sequence: name -> (what it reads, "the {h} rows"; fn(H, W, seed) ->
# Reading).
SEQUENCES = {
    "rows": ("the {h} rows", lambda h, w, seed: Reading(
        np.arange(h * w).reshape(h, w), ("row", "rows"), 1)),
    "pixels": ("the {n} pixels, row by row", lambda h, w, seed: Reading(
        np.arange(h * w)[:, None], ("row", "rows"), w)),
    "permuted": ("the {n} pixels in a fixed random order",
                 lambda h, w, seed: Reading(
                     permutation(seed, h * w)[:, None],
                     (f"group of {w} pixels", f"groups of {w} pixels"), w)),
}


def describe(sequence: str, image_shape) -> str:
  """What --sequence=`sequence` reads of images [H, W, C]: "the 28 rows"."""
  h, w = image_shape[:2]
  return SEQUENCES[sequence][0].format(h=h, w=w, n=h * w)


def reading(sequence: str, image_shape, permute_seed: int = 0) -> Reading:
  """The Reading of --sequence=`sequence` for images [H, W, C]."""
  h, w = image_shape[:2]
  return SEQUENCES[sequence][1](h, w, permute_seed)


def as_sequence(images, sequence: str = "rows", permute_seed: int = 0):
  """images [B, H, W, C] (uint8, 255 = ink) -> [B, T, P * C] in [0, 1]: at
  step t the pixels `reading` says, their channels together."""
  b, h, w, c = images.shape
  order = reading(sequence, (h, w), permute_seed).order
  x = (jnp.asarray(images) / 255.0).reshape(b, h * w, c)  # float32.
  if not np.array_equal(order.ravel(), np.arange(h * w)):  # Else in place.
    x = x[:, order.ravel()]
  return x.reshape(b, order.shape[0], order.shape[1] * c)


class Recurrent(nn.Module):
  """Stacked, optionally bidirectional nn.RNN layers, dropout between them and
  on the top one's last state(s), to Dense: images [B, H, W, C] -> logits."""
  OUTPUT = "out"  # Its output layer; that layer's input: its features.
  # Its small matmuls leave a core idle: --parallel=auto splits the batch
  # over a CPU host's devices (training/devices.py).
  DATA_PARALLEL_ON_CPU = True
  cell: str = "lstm"
  hidden: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  sequence: str = "rows"
  permute_seed: int = 0
  num_classes: int = 10
  remat: bool = False  # Recompute each step in backprop: O(T) less memory.

  def reading(self, image_shape) -> Optional[Reading]:
    """How it reads images [H, W, C] in steps (None: not one way only)."""
    if self.bidirectional:
      return None
    return reading(self.sequence, image_shape, self.permute_seed)

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = as_sequence(images, self.sequence, self.permute_seed)
    # The carry in the compute dtype (bfloat16 under --dtype=bfloat16).
    carry_init = lambda key, shape, dtype: jnp.zeros(shape, x.dtype)
    cell = functools.partial(nn.remat(CELLS[self.cell]) if self.remat
                             else CELLS[self.cell], carry_init=carry_init)
    for layer in range(self.num_layers):
      if layer > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      # Cells are named here: nn.RNN binds its cell in this (the parent) scope.
      name = f"{self.cell}_{layer}"
      forward = nn.RNN(cell(self.hidden, name=name))
      if self.bidirectional:
        backward = nn.RNN(cell(self.hidden, name=name + "_backward"),
                          reverse=True, keep_order=True)
        # Without return_carry an nn.RNN returns its outputs alone.
        both = [forward(x), backward(x)]
        x = jnp.concatenate(both, axis=-1)  # type: ignore[arg-type]
      else:
        x = forward(x)
    last = x[:, -1]
    if self.bidirectional:
      # The backward pass ends at t = 0, where keep_order puts its final state.
      last = jnp.concatenate([x[:, -1, :self.hidden], x[:, 0, self.hidden:]],
                             -1)
    last = nn.Dropout(self.dropout, deterministic=not train)(last)
    return nn.Dense(self.num_classes, name="out")(last)

"""Recurrent models (SimpleRNN, LSTM, GRU) reading an image as a sequence: its
rows (MNIST: 28 of 28 pixels), or its pixels in order (sequential MNIST) or in
a fixed random order (permuted MNIST)."""

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
SEQUENCES = ("rows", "pixels", "permuted")


def permutation(seed: int, size: int = 784) -> np.ndarray:
  """The fixed pixel order of --sequence=permuted: [size] int32."""
  return np.random.default_rng(seed).permutation(size).astype(np.int32)


def as_sequence(images, sequence: str = "rows", permute_seed: int = 0):
  """images [B, H, W, C] (uint8, 255 = ink) -> [B, T, F] in [0, 1]: rows
  [B, H, W * C], or pixels [B, H * W, C] in order or permuted."""
  b, h, w, c = images.shape
  x = images / 255.0
  if sequence == "rows":
    return x.reshape(b, h, w * c)
  x = x.reshape(b, h * w, c)
  return x[:, permutation(permute_seed, h * w)] if sequence == "permuted" else x


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

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = as_sequence(images, self.sequence, self.permute_seed)
    cell = nn.remat(CELLS[self.cell]) if self.remat else CELLS[self.cell]
    # The carry in the compute dtype (bfloat16 under --dtype=bfloat16).
    carry_init = lambda key, shape, dtype: jnp.zeros(shape, x.dtype)
    cell = functools.partial(cell, carry_init=carry_init)
    for layer in range(self.num_layers):
      if layer > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      # Cells are named here: nn.RNN binds its cell in this (the parent) scope.
      name = f"{self.cell}_{layer}"
      forward = nn.RNN(cell(self.hidden, name=name))
      if self.bidirectional:
        backward = nn.RNN(cell(self.hidden, name=name + "_backward"),
                          reverse=True, keep_order=True)
        x = jnp.concatenate([forward(x), backward(x)], axis=-1)
      else:
        x = forward(x)
    last = x[:, -1]
    if self.bidirectional:
      # The backward pass ends at t = 0, where keep_order puts its final state.
      last = jnp.concatenate(
          [x[:, -1, : self.hidden], x[:, 0, self.hidden :]], -1
      )
    last = nn.Dropout(self.dropout, deterministic=not train)(last)
    return nn.Dense(self.num_classes, name="out")(last)

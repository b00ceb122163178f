"""Recurrent models (SimpleRNN, LSTM, GRU) scanned over an image sequence.

x: [B, T, F] (28 rows of 28 pixels, or 784 pixels of 1: see data/views.py)
-> logits [B, num_classes]. The last hidden state of the top layer (of both
directions when bidirectional) feeds a Dense output layer, as in the seed
notebooks.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class Recurrent(nn.Module):
  """Stacked, optionally bidirectional nn.RNN layers, then Dense."""
  cell: str = "lstm"
  hidden: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  num_classes: int = 10
  remat: bool = False  # Recompute each step in backprop: O(T) less memory.

  @nn.compact
  def __call__(self, x, train: bool = False):
    cell = nn.remat(CELLS[self.cell]) if self.remat else CELLS[self.cell]
    # Flax makes the initial carry in param_dtype; under --dtype=bfloat16 the
    # parameters arrive as bfloat16 (precision.py), and so must the carry.
    cell = functools.partial(cell, param_dtype=x.dtype)
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
      last = jnp.concatenate([x[:, -1, :self.hidden], x[:, 0, self.hidden:]], -1)
    last = nn.Dropout(self.dropout, deterministic=not train)(last)
    return nn.Dense(self.num_classes, name="out")(last)

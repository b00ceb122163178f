"""Recurrent models (SimpleRNN, LSTM, GRU) scanned over an image sequence.

x: [B, T, F] (28 rows of 28 pixels, or 784 pixels of 1: see sequence.py)
-> logits [B, num_classes]; the last hidden state of the top layer (both directions when bidirectional) feeds
a Dense output layer, as in the seed notebooks.

`impl="fast"` (the default) runs each layer with `recurrence.rnn_layer`:
the same function and parameters as `impl="flax"` (nn.RNN over flax's cells),
several times faster on CPU; tests/test_equivalence.py holds them equal.
"""

import flax.linen as nn
import jax.numpy as jnp

from mnist_jax.models import recurrence

CELLS = recurrence.FLAX_CELLS


class Recurrent(nn.Module):
  """Stacked, optionally bidirectional recurrent layers over time."""
  cell: str = "lstm"
  hidden: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  num_classes: int = 10
  impl: str = "fast"  # "fast" (recurrence.py) or "flax" (nn.RNN), same function.
  # Recompute each step in backprop: O(T) less memory for long sequences. It
  # runs the flax impl (nn.remat cells), with the same parameters.
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.impl == "flax" or self.remat:
      last = self._flax_layers(x, train)
    elif self.impl == "fast":
      last = self._fast_layers(x, train)
    else:
      raise ValueError(f"impl must be 'fast' or 'flax', got {self.impl!r}")
    if self.dropout > 0:
      last = nn.Dropout(self.dropout, deterministic=not train)(last)
    return nn.Dense(self.num_classes, name="out")(last)

  def _flax_layers(self, x, train):
    cell_cls = nn.remat(CELLS[self.cell]) if self.remat else CELLS[self.cell]
    for layer in range(self.num_layers):
      # Cells are named here: nn.RNN binds its cell in this (the parent) scope.
      name = f"{self.cell}_{layer}"
      forward = nn.RNN(cell_cls(self.hidden, name=name))
      if self.bidirectional:
        backward = nn.RNN(cell_cls(self.hidden, name=name + "_backward"),
                          reverse=True, keep_order=True)
        x = jnp.concatenate([forward(x), backward(x)], axis=-1)
      else:
        x = forward(x)
      if self.dropout > 0 and layer < self.num_layers - 1:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.bidirectional:
      # The backward pass ends at t = 0, where keep_order puts its final state.
      return jnp.concatenate([x[:, -1, :self.hidden], x[:, 0, self.hidden:]], -1)
    return x[:, -1]

  def _fast_layers(self, x, train):
    # Parameter groups carry the names the flax impl gives its cells
    # (rnn_0, rnn_0_backward, ...), so both impls share checkpoints.
    def params(features, name):
      return recurrence.CellParams(self.cell, features, self.hidden, name=name)()

    x = jnp.swapaxes(x, 0, 1)  # Time-major [T, B, F] inside the stack.
    for layer in range(self.num_layers):
      # The top layer returns only its final state(s): [B, H] per direction.
      top = layer == self.num_layers - 1
      features = x.shape[-1]
      name = f"{self.cell}_{layer}"
      y = recurrence.rnn_layer(self.cell, params(features, name), x,
                               sequences=not top)
      if self.bidirectional:
        back = recurrence.rnn_layer(self.cell, params(features, name + "_backward"),
                                    x, reverse=True, sequences=not top)
        y = jnp.concatenate([y, back], axis=-1)
      x = y
      if self.dropout > 0 and not top:
        # Batch-major for the mask, so it matches the flax impl's draw.
        x = jnp.swapaxes(nn.Dropout(self.dropout, deterministic=not train)(
            jnp.swapaxes(x, 0, 1)), 0, 1)
    return x

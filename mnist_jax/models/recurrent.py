"""Recurrent models (SimpleRNN, LSTM, GRU) scanned over the 28 image rows.

x: [B, T, F] (T = 28 steps of F = 28 pixels) -> logits [B, num_classes]; the
last hidden state of the top layer (both directions when bidirectional) feeds
a Dense output layer, as in the seed notebooks.
"""

import flax.linen as nn
import jax.numpy as jnp

CELLS = {
    "rnn": nn.SimpleCell,
    "lstm": nn.OptimizedLSTMCell,
    "gru": nn.GRUCell,
}


class Recurrent(nn.Module):
  """Stacked, optionally bidirectional recurrent layers over time (nn.RNN scans)."""
  cell: str = "lstm"
  hidden: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    cell_cls = CELLS[self.cell]
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
      last = jnp.concatenate([x[:, -1, :self.hidden], x[:, 0, self.hidden:]], -1)
    else:
      last = x[:, -1]
    if self.dropout > 0:
      last = nn.Dropout(self.dropout, deterministic=not train)(last)
    return nn.Dense(self.num_classes, name="out")(last)

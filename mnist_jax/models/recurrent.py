"""Recurrent models (SimpleRNN, LSTM, GRU) scanned over an image sequence.

x: [B, T, F] (28 rows of 28 pixels, or 784 pixels of 1: see sequence.py)
-> logits [B, num_classes]; the
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
  remat: bool = False  # Recompute each step in backprop: O(T) less memory.

  @nn.compact
  def __call__(self, x, train: bool = False):
    base = CELLS[self.cell]
    cell_cls = nn.remat(base) if self.remat else base
    cells = iter(range(2 * self.num_layers))
    # Explicit names equal to linen's automatic ones, so that remat (which
    # renames the class) keeps the parameter tree and its checkpoints.
    make_cell = lambda: cell_cls(self.hidden, name=f"{base.__name__}_{next(cells)}")
    for layer in range(self.num_layers):
      forward = nn.RNN(make_cell(), name=f"{self.cell}_{layer}")
      if self.bidirectional:
        backward = nn.RNN(make_cell(), reverse=True, keep_order=True,
                          name=f"{self.cell}_{layer}_backward")
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

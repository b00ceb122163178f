"""Fully connected models on the flat 784-pixel view."""

from typing import Sequence

import flax.linen as nn


class Linear(nn.Module):
  """The seeds' no-hidden-layer baseline: logits = x W + b.

  x: [B, 784] -> logits [B, num_classes].
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.num_classes, name="out")(x)


class MLP(nn.Module):
  """Dense-ReLU-Dropout blocks, then a Dense output layer.

  x: [B, 784] -> logits [B, num_classes].
  """
  hidden: Sequence[int] = (512, 256)
  dropout: float = 0.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

"""Fully connected models on the pixels: images [B, H, W, C] (uint8, 255 =
ink) -> logits [B, num_classes]."""

from typing import Sequence

import flax.linen as nn


class MLP(nn.Module):
  """Dense-ReLU-Dropout blocks, then a Dense output layer."""
  OUTPUT = "out"  # Its output layer (see cnn.CNN).
  hidden: Sequence[int] = (512, 256)
  dropout: float = 0.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.reshape(images.shape[0], -1) / 255.0
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)


class Linear(nn.Module):
  """The seeds' no-hidden-layer baseline: logits = x W + b. Its own module,
  not an MLP without hidden layers: an edit to the MLP leaves it as it is."""
  OUTPUT = "out"  # Its output layer (see cnn.CNN).
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.reshape(images.shape[0], -1) / 255.0
    return nn.Dense(self.num_classes, name="out")(x)

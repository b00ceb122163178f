"""Convolutional model on the image."""

from typing import Sequence

import flax.linen as nn


class CNN(nn.Module):
  """Conv-(BatchNorm)-ReLU-MaxPool blocks, then Dense-ReLU (dropout before and
  after) and a Dense output. Each block: a stride-1 k x k convolution (VALID
  or SAME), a 2x2 max pool at stride 2. images [B, H, W, C] (uint8, 255 =
  ink) -> logits [B, num_classes]."""
  OUTPUT = "out"  # Its output layer; that layer's input: its features.
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  dense: int = 128
  dropout: float = 0.0
  padding: str = "VALID"
  batch_norm: bool = False
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images / 255.0
    k = self.kernel_size
    for i, width in enumerate(self.features):
      # No bias before BatchNorm: the normalization removes it.
      x = nn.Conv(width, (k, k), padding=self.padding,
                  use_bias=not self.batch_norm, name=f"conv_{i}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, name=f"bn_{i}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

"""Convolutional model on the image."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x):
  """nn.max_pool(x, (2, 2), strides=(2, 2)), [B, H, W, C] -> [B, H // 2,
  W // 2, C], as the maximum of four strided slices: its gradient is
  elementwise selects (a tie shares it), where nn.max_pool's is XLA's
  select-and-scatter, on CPU about 40% of a BatchNorm CNN's train step."""
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  a, b, c, d = (x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1))
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


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
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

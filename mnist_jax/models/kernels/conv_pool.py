"""A drop-in for `models.cnn.CNN` (same attributes, parameters, function and
gradients) lowered for XLA:CPU, whose convolution is slow in a scanned epoch.

Channels-first, batch last ([C, H, W, B]): slices copy long contiguous runs and
each conv is one wide matmul. Each 3x3 conv + ReLU + 2x2 pool computes only
the conv outputs the pool reads: by pool-phase (few input channels) or by
Winograd. A VALID stack reads only the crop it keeps.
"""

from typing import Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.models import cnn

# Up to this many input channels a 3x3 conv + pool uses the pool-phase lowering
# (memory-bound); above it, Winograd F(2x2, 3x3) (compute-bound).
PHASE_MAX_IN_FEATURES = 4


class Params(nn.Module):
  """nn.Conv's or nn.Dense's parameters: (kernel `shape`, bias [shape[-1]] or
  without `use_bias` None), float32."""
  shape: Tuple[int, ...]
  use_bias: bool = True
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init, self.shape, jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros_init(), self.shape[-1:],
                       jnp.float32) if self.use_bias else None)
    return kernel, bias


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): out = A^T [(G k G^T) * (B^T d B)] A
# per 4x4 input tile d and 2x2 output tile, as Kronecker matrices acting on the
# 16 window taps [16 (a, b), 16 (r, s)] and on the 16 products [4, 16].
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                    np.float32)
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
                   np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_WINO_IN = np.kron(_WINO_BT, _WINO_BT)
_WINO_OUT = np.kron(_WINO_AT, _WINO_AT)


def _batched_dot(a, b, contract_a, contract_b):
  """[K, ...] x [K, ...] -> [K, free_a, free_b]: a matmul per leading index."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)),
                                    ((0,), (0,))))


def _winograd_fwd(x, kernel):
  cin, hin, win, b = x.shape
  cout = kernel.shape[3]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  n = ho * wo * b
  taps = _window_taps(x, ho, wo).reshape(16, cin * n)
  v = jnp.dot(_WINO_IN, taps).reshape(16, cin, n)
  u = jnp.einsum("ai,bj,ijco->aboc", _WINO_G, _WINO_G,
                 kernel).reshape(16, cout, cin)
  y = jnp.dot(_WINO_OUT, _batched_dot(u, v, 2, 1).reshape(16, cout * n))
  return y.reshape(4, cout, ho, wo, b), (v, u)


@jax.custom_vjp
def winograd_pool_candidates(x, kernel):
  """conv3x3(x) at the four positions of each 2x2 pool window, no bias:
  [Cin, 2 ho + 2, 2 wo + 2, B] -> [4, Cout, ho, wo, B]. A 2x2 output tile is
  a pool window: 2.25x fewer multiplies than im2col, and a gradient in the
  transformed domain."""
  return _winograd_fwd(x, kernel)[0]


def _winograd_pool_candidates_bwd(res, dy):
  v, u = res
  _, cout, ho, wo, b = dy.shape
  cin, n = u.shape[2], ho * wo * b
  dprod = jnp.dot(_WINO_OUT.T, dy.reshape(4, cout * n)).reshape(16, cout, n)
  du = _batched_dot(dprod, v, 2, 2).reshape(4, 4, cout, cin)
  dkernel = jnp.einsum("ai,bj,aboc->ijco", _WINO_G, _WINO_G, du)
  dv = _batched_dot(u, dprod, 1, 1).reshape(16, cin * n)
  dtaps = jnp.dot(_WINO_IN.T, dv).reshape(16, cin, ho, wo, b)
  return window_taps_transpose(dtaps), dkernel


winograd_pool_candidates.defvjp(_winograd_fwd, _winograd_pool_candidates_bwd)


def _window_taps(x, ho, wo):
  """[C, H, W, B] -> [16, C, ho, wo, B]: tap (r, s) of the 4x4 stride-2 window
  (t, u) is x[:, 2t+r, 2u+s]. One copy makes x parity-major, [p, q, C, ho + 1,
  wo + 1, B] for rows 2t' + p and columns 2u' + q; the taps (r, s) = (2i + p,
  2j + q) are then its slices at offsets i and j, stacked. XLA:CPU makes that
  one or two kernels, where 16 strided slices and their stack were 17, each
  compiled on its own: the CNN's train step compiles about 0.4 s sooner."""
  c, _, _, b = x.shape
  x = x[:, :2 * ho + 2, :2 * wo + 2, :].reshape(c, ho + 1, 2, wo + 1, 2, b)
  x = x.transpose(2, 4, 0, 1, 3, 5)
  x = jnp.stack([x[..., j:j + wo, :] for j in range(2)], axis=1)
  x = jnp.stack([x[..., i:i + ho, :, :] for i in range(2)])  # [i, p, j, q, ...]
  return x.reshape(16, c, ho, wo, b)


def window_taps_transpose(taps):
  """The transpose of _window_taps: [16, C, ho, wo, B] -> [C, 2ho+2, 2wo+2, B],
  its four slices padded back and summed (in the order (i, j) = (0, 0), (0,
  1), (1, 0), (1, 1), as float addition is not associative), then
  parity-major undone."""
  _, c, ho, wo, b = taps.shape
  x = taps.reshape(2, 2, 2, 2, c, ho, wo, b)  # [i, p, j, q, C, ho, wo, B]
  parts = [jnp.pad(x[i, :, j], ((0, 0),) * 3 + ((i, 1 - i), (j, 1 - j), (0, 0)))
           for i in range(2) for j in range(2)]
  x = sum(parts[1:], parts[0])  # [p, q, C, ho + 1, wo + 1, B]
  return x.transpose(2, 3, 0, 4, 1, 5).reshape(c, 2 * ho + 2, 2 * wo + 2, b)


@jax.custom_vjp
def _max_of_four(y):
  """[4, ...] -> [...]: the max over the four pool positions, the first
  maximum taking the gradient (as max pooling's)."""
  return jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))


def _max_of_four_fwd(y):
  m = _max_of_four(y)
  return m, (y, m)


def _max_of_four_bwd(res, g):
  """g to the first candidate equal to the max, zero to the others, one
  elementwise pass each."""
  y, m = res
  grads, taken = [], jnp.zeros(m.shape, bool)
  for candidate in y:
    first = (candidate == m) & ~taken
    grads.append(jnp.where(first, g, 0.0))
    taken = taken | first
  return (jnp.stack(grads),)


_max_of_four.defvjp(_max_of_four_fwd, _max_of_four_bwd)


def method(in_features: int) -> str:
  """How a 3x3 conv + pool of `in_features` input channels is computed."""
  return ("pool-phase" if in_features <= PHASE_MAX_IN_FEATURES
          else "Winograd F(2x2, 3x3)")


def _conv3x3_pool(x, kernel):
  """max_pool_2x2(conv3x3(x)), no bias. Pool-phase: a patch column per 4x4
  stride-2 window times the kernel at the four pool positions [4 Cout, 16 Cin]
  gives the four pool candidates, on patches 2.25x smaller than im2col's."""
  cin, hin, win, b = x.shape
  cout = kernel.shape[3]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  if method(cin) != "pool-phase":
    return _max_of_four(winograd_pool_candidates(
        x[:, :2 * ho + 2, :2 * wo + 2, :], kernel))
  taps = _window_taps(x, ho, wo).reshape(16 * cin, ho * wo * b)
  # [4, 4, 4, Cin, Cout]: the kernel at each of the four pool positions.
  phases = jnp.stack([jnp.pad(kernel, ((r, 1 - r), (s, 1 - s), (0, 0), (0, 0)))
                      for r in range(2) for s in range(2)])
  phases = jnp.swapaxes(phases.reshape(4, 16 * cin, cout), 1, 2)
  y = jnp.dot(phases.reshape(4 * cout, 16 * cin), taps)
  return _max_of_four(y.reshape(4, cout, ho, wo, b))


def conv_relu_pool(x, kernel, bias, padding="VALID"):
  """max_pool_2x2(relu(conv3x3(x) + bias)), stride 1, in [C, H, W, B] layout;
  kernel and bias as nn.Conv's. Max commutes with + bias and ReLU (monotone,
  ties stay ties), so the pool comes first."""
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return nn.relu(_conv3x3_pool(x, kernel) + bias[:, None, None, None])


def dense_cfirst(x, kernel):
  """x.transpose(3, 1, 2, 0).reshape(B, -1) @ kernel without moving x
  [C, H, W, B]: the kernel's rows are permuted from (h, w, c) to (c, h, w)
  instead (a copy of the kernel, not a batch-strided read of activations)."""
  c, h, w, b = x.shape
  kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(
      c * h * w, -1)
  return jax.lax.dot_general(x.reshape(c * h * w, b), kernel,
                             (((0,), (0,)), ((), ())))


def valid_extent(size, num_layers):
  """The input rows (or columns) a stack of VALID 3x3 conv + 2x2 pool layers
  reads: a pool drops an odd last row, so e.g. the seed CNN reads only 26x26."""
  pooled = size
  for _ in range(num_layers):
    pooled = (pooled - 2) // 2
  for _ in range(num_layers):
    pooled = 2 * pooled + 2
  return pooled


class CNN(cnn.CNN):
  """cnn.CNN with 3x3 convolutions and without BatchNorm: images [B, H, W, C]
  -> logits [B, classes]; other attributes fail kernels' check."""

  def paths(self, image_shape) -> dict:
    """{layer: how this kernel computes it}, for the start-up line."""
    channels, out = image_shape[-1], {}
    for i, width in enumerate(self.features):
      out[f"conv_{i}"] = f"{method(channels)} conv, ReLU, pool"
      channels = width
    return {**out, "dense": "XLA's matmul", "out": "XLA's matmul"}

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images / 255.0
    if self.padding == "VALID":
      layers = len(self.features)
      x = x[:, :valid_extent(x.shape[1], layers),
            :valid_extent(x.shape[2], layers)]
    x = jnp.transpose(x, (3, 1, 2, 0))  # [B, H, W, C] -> [C, H, W, B]
    for i, width in enumerate(self.features):
      kernel, bias = Params((3, 3, x.shape[0], width), name=f"conv_{i}")()
      x = conv_relu_pool(x, kernel, bias, self.padding)
    if self.dropout == 0:
      c, h, w, _ = x.shape
      kernel, bias = Params((h * w * c, self.dense), name="dense")()
      x = nn.relu(dense_cfirst(x, kernel) + bias)
      return nn.Dense(self.num_classes, name="out")(x)
    # Flattened as [B, H, W, C], so that the dropout draws are the stock's.
    x = jnp.transpose(x, (3, 1, 2, 0)).reshape(x.shape[3], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

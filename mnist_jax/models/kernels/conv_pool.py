"""A drop-in for `models.cnn.CNN` (same attributes, parameters, function and
gradients) lowered for XLA:CPU, whose convolution is slow in a scanned epoch.

Channels-first, batch last ([C, H, W, B]): slices copy long contiguous runs and
each conv is one wide matmul. Each conv + ReLU + 2x2 pool computes only the
conv outputs the pool reads: 3x3 by pool-phase (few input channels) or by
Winograd, other sizes by im2col. A VALID stack reads only the crop it keeps.
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


def conv_cfirst(x, kernel):
  """A stride-1 'VALID' convolution (no bias) as im2col: x [Cin, H, W, B],
  kernel [kh, kw, Cin, Cout] -> [Cout, H', W', B]. The patches are stacked on
  their major axis, so their gradient splits into views, not strided copies."""
  kh, kw, cin, cout = kernel.shape
  _, hin, win, b = x.shape
  h, w = hin - kh + 1, win - kw + 1
  patches = jnp.concatenate(
      [x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=0)
  # Row (i, j, cin) of the patches matches kernel.reshape(kh * kw * cin, cout).
  y = jnp.dot(kernel.reshape(kh * kw * cin, cout).T,
              patches.reshape(kh * kw * cin, h * w * b))
  return y.reshape(cout, h, w, b)


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
  y = y.reshape(4, cout, n)
  m = jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))
  return m.reshape(cout, ho, wo, b), (x.shape, v, u, y, m)


@jax.custom_vjp
def winograd_conv_pool(x, kernel):
  """max_pool_2x2(conv3x3(x)), no bias: [Cin, 2 ho + 2, 2 wo + 2, B] -> [Cout,
  ho, wo, B]. A 2x2 output tile is a pool window: 2.25x fewer multiplies than
  im2col, and a gradient in the transformed domain (first maximum takes it)."""
  return _winograd_fwd(x, kernel)[0]


def _winograd_conv_pool_bwd(res, g):
  (cin, hin, win, b), v, u, y, m = res
  cout = u.shape[1]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  n = ho * wo * b
  dy = jnp.stack(_first_max_grads(list(y), m, g.reshape(m.shape)))
  dprod = jnp.dot(_WINO_OUT.T, dy.reshape(4, cout * n)).reshape(16, cout, n)
  du = _batched_dot(dprod, v, 2, 2).reshape(4, 4, cout, cin)
  dkernel = jnp.einsum("ai,bj,aboc->ijco", _WINO_G, _WINO_G, du)
  dv = _batched_dot(u, dprod, 1, 1).reshape(16, cin * n)
  dtaps = jnp.dot(_WINO_IN.T, dv).reshape(16, cin, ho, wo, b)
  return window_taps_transpose(dtaps), dkernel


winograd_conv_pool.defvjp(_winograd_fwd, _winograd_conv_pool_bwd)


def window_taps_transpose(taps):
  """The transpose of _window_taps: [16, C, ho, wo, B] -> [C, 2ho+2, 2wo+2, B],
  summed per row and column parity (four pads each) and interleaved once, not
  autodiff's sum of 16 pads of the whole input."""
  _, c, ho, wo, b = taps.shape
  rows = []
  for p in range(2):
    cols = []
    for q in range(2):
      parts = [jnp.pad(taps[4 * (p + 2 * i) + q + 2 * j],
                       ((0, 0), (i, 1 - i), (j, 1 - j), (0, 0)))
               for i in range(2) for j in range(2)]
      cols.append(sum(parts[1:], parts[0]))
    rows.append(jnp.stack(cols, axis=3))  # [C, ho + 1, wo + 1, 2, B]
  return jnp.stack(rows, axis=2).reshape(c, 2 * ho + 2, 2 * wo + 2, b)


def _window_taps(x, ho, wo):
  """[C, H, W, B] -> [16, C, ho, wo, B]: tap (r, s) of the 4x4 stride-2 window
  (t, u) is x[:, 2t+r, 2u+s]; contiguous slices of x viewed as [C, ho + 1, 2,
  wo + 1, 2, B], so neither they nor their gradients are strided copies."""
  c, _, _, b = x.shape
  x = x[:, :2 * ho + 2, :2 * wo + 2, :].reshape(c, ho + 1, 2, wo + 1, 2, b)
  return jnp.stack(
      [x[:, r // 2:r // 2 + ho, r % 2, s // 2:s // 2 + wo, s % 2, :]
       for r in range(4) for s in range(4)], axis=0)


def _first_max_grads(candidates, m, g):
  """The gradient of m = max(candidates) as max pooling's: g to the first
  candidate equal to m, zero to the others, one elementwise pass each."""
  grads, taken = [], jnp.zeros(m.shape, bool)
  for candidate in candidates:
    first = (candidate == m) & ~taken
    grads.append(jnp.where(first, g, 0.0))
    taken = taken | first
  return grads


@jax.custom_vjp
def _max_of_four(y):
  """[4, ...] -> [...]: the max over the four pool positions, the first
  maximum taking the gradient."""
  return jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))


def _max_of_four_fwd(y):
  m = _max_of_four(y)
  return m, (y, m)


def _max_of_four_bwd(res, g):
  y, m = res
  return (jnp.stack(_first_max_grads(list(y), m, g)),)


_max_of_four.defvjp(_max_of_four_fwd, _max_of_four_bwd)


@jax.custom_vjp
def max_pool_2x2(y):
  """[C, 2h, 2w, B] -> [C, h, w, B]: 2x2 max pooling at stride 2, the first
  maximum of each window (row-major) taking the gradient, as nn.max_pool."""
  c, h, w, b = y.shape
  return y.reshape(c, h // 2, 2, w // 2, 2, b).max(axis=(2, 4))


def _max_pool_2x2_fwd(y):
  m = max_pool_2x2(y)
  return m, (y, m)


def _max_pool_2x2_bwd(res, g):
  y, m = res
  c, h, w, b = y.shape
  y = y.reshape(c, h // 2, 2, w // 2, 2, b)
  grads = _first_max_grads([y[:, :, r, :, s, :] for r in range(2)
                            for s in range(2)], m, g)
  rows = [jnp.stack(grads[2 * r:2 * r + 2], axis=3) for r in range(2)]
  return (jnp.stack(rows, axis=2).reshape(c, h, w, b),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _conv3x3_pool(x, kernel):
  """max_pool_2x2(conv3x3(x)), no bias. Pool-phase: a patch column per 4x4
  stride-2 window times the kernel at the four pool positions [4 Cout, 16 Cin]
  gives the four pool candidates, on patches 2.25x smaller than im2col's."""
  cin, hin, win, b = x.shape
  cout = kernel.shape[3]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  if cin > PHASE_MAX_IN_FEATURES:
    return winograd_conv_pool(x[:, :2 * ho + 2, :2 * wo + 2, :], kernel)
  taps = _window_taps(x, ho, wo).reshape(16 * cin, ho * wo * b)
  # [4, 4, 4, Cin, Cout]: the kernel at each of the four pool positions.
  phases = jnp.stack([jnp.pad(kernel, ((r, 1 - r), (s, 1 - s), (0, 0), (0, 0)))
                      for r in range(2) for s in range(2)])
  phases = jnp.swapaxes(phases.reshape(4, 16 * cin, cout), 1, 2)
  y = jnp.dot(phases.reshape(4 * cout, 16 * cin), taps)
  return _max_of_four(y.reshape(4, cout, ho, wo, b))


def conv_relu_pool(x, kernel, bias, padding="VALID"):
  """max_pool_2x2(relu(conv(x) + bias)), stride 1, in [C, H, W, B] layout;
  kernel and bias as nn.Conv's. Max commutes with + bias and ReLU (monotone,
  ties stay ties), so the pool comes first."""
  kh, kw = kernel.shape[:2]
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2),
                    (0, 0)))
  elif padding != "VALID":
    raise ValueError(f"padding must be VALID or SAME, got {padding!r}")
  if (kh, kw) == (3, 3):
    y = _conv3x3_pool(x, kernel)
  else:
    ho, wo = (x.shape[1] - kh + 1) // 2, (x.shape[2] - kw + 1) // 2
    y = max_pool_2x2(conv_cfirst(x[:, :2 * ho + kh - 1, :2 * wo + kw - 1],
                                 kernel))
  return nn.relu(y + bias[:, None, None, None])


def dense_cfirst(x, kernel):
  """x.transpose(3, 1, 2, 0).reshape(B, -1) @ kernel without moving x
  [C, H, W, B]: the kernel's rows are permuted from (h, w, c) to (c, h, w)
  instead (a copy of the kernel, not a batch-strided read of activations)."""
  c, h, w, b = x.shape
  kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(
      c * h * w, -1)
  return jax.lax.dot_general(x.reshape(c * h * w, b), kernel,
                             (((0,), (0,)), ((), ())))


def valid_extent(size, num_layers, kernel_size=3):
  """The input rows (or columns) a stack of VALID conv + 2x2 pool layers reads:
  a pool drops an odd last row, so e.g. the seed CNN reads only 26x26."""
  pooled = size
  for _ in range(num_layers):
    pooled = (pooled - kernel_size + 1) // 2
  for _ in range(num_layers):
    pooled = 2 * pooled + kernel_size - 1
  return pooled


class CNN(cnn.CNN):
  """cnn.CNN without BatchNorm: images [B, H, W, C] -> logits [B, classes]."""
  ACCEPTS = {"batch_norm": (False,)}  # Attribute -> the values it computes.

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images / 255.0
    layers, k = len(self.features), self.kernel_size
    if self.padding == "VALID":
      x = x[:, :valid_extent(x.shape[1], layers, k),
            :valid_extent(x.shape[2], layers, k)]
    x = jnp.transpose(x, (3, 1, 2, 0))  # [B, H, W, C] -> [C, H, W, B]
    for i, width in enumerate(self.features):
      conv = Params((k, k, x.shape[0], width), name=f"conv_{i}")
      x = conv_relu_pool(x, *conv(), padding=self.padding)
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

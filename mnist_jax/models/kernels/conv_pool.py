"""A drop-in for `models.cnn.CNN` (nn.Conv + nn.relu + nn.max_pool + nn.Dense).

Same attributes, same parameter tree (names, shapes, initialisers) and the same
function, outputs and gradients (tests/test_equivalence.py), lowered for
XLA:CPU, whose convolution is slow and far slower inside a scanned epoch:

- The stack runs channels-first with the batch last ([C, H, W, B]): every
  window slice copies long contiguous runs and each conv is one wide matmul.
- Each conv, ReLU and 2x2 pool is fused, computing only the conv outputs the
  pool reads. A 3x3 conv with few input channels (conv1) is one matmul of 4x4
  stride-2 windows against the kernel at the four pool positions (pool-phase);
  with more (conv2) it is Winograd F(2x2, 3x3) with the pool in its output
  transform and a hand-written gradient. Other kernel sizes are im2col: shifted
  slices stacked and one matmul.
- A VALID stack reads a crop of the input (rows its pools drop are never
  computed), and without dropout the dense layer reads [C, H, W, B] in place.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Up to this many input channels a 3x3 conv + pool uses the pool-phase lowering
# (memory-bound); above it, Winograd F(2x2, 3x3) (compute-bound).
PHASE_MAX_IN_FEATURES = 4


class ConvParams(nn.Module):
  """nn.Conv's parameters: kernel [k, k, Cin, features] and bias [features]."""
  features: int
  in_features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self):
    k = self.kernel_size
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        (k, k, self.in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return kernel, bias


class DenseParams(nn.Module):
  """nn.Dense's parameters: kernel [in_features, features], bias [features]."""
  features: int
  in_features: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        (self.in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return kernel, bias


def conv_cfirst(x, kernel):
  """A stride-1 'VALID' convolution (no bias) as im2col in [C, H, W, B] layout.

  x: [Cin, H, W, B], kernel [kh, kw, Cin, Cout] as nn.Conv -> [Cout, H', W', B].
  The patch matrix is stacked along its major axis (its gradient splits into
  views, not strided copies) and the matmul is [Cout, kh kw Cin] x
  [kh kw Cin, H' W' B], with a wide output.
  """
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
# per 4x4 input tile d and 2x2 output tile; as [16 (a, b), 16 (r, s)] Kronecker
# matrices acting on the 16 window taps, and on the 16 transformed products.
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                    np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_WINO_IN = np.kron(_WINO_BT, _WINO_BT)  # [16 (a, b), 16 (r, s)]
_WINO_OUT = np.kron(_WINO_AT, _WINO_AT)  # [4 (i, j), 16 (a, b)]


def _batched_dot(a, b, contract_a, contract_b):
  """[K, ...] x [K, ...] -> [K, free_a, free_b]: one matmul per leading index."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0,), (0,))))


def _winograd_fwd(x, kernel):
  cin, hin, win, b = x.shape
  cout = kernel.shape[3]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  n = ho * wo * b
  taps = _window_taps(x, ho, wo).reshape(16, cin * n)
  v = jnp.dot(_WINO_IN, taps).reshape(16, cin, n)
  u = jnp.einsum("ai,bj,ijco->aboc", _WINO_G, _WINO_G, kernel).reshape(16, cout, cin)
  y = jnp.dot(_WINO_OUT, _batched_dot(u, v, 2, 1).reshape(16, cout * n))
  y = y.reshape(4, cout, n)
  m = jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))
  return m.reshape(cout, ho, wo, b), (v, u, y, m)


@jax.custom_vjp
def winograd_conv_pool(x, kernel):
  """max_pool_2x2(conv3x3(x)) by Winograd F(2x2, 3x3), without bias.

  x: [Cin, 2 ho + 2, 2 wo + 2, B], kernel [3, 3, Cin, Cout] -> [Cout, ho, wo, B].
  Each 2x2 output tile is one pool window, so the pool is a max over the four
  rows of the output transform. 16 batched [Cout, Cin] x [Cin, ho wo B]
  matmuls do 2.25x fewer multiplies than the patch matmul; the hand-written
  gradient stays in the transformed domain (the kernel gradient is 16
  [Cout, N] x [N, Cin] matmuls, the input gradient 16 [Cin, Cout] x [Cout, N]),
  with the first maximum of each window (row-major) taking the gradient.
  """
  return _winograd_fwd(x, kernel)[0]


def _winograd_conv_pool_fwd(x, kernel):
  m, res = _winograd_fwd(x, kernel)
  return m, (x.shape, *res)


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


winograd_conv_pool.defvjp(_winograd_conv_pool_fwd, _winograd_conv_pool_bwd)


def window_taps_transpose(taps):
  """The transpose of _window_taps: [16, C, ho, wo, B] -> [C, 2ho+2, 2wo+2, B].

  Summed per row and column parity (four pads each) and interleaved once, not
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
  """[C, H, W, B] -> [16, C, ho, wo, B]: tap (r, s) of window (t, u) is x[:, 2t+r, 2u+s].

  The 4x4 windows at stride 2 are contiguous slices of x viewed as
  [C, ho + 1, 2, wo + 1, 2, B], so neither they nor their gradients are
  strided copies.
  """
  c, _, _, b = x.shape
  x = x[:, :2 * ho + 2, :2 * wo + 2, :].reshape(c, ho + 1, 2, wo + 1, 2, b)
  return jnp.stack([x[:, r // 2:r // 2 + ho, r % 2, s // 2:s // 2 + wo, s % 2, :]
                    for r in range(4) for s in range(4)], axis=0)


def _first_max_grads(candidates, m, g):
  """The gradient of m = max(candidates) as max pooling's: g to the first
  candidate equal to m, zero to the others, in one elementwise pass each
  (autodiff of a max tree recomputes the tree per candidate)."""
  grads, taken = [], jnp.zeros(m.shape, bool)
  for candidate in candidates:
    first = (candidate == m) & ~taken
    grads.append(jnp.where(first, g, 0.0))
    taken = taken | first
  return grads


@jax.custom_vjp
def _max_of_four(y):
  """[4, ...] -> [...]: the max over the leading axis (the four pool positions),
  with the first maximum taking the gradient."""
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
  """[C, 2h, 2w, B] -> [C, h, w, B]: 2x2 max pooling, stride 2, with the first
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
  grads = _first_max_grads([y[:, :, r, :, s, :] for r in range(2) for s in range(2)],
                           m, g)
  rows = [jnp.stack(grads[2 * r:2 * r + 2], axis=3) for r in range(2)]
  return (jnp.stack(rows, axis=2).reshape(c, h, w, b),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _conv3x3_pool(x, kernel):
  """max_pool_2x2(conv3x3(x)) without bias by pool-phase or Winograd.

  x: [Cin, H, W, B] -> [Cout, (H - 2) // 2, (W - 2) // 2, B]. Pool-phase: each
  4x4 window at stride 2 (one pool window's receptive field) is one patch
  column, and a [4 Cout, 16 Cin] kernel, the 3x3 kernel at the four pool
  positions, gives the four pool candidates in one matmul: a patch matrix
  2.25x smaller than im2col's and a pool that is a max of four row blocks.
  """
  cin, hin, win, b = x.shape
  cout = kernel.shape[3]
  ho, wo = (hin - 2) // 2, (win - 2) // 2
  if cin > PHASE_MAX_IN_FEATURES:
    return winograd_conv_pool(x[:, :2 * ho + 2, :2 * wo + 2, :], kernel)
  taps = _window_taps(x, ho, wo).reshape(16 * cin, ho * wo * b)
  phases = jnp.stack([jnp.pad(kernel, ((r, 1 - r), (s, 1 - s), (0, 0), (0, 0)))
                      for r in range(2) for s in range(2)])  # [4, 4, 4, Cin, Cout]
  phases = jnp.swapaxes(phases.reshape(4, 16 * cin, cout), 1, 2)
  y = jnp.dot(phases.reshape(4 * cout, 16 * cin), taps)
  return _max_of_four(y.reshape(4, cout, ho, wo, b))


def conv_relu_pool(x, kernel, bias, padding="VALID"):
  """max_pool_2x2(relu(conv(x) + bias)) in [C, H, W, B] layout, stride 1.

  x: [Cin, H, W, B] -> [Cout, H' // 2, W' // 2, B], H' the conv's output size;
  kernel [k, k, Cin, Cout] and bias [Cout] as nn.Conv. Only the conv outputs
  the pool reads are computed. Max commutes with + bias and ReLU (both
  monotone, ties stay ties), so the pool comes first.
  """
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
    y = max_pool_2x2(conv_cfirst(x[:, :2 * ho + kh - 1, :2 * wo + kw - 1], kernel))
  return nn.relu(y + bias[:, None, None, None])


def dense_cfirst(x, kernel):
  """x.transpose(3, 1, 2, 0).reshape(B, -1) @ kernel without moving x.

  x: [C, H, W, B], kernel [H * W * C, D] (rows in nn.Dense's (h, w, c) order
  of the flattened NHWC input) -> [B, D]. The kernel is permuted to (c, h, w)
  rows instead: a copy of the kernel, not of the activations, which XLA
  would fuse into the previous pool as a batch-strided read.
  """
  c, h, w, b = x.shape
  kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
  return jax.lax.dot_general(x.reshape(c * h * w, b), kernel, (((0,), (0,)), ((), ())))


def valid_extent(size, num_layers, kernel_size=3):
  """Input rows (or columns) that a stack of VALID conv + 2x2 pool layers reads.

  A pool drops an odd last row of its conv's output, so the seed CNN's conv2
  never reads conv1's 13th pooled row: cropping the 28x28 input to 26x26 gives
  the same outputs with conv1 computing 12x12 instead of 13x13 pooled outputs.
  """
  pooled = size
  for _ in range(num_layers):
    pooled = (pooled - kernel_size + 1) // 2
  for _ in range(num_layers):
    pooled = 2 * pooled + kernel_size - 1
  return pooled


class CNN(nn.Module):
  """Conv-ReLU-MaxPool blocks, then Dense-ReLU and a Dense output layer.

  x: [B, H, W, 1] -> logits [B, num_classes]; attributes as models.cnn.CNN.
  """
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  dense: int = 128
  dropout: float = 0.0
  padding: str = "VALID"
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images[..., None] / 255.0
    layers, k = len(self.features), self.kernel_size
    if self.padding == "VALID":
      x = x[:, :valid_extent(x.shape[1], layers, k),
            :valid_extent(x.shape[2], layers, k)]
    x = jnp.transpose(x, (3, 1, 2, 0))  # [B, H, W, C] -> [C, H, W, B]
    for i, width in enumerate(self.features):
      conv = ConvParams(width, x.shape[0], k, name=f"conv_{i}")
      x = conv_relu_pool(x, *conv(), padding=self.padding)
    if self.dropout == 0:
      c, h, w, _ = x.shape
      kernel, bias = DenseParams(self.dense, h * w * c, name="dense")()
      x = nn.relu(dense_cfirst(x, kernel) + bias)
      return nn.Dense(self.num_classes, name="out")(x)
    # Flattened as [B, H, W, C], so that the dropout draws are the stock's.
    x = jnp.transpose(x, (3, 1, 2, 0)).reshape(x.shape[3], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

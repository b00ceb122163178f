"""flax's nn.Conv computed as one matmul (XLA:CPU), where kernels.Lowered
intercepts it in the module as written.

XLA:CPU's convolution gradients are slow inside a scan (a stock CNN step about
6x slower than this; vmapped members worse). This lowers each stride-1 2-D
nn.Conv to shifted slices and one matmul, with the layer's own parameters,
and a backward of its own (autodiff's made XLA:CPU write the output gradient
transposed for the weight gradient: a quarter of a BatchNorm CNN's step).
"""

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def uncovered(conv: nn.Conv, args, kwargs) -> Optional[str]:
  """Why `lower` does not compute this call of `conv` (a kind of layer:
  "grouped convolutions"), or None."""
  del kwargs  # nn.Conv's __call__ takes the inputs only.
  ones = lambda v: v is None or bool(np.all(np.asarray(v) == 1))
  size = np.size(conv.kernel_size)
  reasons = ((size != 2, f"{size}-D convolutions"),
             (conv.feature_group_count != 1, "grouped convolutions"),
             (not ones(conv.strides), "strided convolutions"),
             (not (ones(conv.kernel_dilation) and ones(conv.input_dilation)),
              "dilated convolutions"),
             (not isinstance(conv.padding, str)
              or conv.padding not in ("SAME", "VALID"),
              "convolutions padded other than SAME or VALID"),
             (conv.mask is not None, "masked convolutions"),
             (len(args) != 1 or np.ndim(args[0]) != 4,
              "convolutions of inputs other than [B, H, W, C]"))
  return next((why for failed, why in reasons if failed), None)


def lower(conv: nn.Conv, x):
  """nn.Conv `conv` on x [B, H, W, C] as one matmul over its k x k windows."""
  params = conv.variables["params"]
  x, kernel, bias = nn.dtypes.promote_dtype(
      x, params["kernel"], params.get("bias"), dtype=conv.dtype)
  kh, kw, _, features = kernel.shape
  if conv.padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2),
                    (0, 0)))
  y = _conv(x, kernel.reshape(-1, features), (kh, kw), conv.precision)
  return y if bias is None else y + bias


def _windows(x, size: Tuple[int, int]):
  """x [B, H, W, C] -> its kh x kw windows [B, h, w, kh kw C], taps in the
  kernel's (i, j, c) order."""
  (kh, kw), h, w = size, x.shape[1] - size[0] + 1, x.shape[2] - size[1] + 1
  return jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh)
                          for j in range(kw)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, size, precision):
  """A VALID stride-1 convolution: x [B, H, W, C], kernel [kh kw C, F] ->
  [B, h, w, F]."""
  return jnp.matmul(_windows(x, size), kernel, precision=precision)


def _conv_fwd(x, kernel, size, precision):
  return _conv(x, kernel, size, precision), (x, kernel)


def _conv_bwd(size, precision, res, g):
  """The weight gradient as one matmul over the windows, taken again from x;
  each tap's input gradient added back where its slice was taken."""
  x, kernel = res
  (kh, kw), (_, h, w, f) = size, g.shape
  windows = _windows(x, size)
  dkernel = jax.lax.dot_general(
      windows.reshape(-1, windows.shape[-1]), g.reshape(-1, f),
      (((0,), (0,)), ((), ())), precision=precision)
  dwindows = jnp.matmul(g, kernel.T, precision=precision).reshape(
      *g.shape[:3], kh * kw, x.shape[3])
  dx = jnp.zeros_like(x)
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    dx = dx.at[:, i:i + h, j:j + w].add(dwindows[..., t, :])
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)

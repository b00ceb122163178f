"""Any stock module with its nn.Conv layers computed as matmuls (XLA:CPU).

XLA:CPU's convolution gradients are slow inside a scan (a stock CNN step about
6x slower than this; vmapped members worse). Where no hand-written kernel
computes a module, say a CNN with BatchNorm or an edited one, `Convs` runs the
module itself, every line of it, and only lowers each stride-1 2-D nn.Conv to
shifted slices and one matmul. Its parameter tree is the module's own.
"""

import flax.linen as nn
import jax.numpy as jnp


def _conv(conv: nn.Conv, x):
  """nn.Conv `conv` on x [B, H, W, C] as one matmul over its k x k windows."""
  params = conv.variables["params"]
  x, kernel, bias = nn.dtypes.promote_dtype(
      x, params["kernel"], params.get("bias"), dtype=conv.dtype)
  kh, kw, _, features = kernel.shape
  if conv.padding == "SAME":
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2),
                    (0, 0)))
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  windows = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh)
                             for j in range(kw)], axis=-1)
  y = jnp.matmul(windows, kernel.reshape(-1, features),
                 precision=conv.precision)
  return y if bias is None else y + bias


def _lowers(module: nn.Module) -> bool:
  """Whether `module` is an nn.Conv this file computes (else XLA's conv)."""
  ones = (None, 1, (1, 1))
  return (type(module) is nn.Conv and module.has_variable("params", "kernel")
          and len(module.variables["params"]["kernel"].shape) == 4
          and module.padding in ("SAME", "VALID") and module.strides in ones
          and module.kernel_dilation in ones and module.input_dilation in ones
          and module.feature_group_count == 1 and module.mask is None)


def _intercept(next_fun, args, kwargs, context):
  if context.method_name == "__call__" and _lowers(context.module):
    return _conv(context.module, *args, **kwargs)
  return next_fun(*args, **kwargs)


class Convs(nn.Module):
  """`stock`, its scope shared (the same variables), its convs as matmuls."""
  stock: nn.Module

  def setup(self):
    nn.share_scope(self, self.stock)

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_intercept):
      return self.stock(*args, **kwargs)

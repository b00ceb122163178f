"""flax's nn.Conv computed as one matmul (XLA:CPU), where kernels.Lowered
intercepts it in the module as written.

XLA:CPU's convolution gradients are slow inside a scan (a stock CNN step about
6x slower than this; vmapped members worse). This lowers each stride-1 2-D
nn.Conv to shifted slices and one matmul, with the layer's own parameters.
"""

from typing import Optional

import flax.linen as nn
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
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  windows = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh)
                             for j in range(kw)], axis=-1)
  y = jnp.matmul(windows, kernel.reshape(-1, features),
                 precision=conv.precision)
  return y if bias is None else y + bias

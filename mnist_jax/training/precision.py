"""Compute dtype: a model run in bfloat16 while its parameters, gradients,
optimizer state and loss stay float32 (gradients flow back through the casts).
"""

from typing import Callable

import jax
import jax.numpy as jnp


def cast_floating(tree, dtype):
  """The pytree with its floating-point leaves cast to `dtype`."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def cast_apply(apply_fn: Callable, dtype: str) -> Callable:
  """`apply_fn` casting parameters and input to `dtype` (float32: unchanged)
  and its outputs back to float32."""
  if dtype == "float32":
    return apply_fn
  compute = jnp.dtype(dtype)

  def apply(variables, x, *args, **kwargs):
    out = apply_fn(cast_floating(variables, compute), x.astype(compute),
                   *args, **kwargs)
    return cast_floating(out, jnp.float32)  # Logits, and updated variables.

  return apply

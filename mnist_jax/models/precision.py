"""Compute dtype: run a model in bfloat16 while parameters stay float32.

`cast_apply` wraps a Flax `apply` so the floating parameters and the input are
cast to the compute dtype on the way in and the logits back to float32 on the
way out. Gradients flow back through the casts, so they, the parameters and
the optimizer state stay float32, and the loss is computed in float32.
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
  """`apply_fn` computing in `dtype` (unchanged for float32); float32 logits."""
  if dtype == "float32":
    return apply_fn
  compute = jnp.dtype(dtype)

  def apply(variables, x, *args, **kwargs):
    out = apply_fn(cast_floating(variables, compute), x.astype(compute),
                   *args, **kwargs)
    return cast_floating(out, jnp.float32)  # Logits, and updated variables.

  return apply

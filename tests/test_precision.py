"""--dtype=bfloat16: bfloat16 compute, float32 parameters and optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.data import views
from mnist_jax.training import members
from mnist_jax.training import train

CONFIGS = {"mlp": dict(mlp_hidden=(32,)),
           "cnn": dict(cnn_features=(4, 8), cnn_dense=16),
           "gru": dict(hidden=16), "lstm": dict(hidden=16)}
STEPS, BATCH = 4, 16


def _train(name, dtype):
  config = models.get_config(name, "seed", dtype=dtype, batch_size=BATCH,
                             dropout=0.0, **CONFIGS[name])
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.build(config), STEPS)
  x, y = synthetic_digits(64)
  idx = jnp.arange(STEPS * BATCH, dtype=jnp.int32).reshape(STEPS, BATCH) % 64
  state, sums, _, _ = train.make_train_chunk(config)(
      state, jnp.asarray(x), jnp.asarray(y.astype(np.int32)), idx,
      jnp.ones(STEPS, bool))
  return state, members.host_metrics(sums)


def _dot_operand_dtypes(jaxpr):
  """Operand dtypes of every matmul and convolution, nested jaxprs (scan, jit,
  custom_vjp) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          found += _dot_operand_dtypes(sub)
  return found


def _state(name, dtype, impl="auto"):
  config = models.get_config(name, "seed", dtype=dtype, dropout=0.0, impl=impl,
                             **CONFIGS[name])
  return train.create_train_state(jax.random.PRNGKey(0), config,
                                  models.build(config), STEPS)


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("cnn", "lstm", "gru") else n
    for n in CONFIGS])
def test_bfloat16_computes_in_bfloat16_with_float32_state(name, impl):
  state = _state(name, "bfloat16", impl)
  floats = [leaf for leaf in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)
  x = views.to_view(jnp.zeros((2, 28, 28), jnp.uint8), models.get(name).view)
  apply = lambda p: state.apply_fn({"params": p}, x, train=False)
  assert apply(state.params).dtype == jnp.float32
  dots = _dot_operand_dtypes(jax.make_jaxpr(apply)(state.params).jaxpr)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots
  f32 = _state(name, "float32", impl)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(f32.params))
  assert _dot_operand_dtypes(jax.make_jaxpr(
      lambda p: f32.apply_fn({"params": p}, x, train=False))(f32.params).jaxpr
  ) == [("float32", "float32")] * len(dots)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_bfloat16_training_stays_float32_and_close(name):
  state, metrics = _train(name, "bfloat16")
  floats = [leaf for leaf in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)
  _, reference = _train(name, "float32")
  assert np.isfinite(metrics["loss"])
  assert metrics["loss"] != reference["loss"]
  assert metrics["loss"] == pytest.approx(reference["loss"], abs=0.05)

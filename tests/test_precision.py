"""--dtype=bfloat16: bfloat16 compute, float32 parameters, model state and
optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_digits
from mnist_jax import models
from mnist_jax.training import members
from mnist_jax.training import metrics
from mnist_jax import optim
from mnist_jax.training import train

CONFIGS = {"mlp": dict(mlp_hidden=(32,)),
           "cnn": dict(cnn_features=(4, 8), cnn_dense=16),
           "gru": dict(hidden=16), "lstm": dict(hidden=16)}
STEPS, BATCH = 4, 16


def _state(name, dtype, impl="auto", **overrides):
  config = models.get_config(name, "seed", dtype=dtype, dropout=0.0, impl=impl,
                             batch_size=BATCH, **{**CONFIGS[name], **overrides})
  model, _ = models.build(config, say=lambda _: None)
  create = functools.partial(train.create_train_state, model=model,
                             tx=optim.make_optimizer(config, STEPS),
                             image_shape=(28, 28, 1), dtype=dtype)
  return config, jax.jit(create)(jax.random.key(0))


def _floats(tree):
  return [leaf for leaf in jax.tree.leaves(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating)]


def _train(name, dtype, **overrides):
  config, state = _state(name, dtype, **overrides)
  x, y = synthetic_digits(64)
  order = jnp.arange(STEPS * BATCH, dtype=jnp.int32).reshape(STEPS, BATCH) % 64
  state, sums, _ = jax.jit(train.train_chunk)(
      state, metrics.zeros(num_classes=10), order, jnp.asarray(x),
      jnp.asarray(y.astype(np.int32)), 0, STEPS)
  return state, members.host_metrics(sums)[0]


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


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("cnn", "lstm", "gru") else n
    for n in CONFIGS])
def test_bfloat16_computes_in_bfloat16_with_float32_state(name, impl):
  _, state = _state(name, "bfloat16", impl)
  floats = _floats((state.params, state.opt_state))
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)
  x = jnp.zeros((2, 28, 28, 1), jnp.uint8)  # Raw images: the model scales them.
  apply = lambda p: state.apply_fn({"params": p}, x, train=False)
  assert apply(state.params).dtype == jnp.float32
  dots = _dot_operand_dtypes(jax.make_jaxpr(apply)(state.params).jaxpr)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots
  _, f32 = _state(name, "float32", impl)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(f32.params))
  assert _dot_operand_dtypes(jax.make_jaxpr(
      lambda p: f32.apply_fn({"params": p}, x, train=False))(f32.params).jaxpr
  ) == [("float32", "float32")] * len(dots)


def test_bfloat16_batch_norm_statistics_stay_float32():
  """BatchNorm's running statistics (model_state) are cast in and out as
  the parameters are: float32 after bfloat16 training steps, and moved."""
  _, fresh = _state("cnn", "bfloat16", "stock", cnn_batch_norm=True)
  state, metrics = _train("cnn", "bfloat16", impl="stock", cnn_batch_norm=True)
  stats = state.model_state["batch_stats"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(stats))
  assert all(a.dtype == jnp.float32 for a in _floats(state.opt_state))
  assert not np.allclose(stats["bn_0"]["mean"],
                         fresh.model_state["batch_stats"]["bn_0"]["mean"])
  assert np.isfinite(metrics["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_bfloat16_training_stays_float32_and_close(name):
  state, metrics = _train(name, "bfloat16")
  floats = _floats((state.params, state.opt_state))
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)
  _, reference = _train(name, "float32")
  assert np.isfinite(metrics["loss"])
  assert metrics["loss"] != reference["loss"]
  assert metrics["loss"] == pytest.approx(reference["loss"], abs=0.05)

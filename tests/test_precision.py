"""--dtype=bfloat16: bfloat16 compute, float32 parameters, model state and
optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jaxpr_equations, synthetic_digits
from mnist_jax import models
from mnist_jax import optim
from mnist_jax.training import members
from mnist_jax.training import metrics
from mnist_jax.training import train

CONFIGS = {"mlp": dict(mlp_hidden=(32,)), "gru": dict(hidden=16),
           "cnn": dict(cnn_features=(4, 8), cnn_dense=16, cnn_batch_norm=True)}
STEPS, BATCH = 4, 16


def _trained(name, dtype):
  """(the fresh state, the state after STEPS steps, their loss, the dtypes
  of the matmuls and convolutions of the model's evaluation)."""
  config = models.get_config(name, "seed", dtype=dtype, dropout=0.0,
                             batch_size=BATCH, **CONFIGS[name])
  model, _ = models.build(config, say=lambda _: None)
  state = jax.jit(functools.partial(
      train.create_train_state, model=model, image_shape=(28, 28, 1),
      tx=optim.make_optimizer(config, STEPS), dtype=dtype))(jax.random.key(0))
  x, y = synthetic_digits(64)
  order = jnp.arange(STEPS * BATCH, dtype=jnp.int32).reshape(STEPS, BATCH) % 64
  trained, sums, _ = jax.jit(train.train_chunk)(
      state, metrics.zeros(num_classes=10), order, jnp.asarray(x),
      jnp.asarray(y.astype(np.int32)), 0, STEPS)
  jaxpr = jax.make_jaxpr(lambda v: state.apply_fn(
      v, jnp.zeros((2, 28, 28, 1), jnp.uint8), train=False))(state.variables)
  dots = [tuple(str(v.aval.dtype) for v in e.invars)  # Nested jaxprs too.
          for e, _ in jaxpr_equations(jaxpr.jaxpr)
          if e.primitive.name in ("dot_general", "conv_general_dilated")]
  return state, trained, members.host_metrics(sums)[0]["loss"], dots


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n != "mlp" else n
    for n in CONFIGS])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(name):
  """Every matmul and convolution of the run's module takes bfloat16; the
  state stays float32 through training (and moves); the loss is close to
  float32's, not equal."""
  fresh, state, loss, dots = _trained(name, "bfloat16")
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots
  floats = [leaf for leaf in jax.tree.leaves(
      (state.params, state.opt_state, state.model_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)
  for a, b in zip(jax.tree.leaves(fresh.model_state),
                  jax.tree.leaves(state.model_state)):
    assert not np.allclose(a, b)
  *_, reference, f32_dots = _trained(name, "float32")
  assert f32_dots == [("float32", "float32")] * len(dots)
  assert np.isfinite(loss) and loss != reference
  assert loss == pytest.approx(reference, abs=0.05)

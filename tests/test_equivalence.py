"""Every fast lowering computes the same function as the flax layer it replaces.

Same parameter tree and initial values, same outputs and same gradients (to
float32 tolerance), including dropout draws in training mode.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.models import cnn, recurrence, recurrent

RTOL = 2e-5
ATOL = 2e-6


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(jnp.max(jnp.abs(x))) + 1e-12
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=rtol,
                               atol=atol * max(scale, 1.0))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _loss_and_grads(module, params, x, train):
  """A loss that weighs every output differently, so no gradient cancels."""
  def loss(p):
    y = module.apply(p, x, train=train, rngs={"dropout": jax.random.PRNGKey(7)})
    w = jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape)
    return jnp.sum(jnp.sin(y) * w), y
  (value, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, y, grads


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional,dropout,train", [
    (1, False, 0.0, False),
    (2, True, 0.3, True),
])
def test_recurrent_fast_matches_flax(cell, num_layers, bidirectional, dropout,
                                     train):
  kw = dict(cell=cell, hidden=8, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout)
  ref = recurrent.Recurrent(impl="flax", **kw)
  fast = recurrent.Recurrent(impl="fast", **kw)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6, 5))
  params = ref.init(jax.random.PRNGKey(0), x)
  _assert_trees_equal(params, fast.init(jax.random.PRNGKey(0), x))
  v_ref, y_ref, g_ref = _loss_and_grads(ref, params, x, train)
  v_fast, y_fast, g_fast = _loss_and_grads(fast, params, x, train)
  np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(float(v_fast), float(v_ref), rtol=RTOL, atol=ATOL)
  _assert_trees_close(g_ref, g_fast)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("steps,features", [(1, 3), (13, 1)])
def test_recurrence_layer_matches_flax_rnn_any_length(cell, steps, features):
  """One layer, both directions, against nn.RNN: every output step and the
  gradients with respect to the inputs as well as the parameters."""
  hidden = 6
  x = jax.random.normal(jax.random.PRNGKey(2), (3, steps, features))
  for reverse in (False, True):
    ref = nn.RNN(recurrence.FLAX_CELLS[cell](hidden), reverse=reverse,
                 keep_order=True)
    variables = ref.init(jax.random.PRNGKey(3), x)
    cell_params = variables["params"]["cell"]

    def fast_apply(p, x, reverse=reverse):
      fused = recurrence.CellParams(cell, features, hidden).apply(
          {"params": p})
      return jnp.swapaxes(recurrence.rnn_layer(
          cell, fused, jnp.swapaxes(x, 0, 1), reverse=reverse), 0, 1)

    def ref_apply(p, x):
      return ref.apply({"params": {"cell": p}}, x)

    np.testing.assert_allclose(np.asarray(fast_apply(cell_params, x)),
                               np.asarray(ref_apply(cell_params, x)),
                               rtol=RTOL, atol=ATOL)
    w = jax.random.normal(jax.random.PRNGKey(4), (3, steps, hidden))
    g_ref = jax.grad(lambda p, x: jnp.sum(ref_apply(p, x) * w),
                     argnums=(0, 1))(cell_params, x)
    g_fast = jax.grad(lambda p, x: jnp.sum(fast_apply(p, x) * w),
                      argnums=(0, 1))(cell_params, x)
    _assert_trees_close(g_ref, g_fast)


def test_recurrence_second_order_is_not_silently_wrong():
  """custom_vjp has no JVP rule: forward-mode use must fail loudly."""
  x = jnp.ones((2, 1, 3))
  wi, wh = jnp.ones((3, 4)), jnp.ones((4, 4))
  with pytest.raises(TypeError):
    jax.jvp(lambda w: recurrence.recurrence("rnn", x, wi, jnp.zeros(4), w,
                                            jnp.zeros(4), (jnp.zeros((1, 4)),),
                                            True),
            (wh,), (wh,))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("cin,size", [(1, 28), (3, 9), (32, 13)])
def test_patch_conv_matches_nn_conv(padding, cin, size):
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, size, size, cin))
  ref = nn.Conv(8, (3, 3), padding=padding)
  fast = cnn.PatchConv(8, padding=padding)
  params = ref.init(jax.random.PRNGKey(1), x)
  _assert_trees_equal(params, fast.init(jax.random.PRNGKey(1), x))
  np.testing.assert_allclose(np.asarray(fast.apply(params, x)),
                             np.asarray(ref.apply(params, x)), rtol=RTOL,
                             atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), ref.apply(params, x).shape)
  grads = [jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * w),
                    argnums=(0, 1))(params, x) for m in (ref, fast)]
  _assert_trees_close(*grads)


def test_conv3x3_cfirst_matches_nn_conv():
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 13, 13, 5))
  ref = nn.Conv(7, (3, 3), padding="VALID")
  params = ref.init(jax.random.PRNGKey(1), x)

  def fast(p, x):
    y = cnn.conv3x3_cfirst(jnp.transpose(x, (3, 1, 2, 0)),
                           p["params"]["kernel"], p["params"]["bias"])
    return jnp.transpose(y, (3, 1, 2, 0))

  np.testing.assert_allclose(np.asarray(fast(params, x)),
                             np.asarray(ref.apply(params, x)), rtol=RTOL,
                             atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 11, 11, 7))
  grads = [jax.grad(lambda p, x, f=f: jnp.sum(f(p, x) * w), argnums=(0, 1))(
      params, x) for f in (ref.apply, fast)]
  _assert_trees_close(*grads)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("cin,height,width", [
    (1, 28, 28), (3, 9, 12), (4, 7, 8),    # pool-phase lowering (few channels)
    (5, 13, 13), (32, 13, 13), (8, 12, 9)])  # cropped patch matmul
def test_conv3x3_relu_pool_cfirst_matches_flax(padding, cin, height, width):
  """Against nn.max_pool(relu(nn.Conv(x))): outputs and the gradients with
  respect to kernel, bias and input, on odd and even sizes (odd conv outputs
  leave a row and column the pool drops, which the lowering never computes)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, height, width, cin))
  conv = nn.Conv(7, (3, 3), padding=padding)
  params = conv.init(jax.random.PRNGKey(1), x)["params"]
  params = dict(params, bias=jax.random.normal(jax.random.PRNGKey(3), (7,)))

  def ref(p, x):
    y = nn.relu(conv.apply({"params": p}, x))
    return nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")

  def fast(p, x):
    y = cnn.conv3x3_relu_pool_cfirst(jnp.transpose(x, (3, 1, 2, 0)),
                                     p["kernel"], p["bias"], padding=padding)
    return jnp.transpose(y, (3, 1, 2, 0))

  y_ref = ref(params, x)
  np.testing.assert_allclose(np.asarray(fast(params, x)), np.asarray(y_ref),
                             rtol=RTOL, atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
  grads = [jax.grad(lambda p, x, f=f: jnp.sum(f(p, x) * w), argnums=(0, 1))(
      params, x) for f in (ref, fast)]
  _assert_trees_close(*grads)


@pytest.mark.parametrize("cin,height,width", [(32, 12, 12), (6, 8, 14)])
def test_winograd_conv_pool_matches_patch_conv(cin, height, width):
  """The Winograd conv + pool (and its hand-written gradient) against the
  patch-matmul conv and reshape-max pool, with zero regions that make exact
  ties: zero tiles transform to exact zeros, so the tied outputs stay tied and
  the first maximum of each window takes the gradient, as nn.max_pool's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (cin, height, width, 3))
  x = x.at[:, :4].set(0.0).at[:, :, -4:].set(0.0)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, 5))
  ref = lambda x, k: cnn.max_pool_2x2_cfirst(cnn.conv3x3_cfirst(x, k))
  y_ref = ref(x, kernel)
  np.testing.assert_allclose(np.asarray(cnn._winograd_conv_pool(x, kernel)),
                             np.asarray(y_ref), rtol=RTOL, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))(
      x, kernel) for f in (ref, cnn._winograd_conv_pool)]
  _assert_trees_close(*grads, atol=1e-5)


def test_window_taps_transpose_is_the_transpose():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 12, 2))
  taps = jax.random.normal(jax.random.PRNGKey(1), (16, 3, 4, 5, 2))
  _, vjp = jax.vjp(lambda x: cnn._window_taps(x, 4, 5), x)
  np.testing.assert_allclose(np.asarray(cnn._window_taps_transpose(taps)),
                             np.asarray(vjp(taps)[0]), rtol=1e-6, atol=1e-6)


def test_dense_cfirst_matches_flatten_then_dense():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 4, 5))  # [C, H, W, B]
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3 * 4 * 6, 7))
  flat = lambda x, k: jnp.transpose(x, (3, 1, 2, 0)).reshape(5, -1) @ k
  np.testing.assert_allclose(np.asarray(cnn.dense_cfirst(x, kernel)),
                             np.asarray(flat(x, kernel)), rtol=RTOL, atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), (5, 7))
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))(
      x, kernel) for f in (flat, cnn.dense_cfirst)]
  _assert_trees_close(*grads)


def test_conv3x3_relu_pool_cfirst_rejects_bad_arguments():
  x = jnp.zeros((1, 8, 8, 2))
  with pytest.raises(ValueError, match="3x3"):
    cnn.conv3x3_relu_pool_cfirst(x, jnp.zeros((5, 5, 1, 4)), jnp.zeros(4))
  with pytest.raises(ValueError, match="VALID or SAME"):
    cnn.conv3x3_relu_pool_cfirst(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros(4),
                                 padding="FULL")


@pytest.mark.parametrize("shape", [(2, 26, 26, 4), (3, 11, 11, 2), (1, 5, 7, 3)])
def test_max_pool_matches_nn_max_pool(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(np.asarray(cnn.max_pool_2x2(x)),
                                np.asarray(ref(x)))
  cfirst = jnp.transpose(cnn.max_pool_2x2_cfirst(jnp.transpose(x, (3, 1, 2, 0))),
                         (3, 1, 2, 0))
  np.testing.assert_array_equal(np.asarray(cfirst), np.asarray(ref(x)))
  w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  ref_grad = np.asarray(jax.grad(lambda x: jnp.sum(ref(x) * w))(x))
  np.testing.assert_allclose(
      np.asarray(jax.grad(lambda x: jnp.sum(cnn.max_pool_2x2(x) * w))(x)),
      ref_grad, rtol=RTOL, atol=ATOL)
  cfirst_pool = lambda x: jnp.transpose(
      cnn.max_pool_2x2_cfirst(jnp.transpose(x, (3, 1, 2, 0))), (3, 1, 2, 0))
  np.testing.assert_allclose(
      np.asarray(jax.grad(lambda x: jnp.sum(cfirst_pool(x) * w))(x)),
      ref_grad, rtol=RTOL, atol=ATOL)


class _ReferenceCNN(nn.Module):
  """The seed CNN written with stock flax layers (nn.Conv, nn.max_pool)."""
  features: tuple = (32, 64)
  dense: int = 128
  dropout: float = 0.0
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.features):
      x = nn.relu(nn.Conv(width, (3, 3), padding=self.padding, name=f"conv_{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, name="dense")(x))
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(10, name="out")(x)


@pytest.mark.parametrize("layout", ["cfirst", "nhwc"])
@pytest.mark.parametrize("features,padding,dropout,train", [
    ((4, 8), "VALID", 0.0, False),
    ((4, 8), "VALID", 0.25, True),
    ((4, 8, 16), "SAME", 0.25, True),  # the shape of the `best` preset
    ((8, 8), "VALID", 0.0, False),  # conv2 by Winograd, as in the seed CNN
])
def test_cnn_matches_stock_flax_cnn(layout, features, padding, dropout, train):
  """Includes MNIST-like inputs: a zero border makes exact ties in the pools,
  where any pooling gradient rule must give the same parameter gradients."""
  ref = _ReferenceCNN(features=features, dense=16, dropout=dropout,
                      padding=padding)
  fast = cnn.CNN(features=features, dense=16, dropout=dropout, layout=layout,
                 padding=padding)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
  x = x.at[:, :5].set(0.0).at[:, :, -6:].set(0.0)
  params = ref.init(jax.random.PRNGKey(1), x)
  _assert_trees_equal(params, fast.init(jax.random.PRNGKey(1), x))
  v_ref, y_ref, g_ref = _loss_and_grads(ref, params, x, train)
  v_fast, y_fast, g_fast = _loss_and_grads(fast, params, x, train)
  np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL)
  _assert_trees_close(g_ref, g_fast)


@pytest.mark.parametrize("features,shape", [
    ((4, 8, 8), (31, 29)),  # Three VALID layers: the input is cropped to 30x22.
    ((4,), (9, 8)),  # One layer: the odd row is the pool's, nothing to crop.
])
def test_cnn_valid_crop_matches_stock_flax_cnn(features, shape):
  """The cfirst CNN crops the input to the rows and columns its VALID
  conv-pool stack reads; outputs and gradients stay those of the full input."""
  ref = _ReferenceCNN(features=features, dense=16)
  fast = cnn.CNN(features=features, dense=16)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, *shape, 1))
  params = ref.init(jax.random.PRNGKey(1), x)
  _, y_ref, g_ref = _loss_and_grads(ref, params, x, False)
  _, y_fast, g_fast = _loss_and_grads(fast, params, x, False)
  np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL)
  _assert_trees_close(g_ref, g_fast)

"""Every kernel computes the same function as the stock module it replaces,
and every lowering the flax layer it computes (kernels.Lowered runs the
module as written, its layers lowered).

Same parameter tree and initial values, same outputs and same gradients (to
float32 tolerance), including dropout draws in training mode. Both take raw
images [B, H, W, C] on the 0-255 scale. (kernels.swap checks this again at a
run's start, on one batch of the run's own shapes: tests/test_kernels.py.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.models import cnn
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_matmul
from mnist_jax.models.kernels import conv_pool
from mnist_jax.models.kernels import fused_rnn
from mnist_jax.models.kernels import lowered

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


def _assert_same_function(ref, fast, params, x):
  """fast(params, x) against ref's: outputs, and the gradients of a random
  weighting of them with respect to params and x."""
  y_ref = ref(params, x)
  np.testing.assert_allclose(np.asarray(fast(params, x)), np.asarray(y_ref),
                             rtol=RTOL, atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
  grads = [jax.grad(lambda p, x, f=f: jnp.sum(f(p, x) * w), argnums=(0, 1))(
      params, x) for f in (ref, fast)]
  _assert_trees_close(*grads)


def _loss_and_grads(module, params, x, train):
  """A loss that weighs every output differently, so no gradient cancels."""
  def loss(p):
    y = module.apply(p, x, train=train, rngs={"dropout": jax.random.PRNGKey(7)})
    w = jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape)
    return jnp.sum(jnp.sin(y) * w), y
  (value, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, y, grads


def _assert_drop_in(stock, kernel, x, train):
  """Same parameter tree from the same key; close outputs and gradients."""
  params = stock.init(jax.random.PRNGKey(1), x)
  _assert_trees_equal(params, kernel.init(jax.random.PRNGKey(1), x))
  v_ref, y_ref, g_ref = _loss_and_grads(stock, params, x, train)
  v_fast, y_fast, g_fast = _loss_and_grads(kernel, params, x, train)
  np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_ref), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(float(v_fast), float(v_ref), rtol=RTOL, atol=ATOL)
  _assert_trees_close(g_ref, g_fast)


def _pixels(key, shape):
  """Random images [B, H, W, C] on the 0-255 scale (float, unrounded)."""
  return jax.random.uniform(key, shape) * 255.0


def _dyadic(tree, scale):
  """Every leaf rounded to a multiple of 1 / scale."""
  return jax.tree.map(lambda a: jnp.round(a * scale) / scale, tree)


def _cfirst(f):
  """f on [C, H, W, B] arrays as a function of [B, H, W, C] arrays."""
  return lambda x, *args, **kw: jnp.transpose(
      f(jnp.transpose(x, (3, 1, 2, 0)), *args, **kw), (3, 1, 2, 0))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional,dropout,train,sequence", [
    (1, False, 0.0, False, "rows"),
    pytest.param(2, True, 0.3, True, "rows", marks=pytest.mark.slow),
    pytest.param(2, True, 0.0, True, "permuted", marks=pytest.mark.slow),
])
def test_fused_recurrent_matches_stock(cell, num_layers, bidirectional, dropout,
                                       train, sequence):
  kw = dict(cell=cell, hidden=8, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout, sequence=sequence,
            permute_seed=3)
  x = _pixels(jax.random.PRNGKey(1), (4, 6, 5, 1))
  stock = recurrent.Recurrent(**kw)
  _assert_drop_in(stock, lowered.Lowered(stock), x, train)


@pytest.mark.slow
def test_fused_recurrent_reads_pixel_sequences_as_stock():
  """784 steps of one pixel (sequential MNIST), in order."""
  stock = recurrent.Recurrent(cell="gru", hidden=4, sequence="pixels")
  x = _pixels(jax.random.PRNGKey(2), (2, 28, 28, 1))
  _assert_drop_in(stock, lowered.Lowered(stock), x, False)


class _Carried(nn.Module):
  """nn.RNN given its initial carry, a learned one (its gradient included)."""
  cell: type

  @nn.compact
  def __call__(self, x, train=False):
    cell = self.cell(6)
    learned = self.param("carry", nn.initializers.normal(1.0), (6,))
    carry = jax.tree.map(lambda c: c + learned, cell.initialize_carry(
        jax.random.key(0), x[:, 0].shape))
    return nn.RNN(cell)(x, initial_carry=carry)


@pytest.mark.parametrize("cell", [
    "rnn", pytest.param("lstm", marks=pytest.mark.slow),
    pytest.param("gru", marks=pytest.mark.slow), "LSTMCell"])
@pytest.mark.parametrize("steps,features", [
    (1, 3), pytest.param(13, 1, marks=pytest.mark.slow)])
def test_fused_layer_matches_flax_rnn_any_length(cell, steps, features):
  """One nn.RNN layer, each direction and order, its initial carry given or
  its cell's: every output step and the gradients with respect to the
  inputs, the parameters and a learned initial carry."""
  cell = recurrent.CELLS.get(cell) or getattr(nn, cell)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, steps, features))
  w = jax.random.normal(jax.random.PRNGKey(4), (3, steps, 6))
  for ref in [nn.RNN(cell(6), reverse=reverse, keep_order=keep)
              for reverse, keep in ((False, False), (True, True), (True, False))
              ] + [_Carried(cell)]:
    fast = lowered.Lowered(ref)
    params = ref.init(jax.random.PRNGKey(3), x)
    assert jax.tree.map(np.shape, fast.init(jax.random.PRNGKey(3), x)) == (
        jax.tree.map(np.shape, params))
    np.testing.assert_allclose(np.asarray(fast.apply(params, x)),
                               np.asarray(ref.apply(params, x)),
                               rtol=RTOL, atol=ATOL)
    grads = [jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * w),
                      argnums=(0, 1))(params, x) for m in (ref, fast)]
    _assert_trees_close(*grads)
    lowered_calls = str(jax.make_jaxpr(fast.apply)(params, x))
    assert "custom_vjp" in lowered_calls, ref


def test_fused_recurrence_second_order_is_not_silently_wrong():
  """custom_vjp has no JVP rule: forward-mode use must fail loudly."""
  x = jnp.ones((2, 1, 3))
  wi, wh = jnp.ones((3, 4)), jnp.ones((4, 4))
  with pytest.raises(TypeError):
    jax.jvp(lambda w: fused_rnn.recurrence("rnn", x, wi, jnp.zeros(4), w,
                                           jnp.zeros(4), (jnp.zeros((1, 4)),)),
            (wh,), (wh,))


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("padding", ["SAME", pytest.param("VALID", marks=_SLOW)])
@pytest.mark.parametrize("cin,height,width", [
    (1, 28, 28),  # pool-phase (few channels)
    pytest.param(32, 13, 13, marks=_SLOW),  # Winograd
    pytest.param(2, 9, 10, marks=_SLOW)])  # odd sizes
def test_conv_relu_pool_matches_flax(padding, cin, height, width):
  """Against nn.max_pool(relu(nn.Conv(x))): outputs and the gradients with
  respect to kernel, bias and input, on odd and even sizes (odd conv outputs
  leave a row and column the pool drops, which the kernel never computes).

  Inputs and parameters are multiples of 1/4 and 1/64, so both lowerings sum
  exactly: two pool candidates a rounding apart would otherwise let them pick
  different maxima, and exact ties test that the first maximum takes the
  gradient.
  """
  x = _dyadic(jax.random.normal(jax.random.PRNGKey(0), (3, height, width, cin)), 4)
  conv = nn.Conv(7, (3, 3), padding=padding)
  params = conv.init(jax.random.PRNGKey(1), x)["params"]
  params = _dyadic(dict(params, bias=jax.random.normal(jax.random.PRNGKey(3), (7,))),
                   64)

  def ref(p, x):
    y = nn.relu(conv.apply({"params": p}, x))
    return nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")

  def fast(p, x):
    return _cfirst(conv_pool.conv_relu_pool)(x, p["kernel"], p["bias"],
                                             padding=padding)

  _assert_same_function(ref, fast, params, x)


@pytest.mark.parametrize("cin,height,width", [
    (32, 12, 12), pytest.param(6, 8, 14, marks=pytest.mark.slow)])
def test_winograd_conv_pool_matches_flax(cin, height, width):
  """The Winograd conv + pool (and its hand-written gradient) against nn.Conv
  and nn.max_pool, with zero regions that make exact ties: zero tiles
  transform to exact zeros, so the tied outputs stay tied and the first
  maximum of each window takes the gradient, as nn.max_pool's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, height, width, cin))
  x = x.at[:, :4].set(0.0).at[:, :, -4:].set(0.0)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, 5))
  conv = nn.Conv(5, (3, 3), padding="VALID", use_bias=False)
  ref = lambda x, k: nn.max_pool(conv.apply({"params": {"kernel": k}}, x),
                                 (2, 2), strides=(2, 2))
  fast = _cfirst(conv_pool.winograd_conv_pool)
  y_ref = ref(x, kernel)
  np.testing.assert_allclose(np.asarray(fast(x, kernel)), np.asarray(y_ref),
                             rtol=RTOL, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))(
      x, kernel) for f in (ref, fast)]
  _assert_trees_close(*grads, atol=1e-5)


@pytest.mark.parametrize("size,padding,cin,use_bias", [
    ((3, 3), "SAME", 1, True), ((5, 2), "VALID", 3, False),
    pytest.param((1, 4), "SAME", 2, True, marks=_SLOW)])
def test_conv_matmul_matches_flax_conv_and_its_gradients(size, padding, cin,
                                                         use_bias):
  """conv_matmul.lower (a matmul over the windows, with its own backward)
  against nn.Conv: outputs and the gradients with respect to kernel, bias
  and input, for square and oblong kernels, even and odd."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, cin))
  conv = nn.Conv(4, size, padding=padding, use_bias=use_bias)
  params = conv.init(jax.random.PRNGKey(1), x)["params"]
  if use_bias:
    params = dict(params, bias=jax.random.normal(jax.random.PRNGKey(3), (4,)))
  ref = lambda p, x: conv.apply({"params": p}, x)
  fast = lambda p, x: conv.apply({"params": p}, x,
                                 method=lambda c, x: conv_matmul.lower(c, x))
  _assert_same_function(ref, fast, params, x)


@pytest.mark.parametrize("height,width", [(26, 26), (11, 11), (9, 14)])
def test_the_cnns_max_pool_is_flaxs_with_ties_sharing_the_gradient(height,
                                                                  width):
  """cnn.max_pool_2x2 against nn.max_pool (VALID, odd sizes dropping a row
  and column): the same maxima and, without ties, the same gradient, both
  exactly. A tie shares its window's gradient (nn.max_pool gives it all to
  the first maximum): the same sum per window."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, height, width, 3))
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  grad = lambda f, x: jax.grad(lambda x: jnp.sum(f(x) * w))(x)
  np.testing.assert_array_equal(cnn.max_pool_2x2(x), ref(x))
  np.testing.assert_array_equal(grad(cnn.max_pool_2x2, x), grad(ref, x))
  # Windows whose four values are all 0 (a quarter of them): 4-way ties.
  tied = jnp.zeros_like(x).at[:, :, 1::2].set(jnp.maximum(x[:, :, 1::2], 0))
  shared, first = grad(cnn.max_pool_2x2, tied), grad(ref, tied)
  assert not np.array_equal(shared, first)  # The ties were met.
  window_sums = lambda g: nn.avg_pool(g, (2, 2), strides=(2, 2))
  np.testing.assert_allclose(window_sums(shared), window_sums(first),
                             rtol=1e-6)


def test_window_taps_are_the_stride_2_windows_in_tap_order():
  # Tap 4r + s of window (t, u) is x[:, 2t + r, 2u + s]: the order the
  # kernels' weights and Winograd matrices assume.
  x = np.random.default_rng(0).standard_normal((3, 11, 13, 2), np.float32)
  taps = np.asarray(conv_pool._window_taps(jnp.asarray(x), 4, 5))
  expected = np.stack([x[:, r:r + 8:2, s:s + 10:2]
                       for r in range(4) for s in range(4)])
  np.testing.assert_array_equal(taps, expected)


@pytest.mark.slow
def test_window_taps_transpose_is_the_transpose():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 12, 2))
  taps = jax.random.normal(jax.random.PRNGKey(1), (16, 3, 4, 5, 2))
  _, vjp = jax.vjp(lambda x: conv_pool._window_taps(x, 4, 5), x)
  np.testing.assert_allclose(np.asarray(conv_pool.window_taps_transpose(taps)),
                             np.asarray(vjp(taps)[0]), rtol=1e-6, atol=1e-6)


def test_dense_cfirst_matches_flatten_then_dense():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 4, 5))  # [C, H, W, B]
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3 * 4 * 6, 7))
  flat = lambda x, k: jnp.transpose(x, (3, 1, 2, 0)).reshape(5, -1) @ k
  np.testing.assert_allclose(np.asarray(conv_pool.dense_cfirst(x, kernel)),
                             np.asarray(flat(x, kernel)), rtol=RTOL, atol=ATOL)
  w = jax.random.normal(jax.random.PRNGKey(2), (5, 7))
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))(
      x, kernel) for f in (flat, conv_pool.dense_cfirst)]
  _assert_trees_close(*grads)


@pytest.mark.parametrize("features,kernel_size,padding,dropout,train", [
    pytest.param((4, 8), 3, "VALID", 0.25, True, marks=pytest.mark.slow),
    pytest.param((4, 8, 16), 3, "SAME", 0.25, True,  # the `best` preset's shape
                 marks=pytest.mark.slow),
    pytest.param((8, 8), 3, "VALID", 0.0, False,  # conv2 by Winograd, as in seed
                 marks=pytest.mark.slow),
])
def test_conv_pool_cnn_matches_stock(features, kernel_size, padding, dropout,
                                     train):
  """Includes MNIST-like inputs: a zero border makes exact ties in the pools,
  where any pooling gradient rule must give the same parameter gradients."""
  kw = dict(features=features, kernel_size=kernel_size, dense=16,
            dropout=dropout, padding=padding)
  x = _pixels(jax.random.PRNGKey(0), (3, 28, 28, 1))
  x = x.at[:, :5].set(0.0).at[:, :, -6:].set(0.0)
  _assert_drop_in(cnn.CNN(**kw), conv_pool.CNN(**kw), x, train)


@pytest.mark.slow
@pytest.mark.parametrize("features,kernel_size,shape", [
    ((4, 8, 8), 3, (31, 29)),  # Three VALID layers: the input is cropped to 30x22.
    ((4,), 3, (9, 8)),  # One layer: the odd row is the pool's, nothing to crop.
    ((4, 8), 3, (30, 27)),
])
def test_conv_pool_cnn_valid_crop_matches_stock(features, kernel_size, shape):
  """The kernel crops the input to the rows and columns its VALID conv-pool
  stack reads; outputs and gradients stay those of the full input."""
  kw = dict(features=features, kernel_size=kernel_size, dense=16)
  x = _pixels(jax.random.PRNGKey(2), (2, *shape, 1))
  _assert_drop_in(cnn.CNN(**kw), conv_pool.CNN(**kw), x, False)

"""flax's nn.RNN over a SimpleCell, LSTM cell or GRUCell, computed from the
cell's own parameters by a fused recurrence (kernels.Lowered intercepts it in
the module as written), for CPU, where a scanned flax cell runs many small ops
per step. Here a step's gates are one [B, H] x [H, G*H] matmul, and the
hand-written backward pass does one matmul and one elementwise pass per step,
the kernel gradients once over all steps. T steps, B batch, F inputs, H hidden,
G gates (rnn 1; lstm 4: i, f, g, o; gru 3: r, z, n).
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Per flax cell: its kind (see _cell_step), then its input-side and hidden-side
# Dense layers in gate order, as the cell names them.
_CELLS = {
    nn.SimpleCell: ("rnn", ("i",), ("h",)),
    nn.OptimizedLSTMCell: ("lstm", ("ii", "if", "ig", "io"),
                           ("hi", "hf", "hg", "ho")),
    nn.LSTMCell: ("lstm", ("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho")),
    nn.GRUCell: ("gru", ("ir", "iz", "in"), ("hr", "hz", "hn")),
}
# nn.RNN's settings the recurrence computes (its reverse and keep_order: any).
_SETTINGS = {"time_major": False, "return_carry": False, "unroll": 1,
             "variable_axes": {}, "variable_broadcast": "params",
             "variable_carry": False, "split_rngs": {"params": False}}


def _cell_step(kind, carry, xt, a):
  """One step from the x- and h-projections xt, a [B, G*H] -> (new carry,
  saved): the local derivative factors the backward step multiplies, each
  [B, H] (a concatenation would be copied once more every step): lstm
  dc/d(pre-activation) of i, f, g, dh/d(pre-activation) of o, dh/dc,
  dc/dc_prev (= f); gru dh/d(pre-activation) of r, z and the h-side n, of the
  x-side n, dh/dh_prev through z (= z)."""
  if kind == "rnn":
    return (jnp.tanh(xt + a),), ()
  if kind == "lstm":
    # One tanh over all 4H pre-activations (sigmoid(x) = (1 + tanh(x/2)) / 2):
    # one expensive elementwise op per step, in one XLA:CPU fusion.
    hidden = xt.shape[-1] // 4
    half = jnp.full((hidden,), 0.5, xt.dtype)
    scale = jnp.concatenate([half, half, jnp.ones_like(half), half])
    t = jnp.tanh((xt + a) * scale)
    ti, tf, g, to = jnp.split(t, 4, axis=-1)
    i, f, o = 0.5 * ti + 0.5, 0.5 * tf + 0.5, 0.5 * to + 0.5
    c_prev = carry[0]
    c = f * c_prev + i * g
    tc = jnp.tanh(c)
    return (c, o * tc), (g * i * (1.0 - i), c_prev * f * (1.0 - f),
                         i * (1.0 - g * g), tc * o * (1.0 - o),
                         o * (1.0 - tc * tc), f)
  h = carry[0]
  hidden = h.shape[-1]
  # r and z from one tanh over their 2H pre-activations, as for the lstm.
  r, z = jnp.split(0.5 * jnp.tanh(0.5 * (xt[:, :2 * hidden] +
                                         a[:, :2 * hidden])) + 0.5, 2, -1)
  hn = a[:, 2 * hidden:]
  n = jnp.tanh(xt[:, 2 * hidden:] + r * hn)
  dn = (1.0 - z) * (1.0 - n * n)
  return ((1.0 - z) * n + z * h,), (dn * hn * r * (1.0 - r),
                                    (h - n) * z * (1.0 - z), dn * r, dn, z)


def _forward(kind, x, wi, bi, wh, bh, carry0, save):
  # The input projection stays in the loop: on XLA:CPU reading a step of a
  # hoisted [T, B, G*H] projection ran slower than a fresh matmul result.
  def body(carry, xt):
    new, saved = _cell_step(kind, carry, xt @ wi + bi, carry[-1] @ wh + bh)
    return new, (new[-1], saved) if save else new[-1]
  return jax.lax.scan(body, carry0, x)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(kind: str, x, wi, bi, wh, bh, carry0):
  """Runs cell `kind` over time-major x [T, B, F] from carry0 ((h,), or (c, h)
  for lstm, each [B, H]) with fused parameters (wi [F, G*H], bi [G*H], wh
  [H, G*H], bh [G*H]): every step's hidden state, batch-major [B, T, H]."""
  return jnp.swapaxes(_forward(kind, x, wi, bi, wh, bh, carry0, save=False),
                      0, 1)


def _recurrence_fwd(kind, x, wi, bi, wh, bh, carry0):
  hs, saved = _forward(kind, x, wi, bi, wh, bh, carry0, save=True)
  return jnp.swapaxes(hs, 0, 1), (x, wi, wh, carry0, hs, saved)


def _recurrence_bwd(kind, res, dhs):
  x, wi, wh, carry0, hs, saved = res
  hidden = wh.shape[0]
  h_prev = jnp.concatenate([carry0[-1][None], hs[:-1]], axis=0)
  wht = wh.T

  def body(carry, inp):
    # Each step reads its column of the batch-major dhs [B, T, H]: made
    # time-major first, a cotangent that is zero but at one step (a model
    # reading the last state) cost a padded transpose and a copy.
    t, s = inp
    dh = carry[-1] + jax.lax.dynamic_index_in_dim(dhs, t, 1, keepdims=False)
    if kind == "rnn":  # s: the step's hidden state.
      da = dh * (1.0 - s * s)
      return (da @ wht,), da
    if kind == "lstm":
      dc = carry[0] + dh * s[4]
      da = jnp.concatenate([dc * s[0], dc * s[1], dc * s[2], dh * s[3]], -1)
      return (dc * s[5], da @ wht), da
    da = jnp.concatenate([dh * s[0], dh * s[1], dh * s[2]], -1)
    return (dh * s[4] + da @ wht,), (da, dh * s[3])

  dcarry0, out = jax.lax.scan(
      body, tuple(jnp.zeros_like(c) for c in carry0),
      (jnp.arange(len(x)), hs if kind == "rnn" else saved), reverse=True)
  # Each side's kernel and bias gradients from one matmul over its inputs
  # and a column of ones (rnn and lstm: both sides in one): on a mesh XLA
  # sums each gradient array over the devices, and XLA:CPU's all-reduce
  # synchronises them once per array (tens of microseconds each).
  ones = jnp.ones(x.shape[:2] + (1,), x.dtype)
  if kind == "gru":
    da, dan = out
    dxp = jnp.concatenate([da[..., :2 * hidden], dan], axis=-1)
    gi = _over_steps(jnp.concatenate([x, ones], -1), dxp)
    gh = _over_steps(jnp.concatenate([h_prev, ones], -1), da)
    dwi, dbi, dwh, dbh = gi[:-1], gi[-1], gh[:-1], gh[-1]
  else:
    da = dxp = out
    g = _over_steps(jnp.concatenate([x, h_prev, ones], -1), da)
    dwi, dwh, dbi = g[:x.shape[-1]], g[x.shape[-1]:-1], g[-1]
    dbh = dbi
  dx = jnp.einsum("tbg,fg->tbf", dxp, wi)  # Dropped by XLA when x is data.
  return (dx, dwi, dbi, dwh, dbh, dcarry0)


def _over_steps(inputs, cotangent):
  """[T, B, K] x [T, B, N] -> [K, N], summed over (t, b) in the order the
  arrays lie: contracting (b, t), as einsum does, made XLA:CPU copy them
  batch-major first; reshaped to [T*B, .] it ran slower on two sharded CPU
  devices."""
  return jax.lax.dot_general(inputs, cotangent, (((0, 1), (0, 1)), ((), ())))


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def uncovered(layer: nn.RNN, args, kwargs) -> Optional[str]:
  """Why `lower` does not compute this call of `layer` (a kind of layer:
  "nn.RNN over a remat cell"), or None. It takes the cells above with their
  default gate and activation functions, inputs [B, T, F], and nn.RNN's
  default settings but reverse and keep_order."""
  cell = layer.cell
  if type(cell) not in _CELLS:  # nn.remat's cells are subclasses.
    return f"nn.RNN over {type(cell).__name__}"
  if (cell.activation_fn is not nn.tanh or getattr(cell, "residual", False)
      or getattr(cell, "gate_fn", nn.sigmoid) is not nn.sigmoid):
    return f"nn.RNN over {type(cell).__name__} with other functions"
  calls = {k: v for k, v in kwargs.items() if v is not None and k not in (
      "initial_carry", "init_key", "reverse", "keep_order")}
  other = sorted(k for k, v in {**{k: getattr(layer, k) for k in _SETTINGS},
                                **calls}.items()
                 if k not in _SETTINGS or _SETTINGS[k] != v)
  if other:
    return f"nn.RNN with {', '.join(other)}"
  if len(args) != 1 or jnp.ndim(args[0]) != 3:
    return "nn.RNN over inputs other than [B, T, F]"
  return None


def _fused(params, names):
  """The cell's Dense layers `names` as one kernel [in, G*H] and one bias
  [G*H] (zeros for a layer without one)."""
  kernels = [params[name]["kernel"] for name in names]
  return jnp.concatenate(kernels, axis=-1), jnp.concatenate([
      params[name].get("bias", jnp.zeros(k.shape[-1:], k.dtype))
      for name, k in zip(names, kernels)])


def lower(layer: nn.RNN, inputs, *, initial_carry=None, init_key=None,
          reverse=None, keep_order=None, **_):
  """nn.RNN `layer` on inputs [B, T, F] -> [B, T, H] as flax computes it (a
  call `uncovered` passes), from its cell's parameters and initial carry."""
  cell = layer.cell
  kind, ins, hiddens = _CELLS[type(cell)]
  if initial_carry is None:
    initial_carry = cell.initialize_carry(
        jax.random.key(0) if init_key is None else init_key,
        inputs.shape[:1] + inputs.shape[2:])
  params = cell.variables["params"]
  x, wi, bi, wh, bh = nn.dtypes.promote_dtype(
      inputs, *_fused(params, ins), *_fused(params, hiddens), dtype=cell.dtype)
  carry0 = tuple(c.astype(x.dtype) for c in (
      initial_carry if kind == "lstm" else (initial_carry,)))
  reverse = layer.reverse if reverse is None else reverse
  x = jnp.swapaxes(x, 0, 1)  # Time-major [T, B, F] inside.
  hs = recurrence(kind, jnp.flip(x, 0) if reverse else x, wi, bi, wh, bh,
                  carry0)
  if reverse and (layer.keep_order if keep_order is None else keep_order):
    hs = jnp.flip(hs, 1)
  return hs

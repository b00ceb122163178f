"""Fast recurrent layers: the same function and parameters as `nn.RNN` over
flax's `SimpleCell`, `OptimizedLSTMCell` (= `LSTMCell`) and `GRUCell`.

On CPU a scanned cell spends its time in many small ops per time step. Here
the G gate matmuls of a step are one [B, H] x [H, G*H] matmul (and one
[B, F] x [F, G*H] for the input), and the backward pass is written by hand
(`jax.custom_vjp`): per step it does one [B, G*H] x [G*H, H] matmul and one
fused elementwise pass, and the kernel gradients are single
[H, T*B] x [T*B, G*H] and [F, T*B] x [T*B, G*H] matmuls after the loop instead
of T small ones inside it.
`tests/test_equivalence.py` checks outputs and gradients against flax.

Shapes: T time steps, B batch, F input features, H hidden units, G gates
(1 for rnn, 4 for lstm in order i, f, g, o; 3 for gru in order r, z, n).
"""

import functools
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# The flax cell each kind replaces; its class name prefixes the parameters.
FLAX_CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell,
              "gru": nn.GRUCell}
# Per kind: the input-side and hidden-side Dense parameter groups, in gate order,
# each (name, has_bias), exactly as the flax cell creates them.
_LAYOUT = {
    "rnn": ((("i", True),), (("h", False),)),
    "lstm": ((("ii", False), ("if", False), ("ig", False), ("io", False)),
             (("hi", True), ("hf", True), ("hg", True), ("ho", True))),
    "gru": ((("ir", True), ("iz", True), ("in", True)),
            (("hr", False), ("hz", False), ("hn", True))),
}


class _DenseParams(nn.Module):
  """Creates `nn.Dense`'s parameters (kernel [in, out], optional bias [out])."""
  in_features: int
  features: int
  use_bias: bool
  kernel_init: object

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init,
                        (self.in_features, self.features), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,),
                       jnp.float32) if self.use_bias else None)
    return kernel, bias


class CellParams(nn.Module):
  """A flax cell's parameters, under its names and initialisers, fused.

  Returns (wi [F, G*H], bi [G*H], wh [H, G*H], bh [G*H]); missing biases are
  zeros (adding them is exact).
  """
  kind: str
  in_features: int
  hidden: int

  @nn.compact
  def __call__(self):
    inputs, hiddens = _LAYOUT[self.kind]
    h = self.hidden

    def group(specs, fan_in, init):
      made = [_DenseParams(fan_in, h, bias, init, name=name)()
              for name, bias in specs]
      kernel = jnp.concatenate([k for k, _ in made], axis=-1)
      bias = jnp.concatenate([b if b is not None else jnp.zeros((h,), kernel.dtype)
                              for _, b in made])
      return kernel, bias

    wi, bi = group(inputs, self.in_features, nn.linear.default_kernel_init)
    wh, bh = group(hiddens, h, nn.initializers.orthogonal())
    return wi, bi, wh, bh


def _cell_step(kind, carry, xt, a):
  """One step from x-projection xt and h-projection a (both [B, G*H]).

  Returns (new carry, saved activations for the backward pass).
  """
  if kind == "rnn":
    h = jnp.tanh(xt + a)
    return (h,), ()
  if kind == "lstm":
    c = carry[0]
    i, f, g, o = jnp.split(xt + a, 4, axis=-1)
    i, f, g, o = nn.sigmoid(i), nn.sigmoid(f), jnp.tanh(g), nn.sigmoid(o)
    c = f * c + i * g
    return (c, o * jnp.tanh(c)), (jnp.concatenate([i, f, g, o], -1), c)
  h = carry[0]
  xr, xz, xn = jnp.split(xt, 3, axis=-1)
  hr, hz, hn = jnp.split(a, 3, axis=-1)
  r = nn.sigmoid(xr + hr)
  z = nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  return ((1.0 - z) * n + z * h,), (jnp.concatenate([r, z, n, hn], -1),)


def _forward(kind, x, wi, bi, wh, bh, carry0, save):
  # The input projection stays in the loop: measured on XLA:CPU, a fusion that
  # reads its step of a hoisted [T, B, G*H] projection ran 2-3x slower than
  # one that reads a fresh [B, F] x [F, G*H] matmul result.
  def body(carry, xt):
    new, saved = _cell_step(kind, carry, xt @ wi + bi, carry[-1] @ wh + bh)
    return new, (new[-1], saved) if save else new[-1]
  return jax.lax.scan(body, carry0, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 7))
def recurrence(kind: str, x, wi, bi, wh, bh, carry0, sequences: bool):
  """Runs a cell over time.

  Args:
    kind: "rnn", "lstm" or "gru".
    x: [T, B, F] inputs, time-major.
    wi: [F, G*H] fused input kernels; bi: [G*H] input biases.
    wh: [H, G*H] fused hidden kernels; bh: [G*H] hidden biases.
    carry0: the initial carry, (h,) or for lstm (c, h), each [B, H].
    sequences: return every step's hidden state, or only the last one.

  Returns:
    hs: [T, B, H], the hidden state after each step; or [B, H], the last.
  """
  carry, hs = _forward(kind, x, wi, bi, wh, bh, carry0, save=False)
  return hs if sequences else carry[-1]


def _recurrence_fwd(kind, x, wi, bi, wh, bh, carry0, sequences):
  carry, (hs, saved) = _forward(kind, x, wi, bi, wh, bh, carry0, save=True)
  return (hs if sequences else carry[-1]), (x, wi, wh, carry0, hs, saved)


def _shift(first, seq):
  """[first, seq[0], ..., seq[T-2]]: the value before each step."""
  return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _recurrence_bwd(kind, sequences, res, dout):
  """Backward through time: one [B, G*H] x [G*H, H] matmul per step; the
  kernels' gradients are one matmul each over all steps afterwards."""
  x, wi, wh, carry0, hs, saved = res
  hidden = wh.shape[0]
  h_prev = _shift(carry0[-1], hs)
  wht = wh.T
  if kind == "lstm":
    gates, cs = saved
    inputs = (gates, cs, _shift(carry0[0], cs))
  elif kind == "gru":
    inputs = (saved[0], h_prev)
  else:
    inputs = (hs,)
  dcarry = [jnp.zeros_like(c) for c in carry0]
  if sequences:
    inputs = (dout,) + inputs
  else:
    dcarry[-1] = dout

  def body(carry, inp):
    if sequences:
      dh_out, *inp = inp
      dh = carry[-1] + dh_out
    else:
      dh = carry[-1]
    if kind == "rnn":
      (h,) = inp
      da = dh * (1.0 - h * h)
      return (da @ wht,), da
    if kind == "lstm":
      gates, c, c_prev = inp
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      tc = jnp.tanh(c)
      dc = carry[0] + dh * o * (1.0 - tc * tc)
      da = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                            dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], -1)
      return (dc * f, da @ wht), da
    acts, h = inp
    r, z, n, hn = jnp.split(acts, 4, axis=-1)
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dar = dan * hn * r * (1.0 - r)
    daz = dh * (h - n) * z * (1.0 - z)
    da = jnp.concatenate([dar, daz, dan * r], -1)
    return (dh * z + da @ wht,), (da, dan)

  dcarry0, out = jax.lax.scan(body, tuple(dcarry), inputs, reverse=True)
  if kind == "gru":
    da, dan = out
    dxp = jnp.concatenate([da[..., :2 * hidden], dan], axis=-1)
  else:
    da = dxp = out
  dwh = jnp.einsum("tbh,tbg->hg", h_prev, da)
  dwi = jnp.einsum("tbf,tbg->fg", x, dxp)
  dx = jnp.einsum("tbg,fg->tbf", dxp, wi)  # Dropped by XLA when x is data.
  return (dx, dwi, dxp.sum(axis=(0, 1)), dwh, da.sum(axis=(0, 1)), dcarry0)


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def rnn_layer(kind: str, params, x: jax.Array, reverse: bool = False,
              sequences: bool = True) -> jax.Array:
  """Applies one recurrent layer to time-major x [T, B, F] -> [T, B, H].

  params: CellParams' (wi, bi, wh, bh). With reverse=True the sequence is read
  from the end and outputs come back in the original order (nn.RNN with
  reverse=True, keep_order=True). With sequences=False only the final state
  [B, H] is returned (for reverse: the state after reading x[0]).
  """
  wi, bi, wh, bh = params
  hidden = wh.shape[0]
  if reverse:
    x = jnp.flip(x, axis=0)
  b = x.shape[1]
  carry0 = tuple(jnp.zeros((b, hidden), x.dtype)
                 for _ in range(2 if kind == "lstm" else 1))
  hs = recurrence(kind, x, wi, bi, wh, bh, carry0, sequences)
  return jnp.flip(hs, axis=0) if reverse and sequences else hs

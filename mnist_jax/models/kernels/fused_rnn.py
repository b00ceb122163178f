"""A drop-in for `models.recurrent.Recurrent` (same parameters, function and
gradients; no remat), for CPU, where a scanned flax cell runs many small ops
per step. Here a step's gates are one [B, H] x [H, G*H] matmul,
and the hand-written backward pass does one matmul and one elementwise pass
per step, the kernel gradients once over all steps. T steps, B batch, F
inputs, H hidden, G gates (rnn 1; lstm 4: i, f, g, o; gru 3: r, z, n).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models import recurrent
from mnist_jax.models.kernels import conv_pool

# Per cell: its input-side and hidden-side Dense parameters in gate order,
# each (name, has_bias), as the flax cell creates them.
_LAYOUT = {
    "rnn": ((("i", True),), (("h", False),)),
    "lstm": ((("ii", False), ("if", False), ("ig", False), ("io", False)),
             (("hi", True), ("hf", True), ("hg", True), ("ho", True))),
    "gru": ((("ir", True), ("iz", True), ("in", True)),
            (("hr", False), ("hz", False), ("hn", True))),
}


class CellParams(nn.Module):
  """A flax cell's parameters under its names and initialisers, fused: (wi
  [F, G*H], bi [G*H], wh [H, G*H], bh [G*H]), missing biases as zeros."""
  kind: str
  in_features: int
  hidden: int

  @nn.compact
  def __call__(self):
    inputs, hiddens = _LAYOUT[self.kind]
    h = self.hidden

    def group(specs, fan_in, init):
      made = [conv_pool.Params((fan_in, h), bias, init, name=name)()
              for name, bias in specs]
      kernel = jnp.concatenate([k for k, _ in made], axis=-1)
      bias = jnp.concatenate([b if b is not None else
                              jnp.zeros((h,), kernel.dtype) for _, b in made])
      return kernel, bias

    wi, bi = group(inputs, self.in_features, nn.linear.default_kernel_init)
    wh, bh = group(hiddens, h, nn.initializers.orthogonal())
    return wi, bi, wh, bh


def _cell_step(kind, carry, xt, a):
  """One step from the x- and h-projections xt, a [B, G*H] -> (new carry,
  saved): the local derivative factors the backward step multiplies, as one
  array: lstm [B, 6H], dc/d(pre-activation) of i, f, g, dh/d(pre-activation)
  of o, dh/dc, dc/dc_prev (= f); gru [B, 5H], dh/d(pre-activation) of r, z
  and the h-side n, of the x-side n, dh/dh_prev through z (= z)."""
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
    saved = jnp.concatenate([g * i * (1.0 - i), c_prev * f * (1.0 - f),
                             i * (1.0 - g * g), tc * o * (1.0 - o),
                             o * (1.0 - tc * tc), f], -1)
    return (c, o * tc), (saved,)
  h = carry[0]
  hidden = h.shape[-1]
  # r and z from one tanh over their 2H pre-activations, as for the lstm.
  r, z = jnp.split(0.5 * jnp.tanh(0.5 * (xt[:, :2 * hidden] +
                                         a[:, :2 * hidden])) + 0.5, 2, -1)
  hn = a[:, 2 * hidden:]
  n = jnp.tanh(xt[:, 2 * hidden:] + r * hn)
  dn = (1.0 - z) * (1.0 - n * n)
  saved = jnp.concatenate([dn * hn * r * (1.0 - r), (h - n) * z * (1.0 - z),
                           dn * r, dn, z], -1)
  return ((1.0 - z) * n + z * h,), (saved,)


def _forward(kind, x, wi, bi, wh, bh, carry0, save):
  # The input projection stays in the loop: on XLA:CPU reading a step of a
  # hoisted [T, B, G*H] projection ran slower than a fresh matmul result.
  def body(carry, xt):
    new, saved = _cell_step(kind, carry, xt @ wi + bi, carry[-1] @ wh + bh)
    return new, (new[-1], saved) if save else new[-1]
  return jax.lax.scan(body, carry0, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 7))
def recurrence(kind: str, x, wi, bi, wh, bh, carry0, sequences: bool):
  """Runs cell `kind` over time-major x [T, B, F] from carry0 ((h,), or (c, h)
  for lstm, each [B, H]) with CellParams' (wi, bi, wh, bh): every step's hidden
  state [T, B, H] if `sequences`, else the last one [B, H]."""
  carry, hs = _forward(kind, x, wi, bi, wh, bh, carry0, save=False)
  return hs if sequences else carry[-1]


def _recurrence_fwd(kind, x, wi, bi, wh, bh, carry0, sequences):
  carry, (hs, saved) = _forward(kind, x, wi, bi, wh, bh, carry0, save=True)
  return (hs if sequences else carry[-1]), (x, wi, wh, carry0, hs, saved)


def _recurrence_bwd(kind, sequences, res, dout):
  x, wi, wh, carry0, hs, saved = res
  hidden = wh.shape[0]
  h_prev = jnp.concatenate([carry0[-1][None], hs[:-1]], axis=0)
  wht = wh.T
  inputs = saved if kind != "rnn" else (hs,)
  dcarry = [jnp.zeros_like(c) for c in carry0]
  if sequences:
    inputs = (dout,) + tuple(inputs)
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
    (s,) = inp
    if kind == "lstm":
      dc = carry[0] + dh * s[:, 4 * hidden:5 * hidden]
      da = jnp.concatenate([dc, dc, dc, dh], -1) * s[:, :4 * hidden]
      return (dc * s[:, 5 * hidden:], da @ wht), da
    da = jnp.concatenate([dh, dh, dh], -1) * s[:, :3 * hidden]
    dan = dh * s[:, 3 * hidden:4 * hidden]
    return (dh * s[:, 4 * hidden:] + da @ wht,), (da, dan)

  dcarry0, out = jax.lax.scan(body, tuple(dcarry), inputs, reverse=True)
  if kind == "gru":
    da, dan = out
    dxp = jnp.concatenate([da[..., :2 * hidden], dan], axis=-1)
  else:
    da = dxp = out
  # Contractions over (t, b): [T*B, .] matrix products ran slower on two
  # sharded CPU devices.
  dwh = jnp.einsum("tbh,tbg->hg", h_prev, da)
  dwi = jnp.einsum("tbf,tbg->fg", x, dxp)
  dx = jnp.einsum("tbg,fg->tbf", dxp, wi)  # Dropped by XLA when x is data.
  return (dx, dwi, dxp.sum(axis=(0, 1)), dwh, da.sum(axis=(0, 1)), dcarry0)


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def rnn_layer(kind: str, params, x: jax.Array, reverse: bool = False,
              sequences: bool = True) -> jax.Array:
  """One layer with CellParams' `params` on time-major x [T, B, F] -> [T, B,
  H] (reverse: as nn.RNN's reverse=True, keep_order=True), or with
  sequences=False only the final state [B, H] (reverse: after reading x[0])."""
  wi, bi, wh, bh = params
  if reverse:
    x = jnp.flip(x, axis=0)
  carry0 = tuple(jnp.zeros((x.shape[1], wh.shape[0]), x.dtype)
                 for _ in range(2 if kind == "lstm" else 1))
  hs = recurrence(kind, x, wi, bi, wh, bh, carry0, sequences)
  return jnp.flip(hs, axis=0) if reverse and sequences else hs


class Recurrent(recurrent.Recurrent):
  """recurrent.Recurrent with fused layers: images [B, H, W, C] -> logits."""
  ACCEPTS = {"cell": tuple(_LAYOUT), "remat": (False,)}  # See kernels.swap.

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = recurrent.as_sequence(images, self.sequence, self.permute_seed)
    x = jnp.swapaxes(x, 0, 1)  # Time-major [T, B, F] inside the stack.
    for layer in range(self.num_layers):
      if layer > 0:
        # Batch-major for the mask, so that it is the stock module's draw.
        x = jnp.swapaxes(nn.Dropout(self.dropout, deterministic=not train)(
            jnp.swapaxes(x, 0, 1)), 0, 1)
      # The top layer returns only its final state(s): [B, H] per direction.
      top = layer == self.num_layers - 1
      name = f"{self.cell}_{layer}"
      params = CellParams(self.cell, x.shape[-1], self.hidden, name=name)()
      y = rnn_layer(self.cell, params, x, sequences=not top)
      if self.bidirectional:
        params = CellParams(self.cell, x.shape[-1], self.hidden,
                            name=name + "_backward")()
        back = rnn_layer(self.cell, params, x, reverse=True, sequences=not top)
        y = jnp.concatenate([y, back], axis=-1)
      x = y
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)

"""On-device augmentation in the train step: per image a random affine warp
(shift, rotation, zoom) and optional elastic distortion (Simard et al., 2003),
as ONE bilinear resampling with zeros outside the image."""

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp


def sample(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """float32 [B, H, W, C]: images [B, H, W, C] sampled bilinearly at source
  coordinates rows, cols [B, H, W]; points outside the image read 0."""
  b, h, w, c = images.shape
  flat = images.reshape(b, h * w, c).astype(jnp.float32)
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
  out = jnp.zeros((b, h, w, c), jnp.float32)
  for dr, wr in ((0, 1.0 - fr), (1, fr)):
    for dc, wc in ((0, 1.0 - fc), (1, fc)):
      r = (r0 + dr).astype(jnp.int32)
      col = (c0 + dc).astype(jnp.int32)
      inside = ((r >= 0) & (r < h) & (col >= 0) & (col < w))[..., None]
      index = (jnp.clip(r, 0, h - 1) * w + jnp.clip(col, 0, w - 1)).reshape(
          b, -1, 1)
      values = jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w, c)
      out = out + jnp.where(inside, values, 0.0) * wr * wc
  return out


def affine_grid(shape, angle: jax.Array, scale: jax.Array, shift: jax.Array):
  """Source rows, cols [B, H, W] of out = R(angle) scale (in - centre) + centre
  + shift: angle [B] radians (> 0: clockwise), scale [B] (> 1 zooms in), shift
  [B, 2] pixels (down, right); shape (B, H, W) or (B, H, W, C)."""
  _, h, w = shape[:3]
  cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing="ij")
  y = yy[None] - cr - shift[:, 0, None, None]
  x = xx[None] - cc - shift[:, 1, None, None]
  cos = (jnp.cos(angle) / scale)[:, None, None]
  sin = (jnp.sin(angle) / scale)[:, None, None]
  return cos * y - sin * x + cr, sin * y + cos * x + cc


def _gaussian_matrix(n: int, sigma: float) -> jax.Array:
  """[n, n] G: G @ v is v blurred by a normalised Gaussian (zero padded)."""
  radius = int(math.ceil(3 * sigma))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  offsets = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
  return jnp.where(jnp.abs(offsets) <= radius,
                   taps[jnp.clip(offsets + radius, 0, 2 * radius)], 0.0)


def elastic_field(key: jax.Array, shape, alpha: float, sigma: float):
  """Smooth random displacements alpha * blur(uniform(-1, 1)): 2 x [B, H, W]
  (Simard et al.'s field; at sigma 4 each axis's root mean square is about
  alpha/26)."""
  b, h, w = shape[:3]
  noise = jax.random.uniform(key, (2, b, h, w), minval=-1.0, maxval=1.0)
  gh, gw = _gaussian_matrix(h, sigma), _gaussian_matrix(w, sigma)
  smooth = jnp.einsum("ij,cbjk,lk->cbil", gh, noise, gw)
  return alpha * smooth[0], alpha * smooth[1]


def augment(key: jax.Array, images: jax.Array, *, shift: float = 0.0,
            rotate: float = 0.0, scale: float = 0.0, elastic: float = 0.0,
            elastic_sigma: float = 4.0) -> jax.Array:
  """Randomly warps each image [B, H, W, C] (uint8 rounds): uniform shifts up to
  `shift` px, turns up to `rotate` degrees, zoom in [1 - scale, 1 + scale];
  an elastic field of strength `elastic` (0: off), blurred by elastic_sigma."""
  b = images.shape[0]
  k_angle, k_scale, k_shift, k_elastic = jax.random.split(key, 4)
  angle = jax.random.uniform(k_angle, (b,), minval=-1.0, maxval=1.0) * (
      rotate * math.pi / 180.0)
  zoom = 1.0 + scale * jax.random.uniform(k_scale, (b,), minval=-1.0,
                                          maxval=1.0)
  offset = shift * jax.random.uniform(k_shift, (b, 2), minval=-1.0, maxval=1.0)
  rows, cols = affine_grid(images.shape, angle, zoom, offset)
  if elastic > 0:
    d_rows, d_cols = elastic_field(k_elastic, images.shape, elastic,
                                   elastic_sigma)
    rows, cols = rows + d_rows, cols + d_cols
  out = sample(images, rows, cols)
  if jnp.issubdtype(images.dtype, jnp.integer):
    info = jnp.iinfo(images.dtype)
    return jnp.clip(jnp.round(out), info.min, info.max).astype(images.dtype)
  return out.astype(images.dtype)


def from_config(config) -> Optional[Callable]:
  """fn(key, images) applying the config's augmentation, or None if off."""
  if not config.augment:
    return None
  return functools.partial(
      augment, shift=config.augment_shift, rotate=config.augment_rotate,
      scale=config.augment_scale, elastic=config.augment_elastic,
      elastic_sigma=config.augment_elastic_sigma)

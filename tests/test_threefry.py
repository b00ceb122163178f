"""runtime.unroll_threefry: the unrolled CPU lowering gives jax.random's bits."""

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import runtime


def test_unrolled_threefry_matches_the_rolled_loop_and_the_reference():
  from jax._src.random import threefry2x32 as impl  # pylint: disable=g-import-not-at-top
  assert runtime.unroll_threefry()
  # Random123's known-answer vector for threefry2x32 with 20 rounds.
  key = (np.uint32(0x13198a2e), np.uint32(0x03707344))
  count = (np.uint32(0x243f6a88), np.uint32(0x85a308d3))
  out = jax.jit(lambda k, c: impl.threefry2x32_p.bind(*k, *c))(key, count)
  assert [int(x) for x in out] == [0xc4923a9c, 0x483df7a0]

  rng = np.random.default_rng(0)
  k = tuple(jnp.uint32(v) for v in rng.integers(0, 2**32, 2))
  x = tuple(jnp.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint32))
            for _ in range(2))
  primitive = jax.jit(lambda *a: impl.threefry2x32_p.bind(*a))(*k, *x)
  rolled = jax.jit(lambda *a: impl._threefry2x32_lowering(  # pylint: disable=protected-access
      *a, use_rolled_loops=True))(*k, *x)
  for a, b in zip(primitive, rolled):
    np.testing.assert_array_equal(a, b)
  mask = jax.jit(lambda key: jax.random.bernoulli(key, 0.7, (64, 32)))(
      jax.random.PRNGKey(3))
  assert 0.5 < float(mask.mean()) < 0.9

"""Which examples each step reads: index arrays into the device-resident data.

An epoch's order is a pure function of (data key, epoch), so a run resumed at
any epoch, or at any step inside one, replays the same batches; evaluation
covers every example once, with a padded and masked last batch.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def epoch_batches(rng: jax.Array, epoch: int, n: int, batch_size: int) -> jax.Array:
  """The epoch's shuffled batches: [n // batch_size, batch_size] int32 indices.

  A pure function of (rng, epoch): resuming at any epoch replays the same order.
  The last partial batch is dropped; a new permutation each epoch uses it later.
  """
  steps = n // batch_size
  perm = jax.random.permutation(jax.random.fold_in(rng, epoch), n)
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def chunk_plan(steps: int, max_chunk: int):
  """Splits `steps` into equal chunks of at most `max_chunk` (last one padded).

  Returns:
    (number of chunks, steps per chunk).
  """
  num = max(1, math.ceil(steps / max_chunk))
  return num, math.ceil(steps / num)


def epoch_plan(rng, epoch, *, n, batch_size, num_chunks, chunk_len):
  """The epoch's batches laid out as [num_chunks, chunk_len, batch_size] indices.

  Steps past the epoch's end are padding (index 0), skipped by the train chunk.
  """
  batches = epoch_batches(rng, epoch, n, batch_size)
  pad = num_chunks * chunk_len - batches.shape[0]
  batches = jnp.pad(batches, ((0, pad), (0, 0)))
  return batches.reshape(num_chunks, chunk_len, batch_size)


def eval_batches(n: int, batch_size: int, multiple: int = 1):
  """Index and mask arrays covering all n examples once; the last batch is padded.

  The batch is at most n, rounded up to a multiple of `multiple` (the devices).

  Returns:
    batch_idx [C, B] int32 and mask [C, B] float32, C = ceil(n / B).
  """
  batch_size = -(-min(batch_size, max(n, 1)) // multiple) * multiple
  c = max(1, math.ceil(n / batch_size))
  flat = np.arange(c * batch_size)
  mask = (flat < n).astype(np.float32).reshape(c, batch_size)
  return np.minimum(flat, max(n - 1, 0)).astype(np.int32).reshape(c, batch_size), mask

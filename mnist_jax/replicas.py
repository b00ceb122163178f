"""How the members' axis of one program runs on devices (see members.py).

With M > 1 members the train state, the batch order and the metric sums have a
leading axis [M, ...]. On a CPU each member runs the single-member chunk of
steps in turn (`in_turn`), the members split over the host's CPU devices
(`mesh`); elsewhere the step is vmapped, which fills an accelerator better.
With one member every function here returns its input unchanged.
"""

from typing import Callable, Dict, Optional, Sequence

import jax
from jax import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "replica"  # The mesh axis the members are split along.


def vmap(num: int, fn: Callable, in_axes=0, out_axes=0) -> Callable:
  """`fn` mapped over the members' axis, or `fn` itself for one member."""
  if num == 1:
    return fn
  return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)


def in_turn(num: int) -> bool:
  """Whether the train chunk runs the members one after another (CPU).

  On a CPU, M members as a `lax.scan` over the members' axis of the
  single-member chunk (member 0's steps, then member 1's, ...) ran faster than
  the vmapped step: XLA:CPU runs M small matmuls faster than one batched
  matmul, and the vmapped step's per-member `lax.cond` (skip padding and
  diverged steps) becomes a select that reads and writes the whole train state
  every step. Accelerators keep the vmapped step.
  """
  return num > 1 and jax.default_backend() == "cpu"


def compiler_options(num: int) -> Optional[Dict[str, str]]:
  """XLA options for the train chunk: with members in turn, region analysis.

  XLA:CPU's copy insertion otherwise copies loop-carried buffers every step
  (a large kernel after the step's `lax.cond`, the threefry state in each
  dropout mask's round loop); with region analysis those copies go and the
  results keep the same bits. Other runs keep XLA's defaults.
  """
  if not in_turn(num):
    return None
  return {"xla_cpu_copy_insertion_use_region_analysis": "True"}


def mesh(num: int) -> Optional[Mesh]:
  """The CPU devices the members are split over, or None for one device.

  With a host split into one device per core (runtime.split_host), each
  device trains M / D members, its own core running their steps, where one
  device would spread every small matmul over both cores. The most devices
  that divide M are used.
  """
  if not in_turn(num):
    return None
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num % d == 0)
  if count == 1 or jax.process_count() > 1:
    return None
  return Mesh(np.array(devices[:count]), (AXIS,))


def place_restored(state, member_mesh: Optional[Mesh]):
  """A restored stacked state, split along the members' axis on `member_mesh`.

  orbax restores it onto one device, which the split train chunk refuses
  ("incompatible devices"). It goes through the host: moving device arrays
  between the split host's CPU devices before the first chunk could hang.
  """
  if member_mesh is None:
    return state
  return jax.device_put(jax.device_get(state),
                        NamedSharding(member_mesh, P(AXIS)))


def split(fn: Callable, member_mesh: Optional[Mesh],
          per_member: Sequence[bool]) -> Callable:
  """`fn` with its members' axis split across `member_mesh` (or `fn` itself).

  per_member: for each argument, whether it has the leading members' axis
  (else every device gets all of it). Every output has the members' axis.
  """
  if member_mesh is None:
    return fn
  return shard_map(fn, mesh=member_mesh,
                   in_specs=tuple(P(AXIS) if r else P() for r in per_member),
                   out_specs=P(AXIS), check_vma=False)


def train_chunk(chunk: Callable, num: int, sequential: bool,
                member_mesh: Optional[Mesh] = None) -> Callable:
  """The single-member train chunk over the members' axis.

  Args:
    chunk: fn(state, images, labels, batch_idx [C, B], valid [C]) ->
      (state, sums, bad), one member's chunk of steps (train.make_train_chunk).
    num: M, the number of members.
    sequential: run the members in turn (`in_turn`), else vmap the step.
    member_mesh: the devices to split the members over (`mesh`), or None.

  Returns:
    fn(state [M, ...], images, labels, batch_idx [M, C, B], valid [C]) ->
    (state [M, ...], sums [M], bad [M]); `chunk` itself for one member. In
    turn, member i runs exactly the single-member program, so it computes
    what the single run with its seed computes.
  """
  if num == 1:
    return chunk
  if not sequential:
    return jax.vmap(chunk, in_axes=(0, None, None, 0, None))

  def run(state, images, labels, batch_idx, valid):
    def body(_, member):
      state, idx = member
      return None, chunk(state, images, labels, idx, valid)
    return jax.lax.scan(body, None, (state, batch_idx))[1]

  return split(run, member_mesh, (True, False, False, True, False))


def evaluate(fn: Callable, num: int,
             member_mesh: Optional[Mesh] = None) -> Callable:
  """The single-member evaluation (train.make_evaluate) over the members.

  fn(params [M, ...], images, labels, batch_idx, mask) -> sums [M]; `fn`
  itself for one member.
  """
  return split(vmap(num, fn, in_axes=(0, None, None, None, None)), member_mesh,
               (True, False, False, False, False))

"""Where a run computes: `Layout` wraps train.py's one-model functions for a
run's members and devices: none (one device), sharded (one `jax.jit` over a
mesh), pmap (each device its own dropout masks) or members (split over the
devices; in turn on a CPU, vmapped elsewhere), as docs/design.md's Layouts
table says. --parallel=auto is a rule, never a timing: `members` for several
members that split over the devices, `sharded` on a GPU or TPU or, on a CPU
host (a device per core), for a module declaring DATA_PARALLEL_ON_CPU (members
that split over no devices: in turn, each so); else one device."""

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_jax.errors import UserError

AXIS = "data"  # The mesh (and pmap) axis a batch is split along.
MEMBERS = "members"  # The mesh axis members are split along.
# auto on a CPU host: fewer examples per device, fewer devices.
MIN_DEVICE_BATCH = 32
# The backends where several members run in turn, each its single run's
# program (elsewhere vmapped): XLA:CPU's batched matmuls and grouped
# convolutions were slower.
IN_TURN_ON = ("cpu",)
# What Layout.map is told of each argument: mapped over the members (and laid
# out as the state is), the same for every member (data), or a host number.
MEMBER, SHARED, NUMBER = "member", "shared", "number"


def is_main() -> bool:
  return jax.process_index() == 0


def from_main(tree):
  """Process 0's values of a pytree, on every process."""
  return (tree if jax.process_count() == 1
          else multihost_utils.broadcast_one_to_all(tree))


def main_first(fn: Callable[[], Any]) -> Any:
  """fn() on process 0, then on the others (preparing shared data)."""
  if jax.process_count() == 1:
    return fn()
  if is_main():
    result = fn()
  multihost_utils.sync_global_devices("mnist_jax:main_first")
  return result if is_main() else fn()


def _batch_devices(batch_size: int, available: int, least: int = 1) -> int:
  """The most devices, up to `available`, that split the batch evenly into
  parts of at least `least` examples (1 for a smaller batch)."""
  return max((d for d in range(1, available + 1)
              if batch_size % d == 0 and batch_size // d >= least), default=1)


def resolve(config, num_members: int, module) -> tuple:
  """(mode, device count) of the run's layout for `module` (the stock Flax
  module, or what computes it), or a one-line refusal of what these devices
  cannot run (the job's processes joined first)."""
  requested, total = config.parallel, jax.device_count()
  if requested == "none" and jax.process_count() > 1:
    raise UserError(f"--parallel=none runs on one device, but "
                    f"{jax.process_count()} processes were started; pass "
                    "--parallel=sharded")
  if num_members > 1:
    if requested == "pmap":
      raise UserError(f"the {num_members} members of --num_seeds and "
                      "--sweep are split over the devices, not pmapped; "
                      "leave out --parallel=pmap")
    count = _batch_devices(num_members, total)
    if requested == "none" or jax.process_count() > 1:
      return "none", 1  # (Each process of several trains every member.)
    if count > 1:
      return "members", count
    if requested != "auto" or jax.default_backend() not in IN_TURN_ON:
      return "none", 1
    # Members in turn that split over no devices: each laid out as its single
    # run (sharded over the devices for a DATA_PARALLEL_ON_CPU module).
  if requested == "none" or total == 1:
    return "none", 1
  cpu = jax.default_backend() == "cpu"
  if requested == "auto" and (cpu or jax.process_count() == 1):
    if cpu and not getattr(module, "DATA_PARALLEL_ON_CPU", False):
      return "none", 1
    count = _batch_devices(config.batch_size, total,
                           MIN_DEVICE_BATCH if cpu else 1)
    return ("sharded", count) if count > 1 else ("none", 1)
  count = total  # pmap: each process maps its local devices, of these.
  if config.batch_size % count:
    lower = config.batch_size // count * count
    options = [s for s in (lower, lower + count) if s > 0]
    raise UserError(
        f"--batch_size={config.batch_size} does not split over {count} "
        f"devices; pass a multiple of {count} (e.g. "
        f"{' or '.join(map(str, options))}), or --parallel=none")
  return ("sharded" if requested == "auto" else requested), count


def _in_turn(fn: Callable, args: Sequence[str], names: Sequence[str]
             ) -> Callable:
  """`fn` of one model over [M] members one after another (lax.map), each
  member's own program, as its single run: on a CPU, where XLA computes a
  vmapped convolution as a grouped one (slow), every model trains faster so.
  The per-member keyword arrays `names` follow the positional arguments."""
  def run(*a):
    a, arrays = a[:len(args)], a[len(args):]

    def one(member):  # (its arguments by position, its keyword arguments)
      picked, kwargs = member
      return fn(*[picked.get(i, x) for i, x in enumerate(a)], **kwargs)
    mapped = {i: x for i, (x, k) in enumerate(zip(a, args)) if k == MEMBER}
    return jax.lax.map(one, (mapped, dict(zip(names, arrays))))
  return run


class Layout:
  """How one run's programs map over its members and devices (module doc):
  a 1-D mesh of its devices (one device is a mesh of one)."""

  def __init__(self, config, module, num_members: int = 1, say=print):
    self.num_members = num_members
    self.mode, count = resolve(config, num_members, module)
    # none: this process's own device (each process of several trains the
    # whole run); pmap: the local ones; else a mesh over the job's.
    devices = {"none": jax.local_devices()[:1], "pmap": jax.local_devices()
               }.get(self.mode, jax.devices()[:count])
    self.mesh = Mesh(np.array(devices), (MEMBERS if self.mode == "members"
                                         else AXIS,))
    self.num_devices = count
    self.in_turn = jax.default_backend() in IN_TURN_ON
    # What train.py is told: the pmap axis it averages over; how it splits a
    # chunk's batches [C, B, ...] over the mesh (sharded).
    self.axis_name = AXIS if self.mode == "pmap" else None
    self.batch_sharding = (NamedSharding(self.mesh, P(None, AXIS))
                           if self.mode == "sharded" else None)
    backend = jax.default_backend().upper()
    turn = (f"{num_members} members in turn, each "
            if num_members > 1 and self.mode == "sharded" else "")
    if count > 1:
      say({"sharded": f"{turn}data parallel over {count} {backend} devices "
                      "(one jit over a mesh)",
           "pmap": f"data parallel over {count} {backend} devices (pmap: "
                   "each device draws its own dropout masks and "
                   "augmentation)",
           "members": f"{num_members} members split over {count} {backend} "
                      "devices"}[self.mode])

  def record(self) -> dict:
    """What config.json records of the layout (and how members ran)."""
    return {"mode": self.mode, "devices": self.num_devices, **(
        {"members": "in turn" if self.in_turn else "vmapped"}
        if self.num_members > 1 else {})}

  def eval_batch_size(self, batch_size: int) -> int:
    """A batch that splits over the data-parallel devices."""
    if self.mode in ("sharded", "pmap"):
      return -(-batch_size // self.num_devices) * self.num_devices
    return batch_size

  def _put(self, tree, spec: P):
    if self.mode == "pmap":  # A copy per local device: [L, ...].
      tree = jax.tree.map(
          lambda x: jnp.broadcast_to(x, (self.mesh.size, *np.shape(x))), tree)
      spec = P(AXIS)
    sharding = NamedSharding(self.mesh, spec)
    if sharding.is_fully_addressable:
      return jax.device_put(tree, sharding)

    def put(x):  # Each process holds the whole value: global arrays.
      keys = jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
      data = np.asarray(jax.random.key_data(x) if keys else x)
      array = jax.make_array_from_process_local_data(sharding, data, data.shape)
      return jax.random.wrap_key_data(array) if keys else array
    return jax.tree.map(put, tree)

  def put(self, split):
    """(images, labels) of a data split, whole on every device."""
    return self._put((np.asarray(split.images), np.asarray(split.labels)), P())

  def put_state(self, state):
    """A (stacked) train state, or a tree laid out as one (an epoch's metric
    sums), placed for the programs (from host or device)."""
    return self._put(state, P(MEMBERS) if self.mode == "members" else P())

  def map(self, fn: Callable, args: Sequence[str], per_member=None,
          donate: bool = True) -> Callable:
    """`fn` of one model jitted over the members and devices. args: for each
    positional argument, MEMBER (the state, and what is mapped with it),
    SHARED (the data) or NUMBER (a host number); per_member: keyword
    arguments of [M] arrays mapped with the members. The first argument (the
    state) is donated unless not `donate`."""
    per_member = per_member or {}
    if self.num_members > 1 and self.in_turn:
      names = sorted(per_member)
      fn = _in_turn(fn, args, names)
      if self.mode == "members":  # Each device its share, in turn.
        specs = [P(MEMBERS) if a == MEMBER else P() for a in args]
        fn = jax.shard_map(fn, mesh=self.mesh, out_specs=P(MEMBERS),
                           in_specs=(*specs, *[P(MEMBERS)] * len(names)),
                           check_vma=False)  # (No collectives inside.)
      arrays = [per_member[k] for k in names]
      fn = lambda *a, _f=fn: _f(*a, *arrays)
    else:
      if self.num_members > 1:
        fn = jax.vmap(fn, in_axes=tuple(0 if a == MEMBER else None
                                        for a in args))
      if per_member:
        fn = lambda *a, _f=fn: _f(*a, **per_member)
    donated = (0,) if donate else ()
    if self.mode == "pmap":  # Arrays are laid out [L, ...]; numbers shared.
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=donated,
                      in_axes=tuple(None if a == NUMBER else 0 for a in args))
    state = NamedSharding(self.mesh, P(MEMBERS) if self.mode == "members"
                          else P())
    return jax.jit(fn, donate_argnums=donated, out_shardings=state)

  def unreplicated(self, tree):
    """This process's copy of replicated arrays (on one device, without
    pmap's device axis); the members' arrays, and arrays on one device or
    the host (an unreplicated tree), as they are."""
    if self.mode not in ("pmap", "sharded"):
      return tree
    def one(x):
      if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
        return x
      return x.addressable_data(0)[0] if self.mode == "pmap" else (
          x.addressable_data(0))
    return jax.tree.map(one, tree)

  def host(self, tree):
    """Program outputs as host numpy: this process's copy."""
    return jax.tree.map(np.asarray, self.unreplicated(tree))

  def num_params(self, state) -> int:
    """Parameters of one member."""
    lead = (self.num_members > 1) + (self.mode == "pmap")
    return sum(math.prod(p.shape[lead:]) for p in jax.tree.leaves(state.params))

"""One run's devices and compiled programs, behind one object the loop calls.

`Engine` is built once per run. It decides where arrays live: the uint8
dataset whole on every device, the batch indices of each chunk sharded along
the batch (parallel.py: --parallel none, pmap or sharded, over one or many
processes), the members' axis of several models stacked and, on a split CPU
host, split over its devices (replicas.py). It compiles the train chunk and
the evaluation that train.py defines, runs them, and hands metrics back as
host numbers. The loop never sees a device layout.
"""

import dataclasses
import functools
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import batches as batches_lib
from mnist_jax import members as members_lib
from mnist_jax import parallel
from mnist_jax import replicas
from mnist_jax import resume

SUM_KEYS = ("loss", "correct", "count")


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One epoch's batches on the devices, chunk by chunk.

  batches[c] and valid[c] are chunk c's indices [(M,) C, B] and which of its
  steps run [C]; `chunks` are the chunks still to run, `chunk_len` their
  length C.
  """
  batches: Sequence
  valid: Sequence
  chunks: List[int]
  num_chunks: int
  chunk_len: int
  steps: int  # Steps per epoch.

  def steps_after(self, c: int) -> int:
    """Steps of the epoch done once chunk c has run."""
    return min((c + 1) * self.chunk_len, self.steps)

  def is_last(self, c: int) -> bool:
    return c == self.num_chunks - 1


class Engine:
  """Places a run's data and state on its devices and runs its programs.

  In a run's order: `place` the dataset, `init_state` (or `restored`, for a
  checkpoint's), `start` on every process, `compile`; then per epoch
  `epoch_plan`, `train_chunk` for each chunk, `metrics` and `evaluate`.
  """

  def __init__(self, config, members: Sequence[members_lib.Member]):
    """Starts jax.distributed if asked and resolves --parallel (parallel.setup).

    Raises:
      UserError: a --parallel request these devices or members cannot run.
    """
    self.config = config
    self.members = tuple(members)
    num = len(self.members)
    self.par = parallel.setup(config, num_members=num)
    self._in_turn = replicas.in_turn(num)
    self._member_mesh = replicas.mesh(num)
    self._options = replicas.compiler_options(num)
    self.steps = self.chunk_len = 0  # Set by place().
    self.images = self.labels = self._plan = self._positions = self._valid = None
    self._eval = {}
    self._data_rng = None  # Set by init_state().
    self._chunk = self._evaluate = None  # Set by compile().

  # Processes.

  @property
  def is_main(self) -> bool:
    """Whether this process writes the run folder (process 0)."""
    return parallel.is_main()

  @property
  def log_prefix(self) -> str:
    return parallel.log_prefix()

  def main_first(self, fn: Callable):
    """fn() on process 0 first, then on the others (parallel.main_first)."""
    return parallel.main_first(fn)

  def description(self) -> Optional[str]:
    """A line on how the run spreads over devices, or None for one device."""
    if self.par.num_devices == 1:
      return None
    return (f"data parallel ({self.par.mode}) over {self.par.num_devices} "
            f"{jax.default_backend().upper()} devices")

  def environment(self) -> dict:
    """What config.json records of the devices, besides workdir.environment."""
    env = {"parallel": {"mode": self.par.mode, "devices": self.par.num_devices}}
    if self._member_mesh is not None:  # The members split over these devices.
      env["member_devices"] = self._member_mesh.devices.size
    if self._options:
      env["compiler_options"] = dict(sorted(self._options.items()))
    return env

  @property
  def axis_name(self) -> Optional[str]:
    """The collective axis the train step averages over (pmap), or None."""
    return self.par.axis_name

  # Data.

  def place(self, dataset, steps: int) -> None:
    """Puts the dataset on the devices and lays out epochs of `steps` steps.

    dataset: data.Dataset (uint8 images [N, 28, 28], int32 labels [N]).
    """
    config, put = self.config, self.par.replicate
    self.steps = steps
    self.images = put(dataset.train.images)
    self.labels = put(dataset.train.labels)
    splits = {"test": dataset.test}
    if len(dataset.val):
      splits["val"] = dataset.val
    self._eval = {
        name: (put(s.images), put(s.labels),
               *map(self.par.shard, batches_lib.eval_batches(
                   len(s), config.eval_batch_size, self.par.num_devices)))
        for name, s in splits.items()}
    num_chunks, self.chunk_len = batches_lib.chunk_plan(steps, config.chunk_steps)
    self._positions = np.arange(num_chunks * self.chunk_len).reshape(
        num_chunks, self.chunk_len)
    self._valid = self.par.replicate_chunks(self._positions < steps)
    self._plan = jax.jit(replicas.vmap(
        len(self.members), functools.partial(
            batches_lib.epoch_plan, n=len(dataset.train),
            batch_size=config.batch_size, num_chunks=num_chunks,
            chunk_len=self.chunk_len),
        in_axes=(0, None), out_axes=1))

  @property
  def splits(self) -> List[str]:
    """The evaluation splits: "test", and "val" when there is one."""
    return list(self._eval)

  # State.

  def init_state(self, create: Callable):
    """A fresh train state of every member, stacked [M, ...] (members.init_state).

    create: fn(init_rng, hparams=...) -> TrainState of one member
      (train.create_train_state). Also draws the members' data keys: both as
      a single run splits its seed.
    """
    init_rng, self._data_rng = members_lib.keys(self.members)
    return members_lib.init_state(self.members, create, init_rng, self.steps)

  def restored(self, state):
    """A state restored from a checkpoint, placed as the train chunk wants it."""
    return replicas.place_restored(state, self._member_mesh)

  def zero_sums(self) -> Dict[str, np.ndarray]:
    """Host zeros shaped like the metric sums: [] or [M] float32."""
    shape = () if len(self.members) == 1 else (len(self.members),)
    return {k: np.zeros(shape, np.float32) for k in SUM_KEYS}

  def start(self, state, start: resume.Start):
    """Process 0's state and start, on every process, the state on its devices."""
    position, sums = start.as_arrays(self.zero_sums())
    state, position, sums = parallel.from_main((state, position, sums))
    return self.par.replicate(state), resume.Start.from_arrays(position, sums)

  # Programs.

  def compile(self, state, train_chunk: Callable, evaluate: Callable) -> float:
    """Compiles the train chunk and wraps the evaluation; returns the seconds.

    train_chunk: one member's raw chunk (train.make_train_chunk(jit=False)).
    evaluate: one member's raw evaluation (train.make_evaluate(jit=False)).
    """
    start = time.perf_counter()
    num = len(self.members)
    chunk = replicas.train_chunk(train_chunk, num, self._in_turn,
                                 self._member_mesh)
    self._chunk = self.par.compile_train(
        chunk, state, self.images, self.labels,
        self.par.shard_chunks(self._plan(self._data_rng, 1))[0], self._valid[0],
        compiler_options=self._options)
    self._evaluate = self.par.wrap_evaluate(
        replicas.evaluate(evaluate, num, self._member_mesh))
    return time.perf_counter() - start

  def epoch_plan(self, epoch: int, steps_done: int = 0) -> EpochPlan:
    """The epoch's batches (a pure function of the data keys and `epoch`).

    steps_done: steps of it run before a resume; they are skipped.
    """
    batches = self.par.shard_chunks(self._plan(self._data_rng, epoch))
    valid = self._valid
    if steps_done:
      valid = self.par.replicate_chunks((self._positions < self.steps) &
                                        (self._positions >= steps_done))
    chunks = [c for c in range(len(self._positions))
              if (c + 1) * self.chunk_len > steps_done]
    return EpochPlan(batches, valid, chunks, len(self._positions),
                     self.chunk_len, self.steps)

  def initial_sums(self, partial: Optional[Dict[str, np.ndarray]] = None):
    """An epoch's metric sums before its first chunk: zeros or `partial`."""
    if partial is not None:
      return jax.tree.map(jnp.asarray, partial)
    return {k: jnp.zeros(()) for k in SUM_KEYS}

  def train_chunk(self, state, plan: EpochPlan, c: int, sums):
    """Runs chunk c of `plan`: (state, sums + the chunk's, bad).

    bad: host int32 [M] (or [1]), each member's first non-finite step or -1;
    reading it is the one wait for the device in each chunk.
    """
    state, chunk_sums, bad = self._chunk(state, self.images, self.labels,
                                         plan.batches[c], plan.valid[c])
    sums = jax.tree.map(jnp.add, sums, chunk_sums)
    return state, sums, np.asarray(jax.device_get(bad)).reshape(-1)

  def metrics(self, sums) -> dict:
    """Metric sums as host means (members.host_metrics)."""
    return members_lib.host_metrics(sums)

  def evaluate(self, state, split: str) -> dict:
    """Host metrics of `state` on a split ("val" or "test")."""
    return members_lib.host_metrics(
        self._evaluate(state.params, *self._eval[split]))

  def step(self, state) -> int:
    """The state's global step, as a host number (the largest member's).

    Read on the host: a jnp.max over split members' steps would be a
    cross-device all-reduce, which before the first chunk of a resumed run
    could time out on a split CPU host.
    """
    return int(np.max(jax.device_get(self.par.unreplicate(state.step))))

  def host_copy(self, state):
    """This process's copy of the state, for a checkpoint."""
    return self.par.unreplicate(state)

  def member_params(self, state, i: int = 0):
    """Member i's parameters, on one device."""
    params = self.par.unreplicate(state.params)
    if len(self.members) > 1:
      params = jax.tree.map(lambda p: p[i], params)
    return params

  def stacked_params(self, state, indices: Sequence[int]):
    """The parameters of members `indices`, stacked [len(indices), ...] on the host."""
    params = jax.device_get(self.par.unreplicate(state.params))
    if len(self.members) == 1:
      return jax.tree.map(lambda p: np.stack([p] * len(indices)), params)
    return jax.tree.map(lambda p: np.asarray(p)[np.asarray(indices)], params)

  def num_params(self, state) -> int:
    """Parameters of one member."""
    leaves = jax.tree.leaves(self.par.unreplicate(state.params))
    return int(sum(p.size for p in leaves) // len(self.members))

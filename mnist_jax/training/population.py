"""A run's members on its devices, as one object the loop calls: train.py's
one-model functions mapped over the members (members.py) and laid out over
the devices (devices.Layout), jitted once, the data placed once; the loop
gets host values back (metric sums, Diverged, the metrics.jsonl rows)."""

import functools
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import optim
from mnist_jax.data import augment as augment_lib
from mnist_jax.errors import UserError
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax.training import train
from mnist_jax.training.devices import MEMBER, NUMBER, SHARED


def steps_per_epoch(config, num_train: int) -> int:
  """The optimizer steps of an epoch: every full batch of the training split
  (the one place they are counted; the schedule and the chunks read it)."""
  if config.batch_size > num_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{num_train} training examples; pass a smaller one")
  return num_train // config.batch_size


# A chunk (the steps of one call, between which the run prints progress and
# may stop) lasts about this long, at most --chunk_steps steps: a stop asked
# for is honoured within it, whatever the model, chunk or member count.
CHUNK_S = 2.0
FIRST_CHUNK = 8  # Steps of the first chunk, which times them.


# The initializer compiles in about half the time with LLVM at -O1 on CPU, to
# the bits of XLA's default level (tests/test_sweep.py holds it for every
# preset of a model of each module class).
INIT_OPTIONS = {"cpu": {"xla_backend_optimization_level": 1}}
COPY_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def initial_state(config, model, steps: int, image_shape) -> train.TrainState:
  """Every member's fresh state, stacked [M, ...] for M > 1, for images
  [H, W, C] and epochs of `steps`: training's start, and (under
  jax.eval_shape) the template report and predict restore into. Each is
  jitted on its own: its single run's bits."""
  members = members_lib.from_config(config)
  create = functools.partial(
      train.create_train_state, model=model, dtype=config.dtype,
      tx=optim.make_optimizer(config, steps, config.sweep_grid()),
      image_shape=tuple(image_shape))
  one = jax.jit(create,
                compiler_options=INIT_OPTIONS.get(jax.default_backend()))
  keys = [jax.random.key(m.seed) for m in members]
  # Under jax.eval_shape (a restore's template) a nested jit takes no options.
  traced = isinstance(keys[0], jax.core.Tracer)
  states = [(jax.jit(create) if traced else one)(k) for k in keys]
  states = [s.replace(opt_state=optim.with_hyperparams(s.opt_state, m.config))
            for s, m in zip(states, members)]
  if len(states) == 1:
    return states[0]
  stack = lambda *s: jax.tree.map(lambda *leaves: jnp.stack(leaves), *s)
  if traced:
    return stack(*states)
  # One program (eager jnp.stack compiles once for each leaf's shape); a
  # copy, so the same bits at LLVM's -O0, which compiles small states sooner.
  return jax.jit(stack, compiler_options=COPY_OPTIONS.get(
      jax.default_backend()))(*states)


class Population:
  """Every member of `config` training `model` (a Flax module) on `data`
  (pipeline.Dataset) over the run's devices; `say` prints its lines."""

  def __init__(self, config, model, data, say: Callable[[str], None] = print):
    self.config, self.model, self.say = config, model, say
    self.members = members_lib.from_config(config)
    self.layout = layout = devices.Layout(config, model, len(self.members), say)
    self.steps = steps_per_epoch(config, len(data.train))
    self.chunk_len = min(config.chunk_steps, self.steps)  # At most.
    self.step_s = None  # A step's seconds, as the last chunk took them.
    self.image_shape = tuple(data.train.images.shape[1:])
    self.test_size = len(data.test)
    self.splits = {name: layout.put(split) for name, split in
                   (("train", data.train), ("val", data.val),
                    ("test", data.test)) if len(split)}
    placed: Dict[str, Any] = dict(axis_name=layout.axis_name,
                                  batch_sharding=layout.batch_sharding)
    loss = train.LOSSES[config.loss]
    swept = members_lib.per_member(self.members, loss.reads)
    numbers = {n: getattr(config, n) for n in loss.reads if n not in swept}
    # Each member's batches of an epoch (train.epoch_order), placed.
    self.epoch_order = layout.map(functools.partial(
        train.epoch_order, n=len(data.train), steps=self.steps,
        batch_size=config.batch_size), (MEMBER, NUMBER), donate=False)
    self.program = layout.map(functools.partial(
        train.train_chunk, loss=loss, augment=augment_lib.from_config(config),
        **numbers, **placed),
        (MEMBER, MEMBER, MEMBER, SHARED, SHARED, NUMBER, NUMBER), swept)
    lead = (len(self.members),) if len(self.members) > 1 else ()
    self._zeros = metrics.zeros(lead=lead, host=True,
                                num_classes=len(data.class_names))
    self._evaluate, self._test = (layout.map(functools.partial(
        train.evaluate, with_logits=logits, **placed,
        batch_size=layout.eval_batch_size(config.eval_batch_size)),
        (MEMBER, SHARED, SHARED), donate=False) for logits in (False, True))
    schedule = optim.schedule(config, self.steps)
    self._rate = layout.map(lambda state: optim.learning_rate(
        state.opt_state, schedule), (MEMBER,), donate=False)
    self.compile_s = 0.0  # The seconds `place` compiled `program` in.

  def record(self) -> Dict:
    """How the run is laid out over the devices, for config.json."""
    return {"parallel": self.layout.record()}

  def init_state(self) -> train.TrainState:
    """Every member's fresh state, on the host ([M, ...] for M > 1)."""
    return initial_state(self.config, self.model, self.steps, self.image_shape)

  def place(self, state, status: Callable[[str], None] = lambda text: None):
    """`state` (fresh, or a checkpoint's) on the devices, and the train chunk
    compiled for it (`compile_s`; pmap over several processes compiles on
    its first call, for local shapes)."""
    state = self.layout.put_state(state)
    began = time.perf_counter()
    if self.layout.mode != "pmap" or jax.process_count() == 1:
      cached = jax.config.jax_compilation_cache_dir  # JAX_COMPILATION_CACHE_DIR
      status("compiling the train step" + (
          " (the compilation cache keeps it for the next run)"
          if cached else ""))
      self.program = self.program.lower(
          state, self.layout.put_state(self._zeros),
          self.epoch_order(state, 1), *self.splits["train"], 0, 1).compile()
    self.compile_s = time.perf_counter() - began
    return state

  def train_chunk(self, state, order, epoch: int, first: int,
                  sums: Optional[Dict[str, np.ndarray]] = None):
    """A chunk of `epoch` from step `first`, whose `order` is
    `epoch_order`'s: about CHUNK_S seconds of steps, at most `chunk_len`.
    Returns (the state, the epoch's metric sums so far on the host (`sums`,
    none: zeros, and the chunk's; [M] per sum for M > 1), the next step).
    Says which members diverged; raises Diverged once every member has."""
    count = min(self.steps - first, self.chunk_len, FIRST_CHUNK
                if self.step_s is None else max(1, int(CHUNK_S / self.step_s)))
    began = time.perf_counter()
    state, sums, bad = self.program(
        state, self.layout.put_state(self._zeros if sums is None else sums),
        order, *self.splits["train"], first, count)
    bad = self.layout.host(bad).reshape(-1)  # Waits for the chunk.
    self.step_s = (time.perf_counter() - began) / count
    members_lib.check_divergence(self.members, bad, epoch, first, self.steps,
                                 self.say)
    return state, self.layout.host(sums), first + count

  def end_epoch(self, state, epoch: int, sums, **fields
                ) -> Tuple[Dict, Optional[List[Dict]]]:
    """(The epoch's metrics.jsonl row with `fields`, each member's
    validation metrics or None): Diverged where every member's train or
    validation metrics are not finite."""
    val = self._metrics(state, "val")
    train_metrics = members_lib.host_metrics(sums)
    members_lib.check_finite(self.members, {"train": train_metrics, "val": val},
                             epoch, epoch * self.steps, self.steps)
    return members_lib.epoch_row(
        self.members, epoch, epoch * self.steps, train_metrics, val,
        self.layout.host(self._rate(state)), **fields), val

  def test(self, state, val: Optional[List[Dict]], epochs_run: int):
    """(The final row, each member's test logits [M, N, K]), the member
    chosen by `val` (each member's validation metrics; None: evaluated
    here, where no epoch ran)."""
    if val is None:
      val = self._metrics(state, "val")
    test, logits = self.layout.host(self._test(state, *self.splits["test"]))
    test = members_lib.host_metrics(test)
    step = int(np.max(self.layout.host(state.step)))
    members_lib.check_finite(self.members, {"test": test}, epochs_run, step,
                             self.steps)
    final = members_lib.final_row(
        self.members, test, val, epochs_run=epochs_run, steps=step,
        compile_time_s=self.compile_s,
        num_params=self.layout.num_params(state))
    return final, logits.reshape(len(self.members), -1, logits.shape[-1])[
        :, :self.test_size]

  def get(self, state):
    """One copy of a placed state (no pmap axis): what the loop returns and a
    run folder saves."""
    return self.layout.unreplicated(state)

  def _metrics(self, state, split: str) -> Optional[List[Dict]]:
    """Each member's metrics on `split`, or None where it is empty."""
    if split not in self.splits:
      return None
    return members_lib.host_metrics(
        self.layout.host(self._evaluate(state, *self.splits[split])))

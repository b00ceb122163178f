"""The loop: every member of a config trained on a dataset and evaluated.

`train_and_evaluate(config, data, model)` makes each thing once and hands it
on: the members (members.py) and the device layout (devices.py) wrap
train.py's one-model functions from outside; the run folder is a `Hooks`
object (modes.py), and the loop imports none of it.
"""

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import optim
from mnist_jax.data import augment as augment_lib
from mnist_jax.data import datasets
from mnist_jax.errors import UserError
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax.training import train
from mnist_jax.training.devices import MEMBER, NUMBER, SHARED


@dataclasses.dataclass(frozen=True)
class Start:
  """Where training begins: the epoch, its steps run and their metric sums
  (a checkpoint taken mid-epoch), whether training had ended."""
  epoch: int = 1
  epoch_step: int = 0
  sums: Optional[Dict[str, np.ndarray]] = None
  finished: bool = False


class Hooks:
  """What a run does besides training, called by the loop. These print on
  `stream` (stderr: stdout stays the caller's) what it is doing (`status`:
  compiling, progress every PROGRESS_S seconds, drawn in place on a
  terminal), a line per epoch, and what it has to say (`message`).
  modes.py's RunFolder restores, saves, logs and stops through them."""
  PROGRESS_S = 10.0
  stream = None  # None: sys.stderr.
  prefix = ""  # "[process 1/2] " in a job of several processes.
  epochs: Optional[int] = None  # Where known: "epoch 2/5", the time left.
  steps: Optional[int] = None  # Steps per epoch, from `start`.
  _began = None  # (epoch, its steps run, time) as this process began it.
  _said = 0.0  # When progress was last printed (or the epoch began).
  _drawn = False  # A line drawn in place, which the next one replaces.
  test_logits: Optional[np.ndarray] = None  # From `tested`.

  def start(self, state, steps_per_epoch: int, record: Dict[str, Any]):
    """(state, Start): a fresh run's, or a checkpoint's. record: how the run
    is laid out over the devices, for config.json."""
    del record
    self.steps = steps_per_epoch
    return state, Start()

  def _terminal(self) -> bool:
    stream = self.stream or sys.stderr
    return stream.isatty() and os.environ.get("TERM") != "dumb"

  def say(self, text: str, in_place: bool = False) -> None:
    """Prints a line; `in_place`: on a terminal, where the next replaces it."""
    stream, drawn = self.stream or sys.stderr, in_place and self._terminal()
    stream.write(("\r\033[K" if self._drawn else "") + self.prefix + text +
                 ("" if drawn else "\n"))
    stream.flush()
    self._drawn = drawn

  def end_line(self) -> None:
    """Ends a line drawn in place: what follows (a stop, an error) starts a
    line of its own."""
    if self._drawn:
      (self.stream or sys.stderr).write("\n")
      self._drawn = False

  def message(self, text: str) -> None:
    self.say(text)

  def status(self, text: str) -> None:
    """What the run is doing now."""
    self.say(text, in_place=True)

  def chunk(self, state, epoch: int, done: int, sums) -> None:
    """Before each chunk (`done` steps of `epoch` run): may save and stop."""
    now = time.monotonic()
    if self._began is None or self._began[0] != epoch:
      self._began, self._said = (epoch, done, now), now
    elif now - self._said >= (0 if self._terminal() else self.PROGRESS_S):
      self._said, (_, first, began) = now, self._began
      left = (now - began) / (done - first) * (
          self.steps * ((self.epochs or epoch) - epoch + 1) - done)
      self.status(f"epoch {epoch}{self._of()}: {done}/{self.steps} steps, "
                  f"{_duration(now - began)}, about {_duration(left)} left")

  def epoch(self, state, row: Dict[str, Any], last: bool) -> None:
    """After each epoch, with its metrics.jsonl row."""
    leader = row.get("leader")
    text = f"epoch {row['epoch']}{self._of()}: train {_scores(row, 'train')}"
    if row.get("val_accuracy") is not None:
      text += f", val {_scores(row, 'val')}"
    if leader:  # Several members: whose numbers these are.
      text += (" (leading: "
               f"{members_lib.values_text(leader['values'], leader['seed'])})")
    partial = (f" (partial epoch: {row['partial_steps']} of {self.steps} "
               "steps)" if row.get("partial_steps") else "")
    self.say(f"{text}; {row['epoch_time_s']:.1f}s{partial}, "
             f"{row['examples_per_s']:,.0f} examples/s")

  def _of(self) -> str:
    return f"/{self.epochs}" if self.epochs else ""

  def diverged(self, row: Dict[str, Any]) -> None:
    """Before a divergence is raised."""

  def tested(self, logits: np.ndarray) -> None:
    """After the test split's evaluation: keeps each member's logits [M, N,
    K] as `test_logits` (the run folder's ensemble and report reuse them)."""
    self.test_logits = logits


def _scores(row: Dict[str, Any], split: str) -> str:
  """`loss 0.1234 acc 97.50%`: the split's console metrics (metrics.py)."""
  return " ".join(f"{m.console} {m.text(row.get(f'{split}_{m.name}'))}"
                  for m in metrics.of(split) if m.console)


def _duration(seconds: float) -> str:
  """12s, 3m05s, 1h02m."""
  s = max(0, round(seconds))
  return (f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else
          f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def steps_per_epoch(config, num_train: int) -> int:
  """The optimizer steps of an epoch: every full batch of the training split
  (the one place they are counted; the schedule and the chunks read it)."""
  if config.batch_size > num_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{num_train} training examples; pass a smaller one")
  return num_train // config.batch_size


def chunk_len(steps: int, most: int) -> int:
  """Steps per chunk: equal chunks of at most `most` covering `steps`,
  padded by fewer steps than there are chunks."""
  return -(-steps // -(-steps // most))


def initial_state(config, model, steps_per_epoch: int = 1,
                  image_shape=None) -> train.TrainState:
  """Every member's fresh state, stacked [M, ...] for M > 1: training's start,
  and (under jax.eval_shape) the template report and predict restore into.
  image_shape: [H, W, C], by default the config's dataset's."""
  tx = optim.make_optimizer(config, steps_per_epoch, members_lib.swept(config))
  return members_lib.init_state(
      members_lib.from_config(config), functools.partial(
          train.create_train_state, model=model, tx=tx, dtype=config.dtype,
          image_shape=image_shape or datasets.get(config.dataset).image_shape))


def train_and_evaluate(config, data, model, hooks: Optional[Hooks] = None):
  """Trains `model` (a Flax module: models.build's choice) as every member
  of `config` on `data` (pipeline.Dataset), evaluates on test; `hooks`: the
  run folder, or None. Returns (the state, stacked [M, ...] if M > 1; the
  final row); raises Diverged once every member has."""
  hooks = hooks or Hooks()
  start_time = time.perf_counter()
  members = members_lib.from_config(config)
  layout = devices.Layout(config, model, len(members), hooks.message)
  steps = steps_per_epoch(config, len(data.train))
  state = initial_state(config, model, steps, data.train.images.shape[1:])
  state, start = hooks.start(state, steps, {"parallel": layout.record()})
  state = layout.put_state(state)
  splits = {name: layout.put(split) for name, split in
            (("train", data.train), ("val", data.val), ("test", data.test))
            if len(split)}
  length = chunk_len(steps, config.chunk_steps)
  placed = dict(axis_name=layout.axis_name,
                batch_sharding=layout.batch_sharding)
  order_fn = layout.map(functools.partial(
      train.epoch_order, n=len(data.train), steps=steps,
      batch_size=config.batch_size), (MEMBER, NUMBER), donate=False)
  train_fn = layout.map(functools.partial(
      train.train_chunk, chunk_len=length,
      multiplier=optim.schedule(config, steps),
      label_smoothing=config.label_smoothing,
      augment=augment_lib.from_config(config), **placed),
                        (MEMBER, MEMBER, SHARED, SHARED, NUMBER),
                        members_lib.per_member(members))
  evaluate_fn, test_fn = (layout.map(functools.partial(
      train.evaluate, batch_size=layout.eval_batch_size(config.eval_batch_size),
      with_logits=logits, **placed), (MEMBER, SHARED, SHARED), donate=False)
                          for logits in (False, True))
  compile_start = time.perf_counter()
  # (pmap of several processes compiles for local shapes, on its first call.)
  if layout.mode != "pmap" or jax.process_count() == 1:
    cached = jax.config.jax_compilation_cache_dir  # JAX_COMPILATION_CACHE_DIR
    hooks.status(f"compiling the train step ({length}-step chunks"
                 + ("; the compilation cache keeps it for the next run)"
                    if cached else ")"))
    train_fn = train_fn.lower(state, order_fn(state, 1), *splits["train"], 0
                              ).compile()
  compile_time = time.perf_counter() - compile_start

  def evaluate_split(state, name):
    return members_lib.host_metrics(
        layout.host(evaluate_fn(state, *splits[name])))

  row, reached, val = None, False, None
  for epoch in range(start.epoch, 1 if start.finished else config.epochs + 1):
    done = start.epoch_step if epoch == start.epoch else 0
    sums = layout.put_state(start.sums) if done else None
    epoch_start = time.perf_counter()
    order = order_fn(state, epoch)
    for first in range(done, steps, length):
      hooks.chunk(layout.unreplicated(state), epoch, first,
                  layout.unreplicated(sums))
      state, chunk_sums, bad, rate = train_fn(state, order,
                                              *splits["train"], first)
      sums = chunk_sums if sums is None else jax.tree.map(jnp.add, sums,
                                                          chunk_sums)
      members_lib.check_divergence(members, layout.host(bad).reshape(-1),
                                   epoch, first, steps, hooks)
    seconds = time.perf_counter() - epoch_start
    val = evaluate_split(state, "val") if "val" in splits else None
    train_metrics = members_lib.host_metrics(layout.host(sums))
    members_lib.check_finite(members, {"train": train_metrics, "val": val},
                             epoch, epoch * steps, steps, hooks)
    row = members_lib.epoch_row(
        members, epoch, epoch * steps, train_metrics, val, layout.host(rate),
        epoch_time_s=seconds,
        examples_per_s=(steps - done) * config.batch_size / seconds,
        elapsed_s=time.perf_counter() - start_time,
        **({"partial_steps": steps - done} if done else {}))
    reached = bool(config.target_accuracy and
                   row["val_accuracy"] >= config.target_accuracy)
    hooks.epoch(layout.unreplicated(state), row,
                last=reached or epoch == config.epochs)
    if reached:
      accuracy, target = row["val_accuracy"], config.target_accuracy
      hooks.message(f"reached validation accuracy {100 * accuracy:.2f}% >= "
                    f"{100 * target:.2f}% after epoch {epoch} in "
                    f"{row['elapsed_s']:.1f}s")
      break

  if row is None and "val" in splits:  # No epoch ran: a finished run's.
    val = evaluate_split(state, "val")
  test, logits = layout.host(test_fn(state, *splits["test"]))
  test = members_lib.host_metrics(test)
  hooks.tested(logits.reshape(len(members), -1, logits.shape[-1])[
      :, :len(data.test)])
  last_step = int(np.max(layout.host(state.step)))
  epochs_run = row["epoch"] if row else start.epoch - 1
  members_lib.check_finite(members, {"test": test}, epochs_run, last_step,
                           steps, hooks)
  final = members_lib.final_row(
      members, test, val, epochs_run=epochs_run, steps=last_step,
      compile_time_s=compile_time, num_params=layout.num_params(state),
      wall_time_s=time.perf_counter() - start_time)
  if reached:
    final["time_to_target_s"] = row["elapsed_s"]
  return layout.unreplicated(state), final

"""The loop: every member of a config trained on a dataset and evaluated.

`train_and_evaluate(config, data, model)` reads top to bottom: the members
on the devices (population.Population), their state, epochs of chunks with a
validation pass after each, the test pass, the rows. It trains the module it
is given (models.build's choice); the run folder is a `Hooks` object
(modes.py). The loop imports neither.
"""

import dataclasses
import os
import sys
import time
from typing import Any, Dict, Optional

import numpy as np

from mnist_jax.errors import Diverged
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax.training import population


@dataclasses.dataclass(frozen=True)
class Start:
  """Where training begins: the epoch, its steps run and their metric sums
  (a checkpoint taken mid-epoch), whether training had ended."""
  epoch: int = 1
  epoch_step: int = 0
  sums: Optional[Dict[str, np.ndarray]] = None
  finished: bool = False


class Hooks:
  """What a run does besides training, called by the loop: these print on
  `stream` (stderr) its `status` (progress every PROGRESS_S seconds, in
  place on a terminal), a line per epoch and its `message`s; modes.py's
  RunFolder restores, saves, logs and stops through them."""
  PROGRESS_S = 10.0
  stream = None  # None: sys.stderr.
  prefix = ""  # "[process 1/2] " in a job of several processes.
  epochs: Optional[int] = None  # Where known: "epoch 2/5", the time left.
  steps: Optional[int] = None  # Steps per epoch, from `start`.
  _began = None  # (epoch, its steps run, time) as this process began it.
  _said = 0.0  # When progress was last printed (or the epoch began).
  _drawn = False  # A line drawn in place, which the next one replaces.
  test_logits: Optional[np.ndarray] = None  # From `tested`.

  def start(self, state, run: population.Population):
    """(state, Start): a fresh run's, or a checkpoint's; `run`: its members
    on its devices (its steps per epoch, its record, `run.get(state)`)."""
    self.steps = run.steps
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


def train_and_evaluate(config, data, model, hooks: Optional[Hooks] = None):
  """Trains `model` (a Flax module: models.build's choice) as every member
  of `config` on `data` (pipeline.Dataset), evaluates on test; `hooks`: the
  run folder, or None. Returns (the state, stacked [M, ...] if M > 1; the
  final row); raises Diverged once every member has."""
  hooks = hooks or Hooks()
  began = time.perf_counter()
  run = population.Population(config, model, data, hooks.message)
  state, start = hooks.start(run.init_state(), run)
  state = run.place(state, hooks.status)
  row: Dict[str, Any] = {}
  val, reached = None, False
  try:
    for epoch in range(start.epoch,
                       1 if start.finished else config.epochs + 1):
      done = start.epoch_step if epoch == start.epoch else 0
      sums = start.sums if done else None
      epoch_began = time.perf_counter()
      order, first = run.epoch_order(state, epoch), done
      while first < run.steps:
        hooks.chunk(state, epoch, first, sums)
        state, sums, first = run.train_chunk(state, order, epoch, first, sums)
      seconds = time.perf_counter() - epoch_began
      row, val = run.end_epoch(
          state, epoch, sums, epoch_time_s=seconds,
          examples_per_s=(run.steps - done) * config.batch_size / seconds)
      row.update(elapsed_s=time.perf_counter() - began,
                 **({"partial_steps": run.steps - done} if done else {}))
      reached = bool(config.target_accuracy and
                     row["val_accuracy"] >= config.target_accuracy)
      hooks.epoch(state, row, last=reached or epoch == config.epochs)
      if reached:
        hooks.message(f"reached validation accuracy "
                      f"{100 * row['val_accuracy']:.2f}% >= "
                      f"{100 * config.target_accuracy:.2f}% after epoch "
                      f"{epoch} in {row['elapsed_s']:.1f}s")
        break
    final, logits = run.test(state, val, row["epoch"] if row
                             else start.epoch - 1)
  except Diverged as e:
    hooks.diverged(e.row)
    raise
  final["wall_time_s"] = time.perf_counter() - began
  if reached:
    final["time_to_target_s"] = row["elapsed_s"]
  hooks.tested(logits)
  return run.get(state), final

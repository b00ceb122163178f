"""Training: the state, the steps, the scanned chunk, evaluation, the loop.

The data stays on the device (uint8): nothing per step runs on the host.
devices.Layout maps these one-model functions over members and devices; the
run folder (rundir/) is a `Hooks` object, and the loop imports none of it."""

import dataclasses
import functools
import sys
import time
from typing import Any, Callable, Dict, Optional

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models
from mnist_jax.data import augment as augment_lib
from mnist_jax.data import datasets
from mnist_jax.errors import UserError
from mnist_jax.models import precision
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics as metrics_lib
from mnist_jax import optim

STREAMS = ("dropout", "augment", "data")  # The random streams after init.


class TrainState(train_state.TrainState):
  """flax's TrainState, the model's other variable collections (`model_state`,
  e.g. {"batch_stats": ...}) and the random streams (`keys`: STREAMS -> key)."""
  model_state: Any
  keys: Any

  @property
  def variables(self) -> Dict[str, Any]:
    """What `apply_fn` takes: {"params": ..., **model_state}."""
    return {"params": self.params, **self.model_state}


def create_train_state(key: jax.Array, model, tx, image_shape,
                       dtype: str = "float32") -> TrainState:
  """A fresh state: `key` (the seed's) split once into init and STREAMS;
  the model computes in `dtype`, its variables stay float32."""
  init_key, *streams = jax.random.split(key, 1 + len(STREAMS))
  variables = dict(model.init(init_key,
                              jnp.zeros((1, *image_shape), jnp.uint8)))
  params = variables.pop("params")
  return TrainState.create(
      apply_fn=precision.cast_apply(model.apply, dtype), params=params, tx=tx,
      model_state=variables, keys=dict(zip(STREAMS, streams)))


def initial_state(config, model, steps_per_epoch: int = 1,
                  image_shape=None) -> TrainState:
  """Every member's fresh state, stacked [M, ...] for M > 1: training's start,
  and (under jax.eval_shape) the template report and predict restore into.
  image_shape: [H, W(, C)], by default the config's dataset's."""
  tx = optim.make_optimizer(config, steps_per_epoch, members_lib.swept(config))
  return members_lib.init_state(
      members_lib.from_config(config), functools.partial(
          create_train_state, model=model, tx=tx, dtype=config.dtype,
          image_shape=image_shape or datasets.get(config.dataset).image_shape))


def cross_entropy(logits, labels, label_smoothing=0.0):
  """(plain [B], smoothed [B]) cross entropy of logits [B, K], labels [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    return nll, nll
  return nll, (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *,
               label_smoothing=0.0, augment: Optional[Callable] = None,
               axis_name: Optional[str] = None):
  """One optimizer step on batch {"image" [B, H, W] uint8, "label" [B],
  "valid" [] bool}; returns (state, the batch's metric sums). An invalid step
  (padding) is a masked update, no branch. Under pmap (`axis_name`) each
  device draws its own dropout masks and the gradients are averaged."""
  keys = [jax.random.fold_in(state.keys[s], state.step)
          for s in ("dropout", "augment")]
  if axis_name is not None:
    keys = [jax.random.fold_in(k, jax.lax.axis_index(axis_name)) for k in keys]
  dropout, aug = keys
  images = batch["image"] if augment is None else augment(aug, batch["image"])

  def loss_fn(params):
    logits, model_state = state.apply_fn(
        {"params": params, **state.model_state}, images, train=True,
        rngs={"dropout": dropout}, mutable=list(state.model_state))
    nll, smoothed = cross_entropy(logits, batch["label"], label_smoothing)
    return smoothed.mean(), (logits, nll, model_state)

  grads, (logits, nll, model_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  if axis_name is not None:
    grads, model_state = jax.lax.pmean((grads, model_state), axis_name)
  new = state.apply_gradients(grads=grads, model_state=model_state)
  state = jax.tree.map(lambda a, b: jnp.where(batch["valid"], a, b), new, state)
  mask = jnp.full(nll.shape, batch["valid"], jnp.float32)
  sums = metrics_lib.batch_sums(logits, batch["label"], nll, mask)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return state, sums


def epoch_order(state: TrainState, epoch, *, n: int, batch_size: int):
  """The epoch's batches of example indices [n // batch_size, batch_size]: a
  function of the data key and the epoch only, so a resumed run replays them."""
  steps = n // batch_size
  key = jax.random.fold_in(state.keys["data"], epoch)
  return jax.random.permutation(key, n)[:steps * batch_size].reshape(
      steps, batch_size)


def _batches(images, labels, idx, axis_name, batch_sharding):
  """(S batches of the examples idx [S, B] of a split, the indices): under
  pmap this device's columns; images split over the mesh by batch_sharding."""
  if axis_name is not None:
    part = idx.shape[1] // jax.lax.psum(1, axis_name)
    idx = jax.lax.dynamic_slice_in_dim(
        idx, jax.lax.axis_index(axis_name) * part, part, axis=1)
  taken = jnp.minimum(idx, len(labels) - 1)
  batch = {"image": images[taken], "label": labels[taken]}
  if batch_sharding is not None:
    batch["image"] = jax.lax.with_sharding_constraint(batch["image"],
                                                      batch_sharding)
  return batch, idx


def train_chunk(state: TrainState, order, images, labels, first, *,
                chunk_len: int, multiplier, label_smoothing=0.0, augment=None,
                axis_name=None, batch_sharding=None):
  """Steps first .. first + chunk_len - 1 of the epoch's `order` as one
  `lax.scan` on the training split (images [N, H, W] uint8, labels [N]);
  steps past the epoch's end are masked padding. Returns (state, metric sums,
  the first step whose loss was not finite or -1, the next learning rate)."""
  steps = order.shape[0]
  idx = jax.lax.dynamic_slice_in_dim(
      jnp.pad(order, ((0, chunk_len), (0, 0))), first, chunk_len)
  batch, _ = _batches(images, labels, idx, axis_name, batch_sharding)
  batch["valid"] = first + jnp.arange(chunk_len) < steps
  start, diverged = state.step, ~_finite(state.params)
  state, sums = jax.lax.scan(
      functools.partial(train_step, label_smoothing=label_smoothing,
                        augment=augment, axis_name=axis_name), state, batch)
  finite = jnp.isfinite(sums["loss"]) | ~batch["valid"]
  first_bad = jnp.where(finite.all(), -1, start + 1 + jnp.argmin(finite))
  # A member that diverged before (its step at the start), or whose last
  # update overflowed with a finite loss (its step now).
  first_bad = jnp.where(diverged, start, jnp.where(
      (first_bad < 0) & ~_finite(state.params), state.step, first_bad))
  sums = jax.tree.map(lambda s: s.sum(0), sums)
  return (state, sums, first_bad.astype(jnp.int32),
          optim.learning_rate(state.opt_state, multiplier))


def _finite(params) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(p).all()
                            for p in jax.tree.leaves(params)]))


def eval_step(state: TrainState, batch: Dict[str, jax.Array]):
  """Metric sums over the examples of a batch where "mask" is 1."""
  logits = state.apply_fn(state.variables, batch["image"], train=False)
  nll, _ = cross_entropy(logits, batch["label"])
  return metrics_lib.batch_sums(logits, batch["label"], nll, batch["mask"],
                                metrics_lib.EVAL)


def evaluate(state: TrainState, images, labels, *, batch_size: int,
             axis_name=None, batch_sharding=None):
  """Metric sums of `state` on every example of a split (images [N, H, W]
  uint8, labels [N]): the last batch is padded and masked, never dropped."""
  count = -(-len(labels) // batch_size)
  batch, idx = _batches(
      images, labels, jnp.arange(count * batch_size).reshape(count, batch_size),
      axis_name, batch_sharding)
  batch["mask"] = (idx < len(labels)).astype(jnp.float32)
  sums = jax.lax.map(functools.partial(eval_step, state), batch)
  sums = jax.tree.map(lambda s: s.sum(0), sums)
  return sums if axis_name is None else jax.lax.psum(sums, axis_name)


@dataclasses.dataclass(frozen=True)
class Start:
  """Where training begins: the epoch, its steps run and their metric sums
  (a checkpoint taken mid-epoch), whether training had ended."""
  epoch: int = 1
  epoch_step: int = 0
  sums: Optional[Dict[str, np.ndarray]] = None
  finished: bool = False


class Hooks:
  """What a run does besides training, called by the loop; these print what
  it is doing (`status`: compiling, a line per epoch, progress every
  PROGRESS_S seconds) and what it has to say (`message`).
  modes.py's RunFolder restores, saves, logs and stops through them."""
  PROGRESS_S = 10.0
  _steps: Optional[int] = None  # Steps per epoch, from `start`.
  _said: Optional[float] = None  # When progress was last printed.

  def start(self, state, steps_per_epoch: int, record: Dict[str, Any]):
    """(state, Start): a fresh run's, or a checkpoint's. record: how the run
    is laid out (layer implementation, devices), for config.json."""
    del record
    self._steps = steps_per_epoch
    return state, Start()

  def message(self, text: str) -> None:
    print(text, flush=True)

  def status(self, text: str) -> None:
    """What the run is doing now (on stderr, as progress goes: stdout stays
    the caller's)."""
    print(text, file=sys.stderr, flush=True)

  def chunk(self, state, epoch: int, done: int, sums) -> None:
    """Before each chunk (`done` steps of `epoch` run): may save and stop."""
    now = time.monotonic()
    if self._said is None:
      self._said = now
    elif done and now - self._said >= self.PROGRESS_S:
      self._said = now
      self.status(f"epoch {epoch}: {done}/{self._steps or '?'} steps")

  def epoch(self, state, row: Dict[str, Any], last: bool) -> None:
    """After each epoch, with its metrics.jsonl row."""
    self._said = time.monotonic()
    val = ("" if row.get("val_accuracy") is None else
           f", validation {100 * row['val_accuracy']:.2f}%")
    self.status(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                f"accuracy {100 * row['train_accuracy']:.2f}%{val} "
                f"({row['epoch_time_s']:.1f}s)")

  def diverged(self, row: Dict[str, Any]) -> None:
    """Before a divergence is raised."""


def steps_per_epoch(config, num_train: int) -> int:
  if config.batch_size > num_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{num_train} training examples; pass a smaller one")
  return num_train // config.batch_size


def chunk_len(steps: int, most: int) -> int:
  """Steps per chunk: equal chunks of at most `most` covering `steps`,
  padded by fewer steps than there are chunks."""
  return -(-steps // -(-steps // most))


def train_and_evaluate(config, data, hooks: Optional[Hooks] = None):
  """Trains every member of `config` on `data` (pipeline.Dataset), evaluates
  on test; `hooks`: the run folder, or None. Returns (the state, stacked
  [M, ...] if M > 1; the final row); raises Diverged once every member has."""
  hooks = hooks or Hooks()
  start_time = time.perf_counter()
  members = members_lib.from_config(config)
  layout = devices.Layout(config, len(members), hooks.message)
  model, implementation = models.build(config, hooks.message, hooks.status)
  steps = steps_per_epoch(config, len(data.train))
  state = initial_state(config, model, steps, data.train.images.shape[1:])
  state, start = hooks.start(state, steps, {
      "implementation": implementation, "parallel": layout.record()})
  state = layout.put_state(state)
  splits = {name: layout.put(split) for name, split in
            (("train", data.train), ("val", data.val), ("test", data.test))
            if len(split)}
  length = chunk_len(steps, config.chunk_steps)
  placed = dict(axis_name=layout.axis_name,
                batch_sharding=layout.batch_sharding)
  order_fn = layout.map(functools.partial(
      epoch_order, n=len(data.train), batch_size=config.batch_size),
                        donate=False)
  train = layout.map(functools.partial(
      train_chunk, chunk_len=length, multiplier=optim.schedule(config, steps),
      label_smoothing=config.label_smoothing,
      augment=augment_lib.from_config(config), **placed),
                     members_lib.per_member(members), mapped=2)
  evaluate_fn = layout.map(functools.partial(
      evaluate, batch_size=layout.eval_batch_size(config.eval_batch_size),
      **placed), donate=False)
  compile_start = time.perf_counter()
  # (pmap of several processes compiles for local shapes, on its first call.)
  if layout.mode != "pmap" or jax.process_count() == 1:
    cached = jax.config.jax_compilation_cache_dir  # JAX_COMPILATION_CACHE_DIR
    hooks.status(f"compiling the train step ({length}-step chunks"
                 + ("; the compilation cache keeps it for the next run)"
                    if cached else ")"))
    train = train.lower(state, order_fn(state, 1), *splits["train"], 0
                        ).compile()
  compile_time = time.perf_counter() - compile_start

  def evaluate_split(state, name):
    return members_lib.host_metrics(
        layout.host(evaluate_fn(state, *splits[name])))

  row, reached = None, False
  for epoch in range(start.epoch, 1 if start.finished else config.epochs + 1):
    done = start.epoch_step if epoch == start.epoch else 0
    sums = layout.put_state(start.sums) if done else None
    epoch_start = time.perf_counter()
    order = order_fn(state, epoch)
    for first in range(done, steps, length):
      hooks.chunk(layout.unreplicated(state), epoch, first,
                  layout.unreplicated(sums))
      state, chunk_sums, bad, rate = train(state, order, *splits["train"],
                                           first)
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
        elapsed_s=time.perf_counter() - start_time)
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

  test = evaluate_split(state, "test")
  last_step = int(np.max(layout.host(state.step)))
  epochs_run = row["epoch"] if row else start.epoch - 1
  members_lib.check_finite(members, {"test": test}, epochs_run, last_step,
                           steps, hooks)
  final = members_lib.final_row(
      members, test, evaluate_split(state, "val") if "val" in splits else None,
      epochs_run=epochs_run, steps=last_step, compile_time_s=compile_time,
      num_params=layout.num_params(state),
      wall_time_s=time.perf_counter() - start_time)
  if reached:
    final["time_to_target_s"] = row["elapsed_s"]
  return layout.unreplicated(state), final


"""Training and evaluation: pure jitted steps, scanned epochs, the run loop.

Data stays on the device as uint8 arrays. Each epoch draws a permutation with
`jax.random`, and runs as a few jitted `lax.scan` chunks that gather batches by
index, so there is no host round trip per step and one compile per shape.
Metrics come back from the device as sums and counts, once per chunk.
"""

import functools
import math
import time
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import augment as augment_lib
from mnist_jax import data as data_lib
from mnist_jax import models
from mnist_jax import optim
from mnist_jax import replicas as replicas_lib
from mnist_jax import sequence as sequence_lib
from mnist_jax import precision
from mnist_jax.config import Config

Metrics = Dict[str, jax.Array]  # {"loss": sum, "correct": sum, "count": n}


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus the run's base dropout key.

  The dropout key of step s is fold_in(rng, s): derived, never carried forward.
  """
  rng: jax.Array


def create_train_state(rng: jax.Array, config: Config, model: nn.Module,
                       steps_per_epoch: int) -> TrainState:
  """Initialises parameters and optimizer state from `rng`."""
  init_rng, dropout_rng = jax.random.split(rng)
  view = models.input_view(config)
  dummy = data_lib.to_view(jnp.zeros((1, 28, 28), jnp.uint8), view)
  params = jax.jit(functools.partial(model.init, train=False))(
      init_rng, dummy)["params"]
  return TrainState.create(apply_fn=precision.cast_apply(model.apply, config.dtype),
                           params=params,
                           tx=optim.make_optimizer(config, steps_per_epoch),
                           rng=dropout_rng)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0):
  """Per-example cross entropy, plain and label-smoothed.

  logits [B, K], labels [B] int -> (plain [B], smoothed [B]).
  """
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  if label_smoothing == 0:
    return nll, nll
  smooth = -logp.mean(axis=-1)
  return nll, (1.0 - label_smoothing) * nll + label_smoothing * smooth


def _sums(logits, labels, nll, mask=None) -> Metrics:
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if mask is None:
    mask = jnp.ones_like(nll)
  return {"loss": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               view: str, label_smoothing: float = 0.0,
               axis_name: Optional[str] = None,
               augment: Optional[Callable] = None):
  """One optimizer step on a batch.

  Args:
    state: the train state.
    images: [B, 28, 28] uint8.
    labels: [B] int32.
    view: the model's input layout (see data.to_view).
    label_smoothing: smoothing of the optimised loss (metrics use plain CE).
    axis_name: when mapped over devices, the axis to average gradients over.
    augment: optional fn(key, images) -> images (augment.py), applied first.

  Returns:
    (new state, metric sums over the batch).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # Each device masks its own part of the batch.
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  if augment is not None:
    images = augment(jax.random.fold_in(dropout_rng, 1), images)
  x = data_lib.to_view(images, view)

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x, train=True,
                            rngs={"dropout": dropout_rng})
    nll, smoothed = cross_entropy(logits, labels, label_smoothing)
    return smoothed.mean(), (logits, nll)

  grads, (logits, nll) = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = _sums(logits, labels, nll)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.psum(metrics, axis_name)
  return state.apply_gradients(grads=grads), metrics


def eval_step(params, apply_fn: Callable, images: jax.Array, labels: jax.Array,
              mask: jax.Array, *, view: str) -> Metrics:
  """Metric sums over the examples of a batch where mask is 1.

  images [B, 28, 28] uint8, labels [B] int32, mask [B] float32.
  """
  logits = apply_fn({"params": params}, data_lib.to_view(images, view),
                    train=False)
  nll, _ = cross_entropy(logits, labels)
  return _sums(logits, labels, nll, mask)


def _zeros() -> Metrics:
  return {"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}


def make_train_chunk(config: Config, axis_name: Optional[str] = None,
                     jit: bool = True) -> Callable:
  """A function running a chunk of steps as one `lax.scan` (jitted if `jit`).

  The returned fn(state, images [N,28,28], labels [N], batch_idx [C, B] int32,
  valid [C] bool) -> (state, metric sums) skips steps where valid is False, so
  every chunk of an epoch has one shape and compiles once. `axis_name` and
  `jit=False` are for mapping it over devices (see parallel.py).
  """
  view = models.input_view(config)
  step = functools.partial(train_step, view=view,
                           label_smoothing=config.label_smoothing,
                           augment=augment_lib.from_config(config),
                           axis_name=axis_name)

  def chunk(state, images, labels, batch_idx, valid):
    def body(carry, inputs):
      state, sums = carry
      idx, ok = inputs

      def run(state):
        return step(state, images[idx], labels[idx])

      def skip(state):
        return state, _zeros()

      state, metrics = jax.lax.cond(ok, run, skip, state)
      return (state, jax.tree.map(jnp.add, sums, metrics)), None

    (state, sums), _ = jax.lax.scan(body, (state, _zeros()), (batch_idx, valid))
    return state, sums

  # --num_seeds: state and batch_idx gain a leading replica axis.
  chunk = replicas_lib.vmap(config, chunk, in_axes=(0, None, None, 0, None))
  return jax.jit(chunk, donate_argnums=(0,)) if jit else chunk


def make_evaluate(config: Config, apply_fn: Callable, jit: bool = True) -> Callable:
  """A (jitted) fn(params, images, labels, batch_idx [C, B], mask [C, B]) -> sums."""
  view = models.input_view(config)

  def evaluate(params, images, labels, batch_idx, mask):
    def body(sums, inputs):
      idx, m = inputs
      metrics = eval_step(params, apply_fn, images[idx], labels[idx], m, view=view)
      return jax.tree.map(jnp.add, sums, metrics), None
    sums, _ = jax.lax.scan(body, _zeros(), (batch_idx, mask))
    return sums

  evaluate = replicas_lib.vmap(config, evaluate, in_axes=(0, None, None, None, None))
  return jax.jit(evaluate) if jit else evaluate


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


def fetch(metrics: Metrics) -> Dict[str, float]:
  """Turns device metric sums into host means: loss, accuracy, count."""
  m = jax.device_get(metrics)
  count = float(m["count"])
  return {"loss": float(m["loss"]) / max(count, 1.0),
          "accuracy": float(m["correct"]) / max(count, 1.0), "count": count}


def predict_logits(params, apply_fn: Callable, images: np.ndarray, view: str,
                   batch_size: int = 1000) -> np.ndarray:
  """Logits [N, 10] for uint8 images [N, 28, 28], in order (no example dropped)."""
  n = len(images)
  batch_idx, _ = eval_batches(n, batch_size)

  @jax.jit
  def run(params, images, batch_idx):
    def body(_, idx):
      return None, apply_fn({"params": params}, data_lib.to_view(images[idx], view),
                            train=False)
    return jax.lax.scan(body, None, batch_idx)[1]

  logits = run(params, jnp.asarray(images), jnp.asarray(batch_idx))
  return np.asarray(logits).reshape(-1, logits.shape[-1])[:n]


def _epoch_plan(rng, epoch, *, n, batch_size, num_chunks, chunk_len):
  """The epoch's batches laid out as [num_chunks, chunk_len, batch_size] indices."""
  batches = epoch_batches(rng, epoch, n, batch_size)
  pad = num_chunks * chunk_len - batches.shape[0]
  batches = jnp.pad(batches, ((0, pad), (0, 0)))
  return batches.reshape(num_chunks, chunk_len, batch_size)


def train_and_evaluate(config: Config, workdir: str, stream=None) -> Dict[str, Any]:
  """Trains `config.model`, evaluates it, and writes the run folder.

  Running it again on a folder with checkpoints resumes from the latest one
  and ends exactly where an uninterrupted run would.

  Returns:
    the final metrics row (test_loss, test_accuracy, wall_time_s, ...).
  """
  # pylint: disable=g-import-not-at-top
  import os
  from mnist_jax import checkpoint as checkpoint_lib
  from mnist_jax import parallel
  from mnist_jax import plots
  from mnist_jax import progress as progress_lib
  from mnist_jax import report
  from mnist_jax import workdir as workdir_lib
  from mnist_jax.errors import UserError
  # pylint: enable=g-import-not-at-top

  start_time = time.perf_counter()
  spec = models.get(config.model)
  par = parallel.setup(config)
  workdir_lib.check_writable(workdir)
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if os.path.exists(config_path):
    diffs = workdir_lib.config_differences(workdir_lib.read_config(workdir), config)
    if diffs:
      raise UserError(f"{workdir} holds a run with other settings ({'; '.join(diffs)});"
                      " pass --overwrite to start it over, or another --workdir")

  dataset = par.main_first(lambda: data_lib.load(config))
  n_train = len(dataset.train)
  if config.batch_size > n_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{n_train} training examples; pass a smaller one")
  if par.is_main:
    workdir_lib.start(workdir, config, workdir_lib.environment())
    sequence_lib.record(workdir, config)
  log = workdir_lib.MetricsLog(workdir) if par.is_main else parallel.NullLog()
  progress = progress_lib.Progress(config.epochs, stream=stream,
                                   prefix=par.log_prefix)

  put = par.replicate
  train_images, train_labels = put(dataset.train.images), put(dataset.train.labels)
  splits = {"test": dataset.test}
  if len(dataset.val):
    splits["val"] = dataset.val
  eval_data = {
      name: (put(s.images), put(s.labels),
             *map(par.shard, eval_batches(len(s), config.eval_batch_size,
                                          par.num_devices)))
      for name, s in splits.items()
  }

  init_rng, data_rng = replicas_lib.keys(config)
  steps = n_train // config.batch_size
  model = spec.build(config)
  state = replicas_lib.vmap(config, lambda r: create_train_state(
      r, config, model, steps))(init_rng)

  checkpoints = (checkpoint_lib.Checkpointer(workdir) if par.is_main
                 else parallel.NullCheckpointer())
  first_epoch = 1
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(state)
    first_epoch = int(meta["epoch"]) + 1
    log.truncate_after(int(meta["epoch"]))
    progress.message(f"resuming {workdir} after epoch {meta['epoch']}")
  else:
    log.truncate_after(0)
  state, first_epoch = par.from_main((state, first_epoch))
  state, first_epoch = par.replicate(state), int(first_epoch)

  num_chunks, chunk_len = chunk_plan(steps, config.chunk_steps)
  valid = par.replicate_chunks((np.arange(num_chunks * chunk_len) < steps)
                              .reshape(num_chunks, chunk_len))
  plan = jax.jit(replicas_lib.vmap(
      config, functools.partial(_epoch_plan, n=n_train,
                                batch_size=config.batch_size,
                                num_chunks=num_chunks, chunk_len=chunk_len),
      in_axes=(0, None), out_axes=1))
  compile_start = time.perf_counter()
  chunk_fn = par.compile_train(
      make_train_chunk(config, par.axis_name, jit=False), state, train_images,
      train_labels, par.shard_chunks(plan(data_rng, 1))[0], valid[0])
  evaluate = par.wrap_evaluate(make_evaluate(config, state.apply_fn, jit=False))
  compile_time = time.perf_counter() - compile_start

  def eval_split(name):
    return replicas_lib.fetch(evaluate(state.params, *eval_data[name]), fetch)

  target_split = "val" if "val" in eval_data else "test"
  time_to_target = None
  epoch = first_epoch - 1
  for epoch in range(first_epoch, config.epochs + 1):
    epoch_start = time.perf_counter()
    batches = par.shard_chunks(plan(data_rng, epoch))
    sums = _zeros()
    for c in range(num_chunks):
      state, chunk_sums = chunk_fn(state, train_images, train_labels,
                                   batches[c], valid[c])
      sums = jax.tree.map(jnp.add, sums, chunk_sums)
      if c < num_chunks - 1:
        jax.block_until_ready(chunk_sums)
        progress.update(epoch, min((c + 1) * chunk_len, steps), steps,
                        time.perf_counter() - epoch_start)
    train_m = replicas_lib.fetch(sums, fetch)
    epoch_time = time.perf_counter() - epoch_start
    row = {"epoch": epoch, "step": int(jnp.max(par.unreplicate(state.step))),
           "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
           "val_loss": None, "val_accuracy": None}
    val_m = None
    if "val" in eval_data:
      val_m = eval_split("val")
      row.update(val_loss=val_m["loss"], val_accuracy=val_m["accuracy"])
    row.update(replicas_lib.row_extras(config, train=train_m, val=val_m))
    row.update(epoch_time_s=epoch_time,
               examples_per_s=steps * config.batch_size / epoch_time,
               elapsed_s=time.perf_counter() - start_time)
    if not math.isfinite(train_m["loss"]):
      log.write({**row, "diverged": True})
      checkpoints.close()
      raise UserError(f"training diverged in epoch {epoch} (train loss "
                      f"{train_m['loss']}); the last good checkpoint is kept in "
                      f"{checkpoints.directory}: lower --learning_rate or set "
                      "--grad_clip")
    reached = None
    if config.target_accuracy > 0:
      reached = (row["val_accuracy"] if target_split == "val"
                 else eval_split("test")["accuracy"])
      row["target_metric"] = reached
    log.write(row)
    progress.epoch_done(epoch, row)
    checkpoints.save(epoch, par.unreplicate(state),
                     {"epoch": epoch, "step": row["step"]})
    if reached is not None and reached >= config.target_accuracy:
      time_to_target = time.perf_counter() - start_time
      progress.message(f"reached {target_split} accuracy {100 * reached:.2f}% >= "
                       f"{100 * config.target_accuracy:.2f}% after epoch {epoch} "
                       f"in {time_to_target:.1f}s")
      break

  test_m = eval_split("test")
  checkpoints.close()
  final = {"test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
           "test_examples": int(test_m["count"]), "epochs_run": epoch,
           "steps": int(jnp.max(par.unreplicate(state.step))),
           "compile_time_s": compile_time,
           "wall_time_s": time.perf_counter() - start_time,
           "num_params": int(sum(p.size for p in
                                 jax.tree.leaves(par.unreplicate(state.params)))
                             // config.num_seeds)}
  final.update(replicas_lib.row_extras(config, test=test_m))
  if config.target_accuracy > 0:
    final["time_to_target_s"] = time_to_target
  log.write(final)
  if par.is_main:
    plots.learning_curves(log.read(), os.path.join(workdir, "learning_curves.png"),
                          title=f"{config.model} ({config.preset})")
    # The report shows one model: with --num_seeds, the first replica's.
    params = par.unreplicate(state.params)
    if config.num_seeds > 1:
      params = jax.tree.map(lambda p: p[0], params)
    report.write(workdir, config, params, state.apply_fn, dataset.test,
                 dataset.class_names, view=models.input_view(config))
  spread = (f" +- {100 * final['test_accuracy_std']:.2f} (mean +- std of "
            f"{config.num_seeds} seeds)" if config.num_seeds > 1 else "")
  progress.message(f"test accuracy {100 * final['test_accuracy']:.2f}%{spread} "
                   f"(loss {final['test_loss']:.4f}, {final['test_examples']} "
                   f"examples); wall time {final['wall_time_s']:.1f}s; "
                   f"results in {workdir}")
  return final

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
                       steps_per_epoch: int,
                       hparams: Optional[Dict[str, jax.Array]] = None) -> TrainState:
  """Initialises parameters and optimizer state from `rng`.

  hparams: a sweep member's swept hyperparameters, {key of
  `opt_state.hyperparams`: scalar} (one row of `sweep.hyperparams`, traced
  under `jax.vmap`); they replace the config's values. None for no sweep.
  """
  init_rng, dropout_rng = jax.random.split(rng)
  view = models.input_view(config)
  dummy = data_lib.to_view(jnp.zeros((1, 28, 28), jnp.uint8), view)
  params = jax.jit(functools.partial(model.init, train=False))(
      init_rng, dummy)["params"]
  hparams = dict(hparams or {})
  state = TrainState.create(
      apply_fn=precision.cast_apply(model.apply, config.dtype), params=params,
      tx=optim.make_optimizer(config, steps_per_epoch, swept=hparams),
      rng=dropout_rng)
  if hparams:
    state = state.replace(opt_state=optim.with_hyperparams(state.opt_state,
                                                           hparams))
  return state


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0):
  """Per-example cross entropy, plain and label-smoothed.

  logits [B, K], labels [B] int -> (plain [B], smoothed [B]). A smoothing of
  Python 0 skips the smoothed loss; an array (a sweep member's) never does.
  """
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
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
    label_smoothing: smoothing of the optimised loss (metrics use plain CE),
      where the state holds none of its own (`optim.label_smoothing`).
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
  # A state made with label smoothing on (or swept) holds its own value.
  label_smoothing = optim.label_smoothing(state.opt_state, label_smoothing)

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
  valid [C] bool) -> (state, metric sums, bad) skips steps where valid is
  False, so every chunk of an epoch has one shape and compiles once. `bad`
  (int32) is the global number of the first step whose loss, or whose update
  of the parameters, was not finite, and -1 if none was; steps after it are
  skipped. Divergence is thus found on the device, read once per chunk.
  `axis_name` and `jit=False` are for mapping it over devices (parallel.py).
  """
  view = models.input_view(config)
  step = functools.partial(train_step, view=view,
                           label_smoothing=config.label_smoothing,
                           augment=augment_lib.from_config(config),
                           axis_name=axis_name)

  def chunk(state, images, labels, batch_idx, valid):
    def body(carry, inputs):
      state, sums, bad = carry
      idx, ok = inputs

      def run(state):
        return step(state, images[idx], labels[idx])

      def skip(state):
        return state, _zeros()

      number = state.step + 1
      state, metrics = jax.lax.cond(ok & (bad < 0), run, skip, state)
      bad = jnp.where((bad < 0) & ok & ~jnp.isfinite(metrics["loss"]),
                      number, bad)
      return (state, jax.tree.map(jnp.add, sums, metrics), bad), None

    init = (state, _zeros(), jnp.full((), -1, jnp.int32))
    (state, sums, bad), _ = jax.lax.scan(body, init, (batch_idx, valid))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                for p in jax.tree.leaves(state.params)]))
    bad = jnp.where((bad < 0) & ~finite, state.step.astype(jnp.int32), bad)
    return state, sums, bad

  # --num_seeds: state and batch_idx have a leading replica axis [N, ...].
  if replicas_lib.sequential(config):
    chunk = replicas_lib.sequential_chunk(config, chunk)
  else:
    chunk = replicas_lib.vmap(config, chunk, in_axes=(0, None, None, 0, None))
  if not jit:
    return chunk
  return jax.jit(chunk, donate_argnums=(0,),
                 compiler_options=replicas_lib.compiler_options(config))


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

  evaluate = replicas_lib.split(
      config, replicas_lib.vmap(config, evaluate, in_axes=(0, None, None, None, None)),
      (True, False, False, False, False))
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


def train_and_evaluate(config: Config, workdir: str, stream=None,
                       overwrite: bool = False) -> Dict[str, Any]:
  """Trains `config.model`, evaluates it, and writes the run folder.

  Running it again on a folder with checkpoints resumes from the latest one
  and ends exactly where an uninterrupted run would. Settings, data, folder and
  checkpoint are all checked before anything is written, so a refused run
  leaves the folder as it was. `overwrite` replaces an existing run folder.

  Returns:
    the final metrics row (test_loss, test_accuracy, wall_time_s, ...).

  Raises:
    UserError: bad settings, data, folder or checkpoint (nothing was written).
    Diverged: the loss became non-finite; the last good checkpoint is kept.
    preemption.Preempted: SIGTERM or SIGINT; a checkpoint to resume from is saved.
  """
  # pylint: disable=g-import-not-at-top
  import shutil
  from mnist_jax import checkpoint as checkpoint_lib
  from mnist_jax import parallel
  from mnist_jax import preemption
  from mnist_jax import progress as progress_lib
  from mnist_jax import report
  from mnist_jax import workdir as workdir_lib
  from mnist_jax.errors import Diverged, UserError
  # pylint: enable=g-import-not-at-top

  start_time = time.perf_counter()
  spec = models.get(config.model)
  par = parallel.setup(config)
  workdir_lib.check_writable(workdir)
  existing = workdir_lib.check_run_folder(workdir, config, overwrite=overwrite)
  resuming = existing and not overwrite

  dataset = par.main_first(lambda: data_lib.load(config))
  n_train = len(dataset.train)
  if config.batch_size > n_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{n_train} training examples; pass a smaller one")
  progress = progress_lib.Progress(config.epochs, stream=stream,
                                   prefix=par.log_prefix)
  if par.num_devices > 1:
    progress.message(f"data parallel ({par.mode}) over {par.num_devices} "
                     f"{jax.default_backend().upper()} devices")

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
  make_state = replicas_lib.vmap(config, lambda r: create_train_state(
      r, config, model, steps))
  if config.num_seeds > 1:  # One program, not every optimizer-init op vmapped.
    make_state = jax.jit(make_state)
  state = make_state(init_rng)
  shapes = checkpoint_lib.param_shapes(state.params)

  meta = None
  if resuming and par.is_main:
    meta, state = _restore_for_resume(config, workdir, state, steps)
    if meta is not None:
      state = replicas_lib.restored(config, state)
    final = workdir_lib.final_metrics(workdir)
    if (meta is not None and meta.get("done") and final is not None and
        jax.process_count() == 1):
      progress.message(f"{workdir} already finished: test accuracy "
                       f"{100 * final['test_accuracy']:.2f}%; pass --overwrite to "
                       "train it again")
      return final

  # Everything is checked: from here on the run folder is written.
  if par.is_main:
    if overwrite and existing:
      shutil.rmtree(workdir)
    environment = workdir_lib.environment()
    environment["parallel"] = {"mode": par.mode, "devices": par.num_devices}
    if par.compiler_options:
      environment["compiler_options"] = dict(par.compiler_options)
    if resuming:
      workdir_lib.record_resume(workdir, config, environment, meta)
    else:
      workdir_lib.start(workdir, config, environment)
    sequence_lib.record(workdir, config)
  log = workdir_lib.MetricsLog(workdir) if par.is_main else parallel.NullLog()
  log.truncate_after(meta["epoch"] if meta else 0)
  checkpoints = (checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
                 if par.is_main else parallel.NullCheckpointer())
  if meta is not None:
    progress.message(f"resuming {workdir} at step {meta['step']} (epoch "
                     f"{meta['epoch'] + 1}, step {meta.get('epoch_step', 0)} of "
                     f"{steps})")

  # Where to start, on every process: (first epoch, steps of it already done,
  # finished) and that epoch's partial metric sums, bit-exact from the JSON.
  position = np.array([meta["epoch"] + 1 if meta else 1,
                       meta.get("epoch_step", 0) if meta else 0,
                       bool(meta and meta.get("done"))], np.int32)
  partial = jax.tree.map(lambda z: np.zeros(np.shape(z), np.float32),
                         jax.eval_shape(lambda: replicas_lib.vmap(
                             config, lambda _: _zeros())(init_rng)))
  if meta is not None and meta.get("sums"):
    partial = {k: np.asarray(v, np.float32) for k, v in meta["sums"].items()}
  state, position, partial = par.from_main((state, position, partial))
  state = par.replicate(state)
  first_epoch, skip_steps, finished = (int(v) for v in np.asarray(position))

  num_chunks, chunk_len = chunk_plan(steps, config.chunk_steps)
  positions = np.arange(num_chunks * chunk_len).reshape(num_chunks, chunk_len)
  valid = par.replicate_chunks(positions < steps)
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

  def global_step() -> int:
    # On the host: with --num_seeds on a split CPU host, a jnp.max over the
    # replicas' steps is a cross-device all-reduce, which before the first
    # chunk of a resumed run could time out ("Termination timeout for all
    # reduce", abort).
    return int(np.max(jax.device_get(par.unreplicate(state.step))))

  last_saved = global_step() if meta is not None else None

  def save(epochs_done, epoch_step=0, sums=None, done=False):
    nonlocal last_saved
    step = global_step()
    record = {"epoch": epochs_done, "epoch_step": epoch_step,
              "step": step, "model": config.model,
              "seed": config.seed, "done": done, "param_shapes": shapes}
    if sums is not None:
      record["sums"] = {k: np.asarray(v).tolist()
                        for k, v in jax.device_get(sums).items()}
    checkpoints.save(step, par.unreplicate(state), record)
    last_saved = step

  def last_good():
    checkpoints.wait()
    step = checkpoints.latest_step()
    if step is None:
      return "no checkpoint had been saved yet"
    return f"the last good checkpoint, {checkpoints.directory}/{step}, is kept"

  target_split = "val" if "val" in eval_data else "test"
  time_to_target = None
  test_m = None  # The test metrics of the current state, when already computed.
  epoch = first_epoch - 1
  with preemption.StopRequest() as stop:
    for epoch in range(first_epoch, 1 if finished else config.epochs + 1):
      epoch_start = time.perf_counter()
      batches = par.shard_chunks(plan(data_rng, epoch))
      done_steps = skip_steps if epoch == first_epoch else 0
      epoch_valid = valid if done_steps == 0 else par.replicate_chunks(
          (positions < steps) & (positions >= done_steps))
      sums = _zeros()
      if done_steps:  # The partial sums of a mid-epoch checkpoint.
        sums = jax.tree.map(jnp.asarray, partial)
      for c in range(num_chunks):
        if (c + 1) * chunk_len <= done_steps:
          continue
        signum = preemption.agreed(stop.signum)
        if signum is not None:  # A safe point: between chunks.
          if global_step() not in (last_saved, 0):
            save(epoch - 1, done_steps, sums if done_steps else None)
          checkpoints.close()
          name = preemption.signal_name(signum)
          raise preemption.Preempted(signum, (
              f"stopped by {name} at step {global_step()} (epoch {epoch}, step "
              f"{done_steps} of {steps}); the checkpoint is in "
              f"{checkpoints.directory}" if last_saved else
              f"stopped by {name} before the first step; nothing to save"),
                                     workdir)
        state, chunk_sums, bad = chunk_fn(state, train_images, train_labels,
                                          batches[c], epoch_valid[c])
        sums = jax.tree.map(jnp.add, sums, chunk_sums)
        bad = np.asarray(jax.device_get(bad)).reshape(-1)  # One sync a chunk.
        if (bad >= 0).any():
          step = int(bad[bad >= 0].min())
          message = (f"training diverged: the loss or the parameters became "
                     f"non-finite at step {step} (epoch {epoch}, step "
                     f"{step - (epoch - 1) * steps} of {steps}); {last_good()}; "
                     "lower --learning_rate or set --grad_clip, then start over "
                     "with --overwrite")
          log.write({"epoch": epoch, "step": step, "diverged": True,
                     "message": message})
          checkpoints.close()
          raise Diverged(message)
        done_steps = min((c + 1) * chunk_len, steps)
        if c < num_chunks - 1:
          progress.update(epoch, done_steps, steps,
                          time.perf_counter() - epoch_start)
      train_m = replicas_lib.fetch(sums, fetch)
      epoch_time = time.perf_counter() - epoch_start
      row = {"epoch": epoch, "step": global_step(),
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
      reached = None
      if config.target_accuracy > 0:
        if target_split == "test":
          test_m = eval_split("test")  # Reused as the final test metrics if last.
        reached = (row["val_accuracy"] if target_split == "val"
                   else test_m["accuracy"])
        row["target_metric"] = reached
      log.write(row)
      progress.epoch_done(epoch, row)
      stop_early = reached is not None and reached >= config.target_accuracy
      last = stop_early or epoch == config.epochs
      if last or epoch % config.checkpoint_every == 0:
        save(epoch, done=last)
      if stop_early:
        time_to_target = time.perf_counter() - start_time
        progress.message(f"reached {target_split} accuracy {100 * reached:.2f}% "
                         f">= {100 * config.target_accuracy:.2f}% after epoch "
                         f"{epoch} in {time_to_target:.1f}s")
        break

  if test_m is None:
    test_m = eval_split("test")
  checkpoints.close()
  final = {"test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
           "test_examples": int(test_m["count"]), "epochs_run": epoch,
           "steps": global_step(),
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
    # The report draws every figure, learning_curves.png included. The report
    # shows one model: with --num_seeds, the first replica's.
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


def _restore_for_resume(config: Config, workdir: str, template, steps: int):
  """(meta, state) of the run folder's latest checkpoint, or (None, template).

  Reads without writing anything, and refuses a checkpoint that is damaged,
  from another model, or from another data size.
  """
  # pylint: disable=g-import-not-at-top
  import os
  from mnist_jax import checkpoint as checkpoint_lib
  from mnist_jax import workdir as workdir_lib
  # pylint: enable=g-import-not-at-top
  directory = os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)
  reader = None
  if os.path.exists(directory):
    reader = checkpoint_lib.Checkpointer(workdir, read_only=True)
  if reader is None or reader.latest_step() is None:
    if workdir_lib.final_metrics(workdir) is not None:
      raise checkpoint_lib.CheckpointError(
          f"{workdir} holds a finished run but its checkpoint is missing from "
          f"{directory}; pass --overwrite to train it again, or another --workdir")
    return None, template
  state, meta = reader.restore(template, model=config.model)
  reader.close()
  epoch, epoch_step = meta.get("epoch"), meta.get("epoch_step", 0)
  if (not isinstance(epoch_step, int) or not 0 <= epoch_step < steps or
      not 0 <= epoch <= config.epochs or
      meta.get("step") != epoch * steps + epoch_step or
      int(np.max(np.asarray(state.step))) != meta.get("step") or
      (epoch_step and not isinstance(meta.get("sums"), dict))):
    raise checkpoint_lib.CheckpointError(
        f"the latest checkpoint in {directory} (step {meta.get('step')}, epoch "
        f"{epoch}) does not fit this run's {steps} steps per epoch (were the "
        "data or the batch size changed?); pass --overwrite or another --workdir")
  return meta, state

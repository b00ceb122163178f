"""Training and evaluation: pure jitted steps, scanned epochs, the run loop.

Data stays on the device as uint8 arrays. Each epoch draws a permutation with
`jax.random`, and runs as a few jitted `lax.scan` chunks that gather batches by
index, so there is no host round trip per step and one compile per shape.
Metrics come back from the device as sums and counts, once per chunk.

The pure functions come first: `create_train_state`, `train_step`,
`eval_step`, the scanned chunk (`make_train_chunk`) and the evaluation
(`make_evaluate`), each for one model. `train_and_evaluate` runs them through
an `devices.Engine`, which places them on the run's devices.
"""

import contextlib
import functools
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

from flax import struct
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models
from mnist_jax.config import Config
from mnist_jax.data import augment as augment_lib
from mnist_jax.data import batches as batches_lib
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.data import views
from mnist_jax.errors import Diverged, UserError
from mnist_jax.models import precision
from mnist_jax.results import report
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import folder
from mnist_jax.rundir import log as log_lib
from mnist_jax.training import control
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics as metrics_lib
from mnist_jax.training import optim
from mnist_jax.training import resources

Metrics = Dict[str, jax.Array]  # Sums of metrics.py's metrics, and "count".


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus the run's base dropout key and
  its learning-rate schedule (static: no array, not in checkpoints).

  The dropout key of step s is fold_in(rng, s): derived, never carried forward.
  """
  rng: jax.Array
  schedule: Optional[optim.Schedule] = struct.field(pytree_node=False,
                                                    default=None)

  def learning_rate(self) -> jax.Array:
    """The rate of the optimizer's next update, from its own state."""
    return self.schedule(self.opt_state)


def create_train_state(rng: jax.Array, config: Config, model: nn.Module,
                       steps_per_epoch: int,
                       hparams: Optional[Dict[str, jax.Array]] = None) -> TrainState:
  """Initialises parameters and optimizer state from `rng`.

  hparams: a sweep member's swept hyperparameters, {key of
  `opt_state.hyperparams`: scalar} (one row of `members.hyperparams`, traced
  under `jax.vmap`); they replace the config's values. None for no sweep.
  """
  init_rng, dropout_rng = jax.random.split(rng)
  view = models.input_view(config)
  shape = datasets.get(config.dataset).image_shape
  dummy = views.to_view(jnp.zeros((1, *shape), jnp.uint8), view)
  params = jax.jit(functools.partial(model.init, train=False))(
      init_rng, dummy)["params"]
  hparams = dict(hparams or {})
  state = TrainState.create(
      apply_fn=precision.cast_apply(model.apply, config.dtype), params=params,
      tx=optim.make_optimizer(config, steps_per_epoch, swept=hparams),
      rng=dropout_rng, schedule=optim.Schedule.of(config, steps_per_epoch))
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


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               view: str, label_smoothing: float = 0.0,
               axis_name: Optional[str] = None,
               augment: Optional[Callable] = None):
  """One optimizer step on a batch.

  Args:
    state: the train state.
    images: [B, 28, 28] uint8.
    labels: [B] int32.
    view: the model's input layout (see views.to_view).
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
  x = views.to_view(images, view)
  # A state made with label smoothing on (or swept) holds its own value.
  label_smoothing = optim.label_smoothing(state.opt_state, label_smoothing)

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x, train=True,
                            rngs={"dropout": dropout_rng})
    nll, smoothed = cross_entropy(logits, labels, label_smoothing)
    return smoothed.mean(), (logits, nll)

  grads, (logits, nll) = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = metrics_lib.batch_sums(logits, labels, nll)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.psum(metrics, axis_name)
  return state.apply_gradients(grads=grads), metrics


def eval_step(params, apply_fn: Callable, images: jax.Array, labels: jax.Array,
              mask: jax.Array, *, view: str) -> Metrics:
  """Metric sums over the examples of a batch where mask is 1.

  images [B, 28, 28] uint8, labels [B] int32, mask [B] float32.
  """
  logits = apply_fn({"params": params}, views.to_view(images, view),
                    train=False)
  nll, _ = cross_entropy(logits, labels)
  return metrics_lib.batch_sums(logits, labels, nll, mask, metrics_lib.EVAL)


def _finite(params) -> jax.Array:
  """Whether every parameter is finite: a bool scalar."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                            for p in jax.tree.leaves(params)]))


def make_train_chunk(config: Config, axis_name: Optional[str] = None,
                     jit: bool = True) -> Callable:
  """A function running a chunk of steps as one `lax.scan` (jitted if `jit`).

  The returned fn(state, images [N,28,28], labels [N], batch_idx [C, B] int32,
  valid [C] bool) -> (state, metric sums, bad, rate) skips steps where valid is
  False, so every chunk of an epoch has one shape and compiles once. `bad`
  (int32) is the global number of the first step whose loss, or whose update
  of the parameters, was not finite, and -1 if none was; the steps after it
  leave the parameters alone and only count. A state whose parameters are
  already not finite (a sweep member that diverged in an earlier chunk) trains
  no step, and `bad` is its step at the chunk's start. Divergence is thus found
  on the device, read once per chunk. `rate` is the learning rate the
  optimizer's schedule gives at its step count (the next update's), the one
  place the run computes it. One model: an engine maps it over the
  members' axis (members.py) and over devices (devices.py), with
  `axis_name` and `jit=False`.
  """
  view = models.input_view(config)
  zeros = functools.partial(metrics_lib.zeros,
                            num_classes=datasets.num_classes(config.dataset))
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

      def skip(state):  # Padding is no step; a step after divergence counts.
        return (state.replace(step=jnp.where(ok, state.step + 1, state.step)),
                zeros())

      number = state.step + 1
      state, metrics = jax.lax.cond(ok & (bad < 0), run, skip, state)
      bad = jnp.where((bad < 0) & ok & ~jnp.isfinite(metrics["loss"]),
                      number, bad)
      return (state, jax.tree.map(jnp.add, sums, metrics), bad), None

    bad = jnp.where(_finite(state.params), -1, state.step).astype(jnp.int32)
    init = (state, zeros(), bad)
    (state, sums, bad), _ = jax.lax.scan(body, init, (batch_idx, valid))
    bad = jnp.where((bad < 0) & ~_finite(state.params),
                    state.step.astype(jnp.int32), bad)
    return state, sums, bad, state.learning_rate()

  return jax.jit(chunk, donate_argnums=(0,)) if jit else chunk


def make_evaluate(config: Config, apply_fn: Callable, jit: bool = True) -> Callable:
  """A (jitted) fn(params, images, labels, batch_idx [C, B], mask [C, B]) -> sums.

  images [N, 28, 28] uint8, labels [N] int32; the sums cover the examples
  where mask is 1 (batches.eval_batches), for one model.
  """
  view = models.input_view(config)
  zeros = metrics_lib.zeros(metrics_lib.EVAL,
                            num_classes=datasets.num_classes(config.dataset))

  def evaluate(params, images, labels, batch_idx, mask):
    def body(sums, inputs):
      idx, m = inputs
      metrics = eval_step(params, apply_fn, images[idx], labels[idx], m, view=view)
      return jax.tree.map(jnp.add, sums, metrics), None
    sums, _ = jax.lax.scan(body, zeros, (batch_idx, mask))
    return sums

  return jax.jit(evaluate) if jit else evaluate


def predict_logits(params, apply_fn: Callable, images: np.ndarray, view: str,
                   batch_size: int = 1000, stacked: bool = False) -> np.ndarray:
  """Logits [N, K] for uint8 images [N, 28, 28], in order (no example dropped).

  stacked: `params` are S models' stacked [S, ...]; returns their logits
  [S, N, K], computed one model after another in one program.
  """
  n = len(images)
  batch_idx, _ = batches_lib.eval_batches(n, batch_size)

  def one(params, images, batch_idx):
    def body(_, idx):
      return None, apply_fn({"params": params}, views.to_view(images[idx], view),
                            train=False)
    return jax.lax.scan(body, None, batch_idx)[1]

  run = one
  if stacked:
    run = lambda p, x, b: jax.lax.map(lambda q: one(q, x, b), p)
  logits = np.asarray(jax.jit(run)(params, jnp.asarray(images),
                                   jnp.asarray(batch_idx)))
  return logits.reshape(*logits.shape[:-3], -1, logits.shape[-1])[..., :n, :]


def steps_per_epoch(config: Config, num_train: int) -> int:
  """Full batches in the training split; refuses a batch larger than it."""
  if config.batch_size > num_train:
    raise UserError(f"--batch_size={config.batch_size} is larger than the "
                    f"{num_train} training examples; pass a smaller one")
  steps = num_train // config.batch_size
  resources.check_steps(config, steps)
  return steps


def train_and_evaluate(config: Config, workdir: str, stream=None,
                       overwrite: bool = False) -> Dict[str, Any]:
  """Trains `config.model`, evaluates it, and writes the run folder.

  Running it again on a folder with checkpoints resumes from the latest one
  and ends exactly where an uninterrupted run would; on a run trained to the
  end whose report is not complete, it completes the run without training.
  The run is finished (folder.finish) only once its report is written.
  Settings, data, folder and checkpoint are all checked before anything is
  written, so a refused run leaves the folder as it was. `overwrite`
  replaces an existing run folder.

  Returns:
    the final metrics row (test_loss, test_accuracy, wall_time_s, ...).

  Raises:
    UserError: bad settings, data, folder or checkpoint (nothing was written).
    Diverged: the loss became non-finite; the last good checkpoint is kept.
    control.Preempted: SIGTERM or SIGINT; a checkpoint to resume from is saved.
  """
  with contextlib.ExitStack() as on_exit:
    return _train_and_evaluate(config, workdir, stream, overwrite, on_exit)


def _train_and_evaluate(config, workdir, stream, overwrite, on_exit):
  """The phases of train_and_evaluate; `on_exit` closes the run log however
  they end (finished, diverged, preempted or failed)."""
  start_time = time.perf_counter()
  # Devices and data.
  members = members_lib.from_config(config)
  labels = [{"seed": m.seed, **dict(m.values)} for m in members]
  engine = devices.Engine(config, members)
  resources.check_memory(config, len(members), engine.par.num_devices)
  folder.check_writable(workdir)
  if engine.is_main:  # Inside folder.locking() (launch.py): the one writer.
    folder.claim(workdir)
  existing = folder.check_run_folder(workdir, config, overwrite=overwrite)
  resuming = existing and not overwrite
  if resuming:
    log_lib.check(workdir, config, labels)
  data_start = time.perf_counter()  # Preparing (first time) and loading.
  dataset = engine.main_first(functools.partial(pipeline.load, config))
  data_time = time.perf_counter() - data_start
  steps = steps_per_epoch(config, len(dataset.train))
  log = log_lib.RunLog(log_lib.Progress(config.epochs, stream=stream,
                                        prefix=engine.log_prefix))
  create = _layout(engine, config, dataset, steps, log,
                   folder.recorded_parallel(workdir) if resuming else None)

  # Restore or initialise: every check comes before anything is written.
  state = engine.init_state(create)
  shapes = checkpoints.param_shapes(state.params)
  meta = logged = None  # logged: the final row of a run being completed.
  if resuming and engine.is_main:
    meta, state = checkpoints.restore(config, workdir, state, steps)
    if jax.process_count() == 1 and folder.finished(workdir):
      return _already_finished(workdir, log)
    if meta is not None and meta.get("done") and jax.process_count() == 1:
      logged = folder.final_metrics(workdir)  # Kept, not recomputed.
    state = engine.restored(state) if meta is not None else state

  # From here on the run folder is written.
  if engine.is_main:
    folder.begin(workdir, config,
                 {**folder.environment(), **engine.environment(),
                  "implementation": models.implementation(config)},
                 existing=existing, overwrite=overwrite, meta=meta)
    views.record(workdir, config)
  line = engine.is_main and _resume_line(workdir, meta, logged, steps, resuming)
  if line:
    log.message(line)
  log.open(workdir if engine.is_main else None, meta["epoch"] if meta else 0,
           config=config, members=labels, steps_per_epoch=steps,
           keep_final=logged is not None)
  on_exit.callback(log.close)
  # The run's seconds: its earlier processes' (up to the checkpoint this one
  # resumes from, less their data loading), then this process's.
  earlier = (meta or {}).get("time_s", 0.0)
  clock = lambda: earlier + time.perf_counter() - start_time
  saver = checkpoints.Saver(workdir, config, shapes, write=engine.is_main,
                            clock=lambda: clock() - data_time)
  state, start = engine.start(state, checkpoints.Start.from_meta(meta))
  compile_time = engine.compile(
      state, make_train_chunk(config, engine.axis_name, jit=False),
      make_evaluate(config, state.apply_fn, jit=False))
  saver.last_saved = engine.step(state) if meta is not None else None

  # Each epoch: train, evaluate, log, checkpoint.
  run = _train_epochs(engine, state, start, saver, log, workdir, clock)
  state, test_m, val_m = run.state, run.test_m, run.val_m

  # Final evaluation: choose the member (by validation), test every member,
  # and the ensemble of the chosen grid point's seeds; a run being completed
  # keeps the final row it logged (its times are the training's).
  if logged is None and test_m is None:
    test_m = engine.evaluate(state, "test")
  if logged is None and val_m is None and "val" in engine.splits:
    val_m = engine.evaluate(state, "val")
  saver.close()
  choice = (members_lib.choose(members, val_m) if logged is None
            else _logged_choice(members, logged))
  logits, ensemble = (_chosen_logits(engine, state, config, dataset, choice)
                      if engine.is_main else (None, None))
  final = logged
  if final is None:
    final = _final_row(members, choice, test_m, ensemble,
                       _member_rates(members, run.row, workdir),
                       epochs_run=run.epoch,
                       steps=engine.step(state), compile_time_s=compile_time,
                       data_time_s=data_time, num_params=engine.num_params(state),
                       wall_time_s=clock())
    if config.target_accuracy > 0:
      final["time_to_target_s"] = run.time_to_target
    final.update(control.learning_verdict(final, run.row, dataset.test.labels))
  log.final(final, logged=logged is not None)

  # Report: the figures and tables of the chosen member; then, last, the
  # record that the run is finished.
  if engine.is_main:
    report.write(workdir, config, dataset.test, logits, dataset.class_names,
                 ensemble=ensemble)
    log.figures()
    log.close()
    folder.finish(workdir, final)
  log.message(_summary(final, members, workdir))
  return final


def layout_for(engine, config, model, dataset, steps, recorded=None):
  """Chooses `engine`'s devices' layout for `model`'s train chunk (`recorded`:
  the one a resumed run trained with; else cached or measured, as
  --parallel asks); returns the train state's maker, rng -> TrainState.
  Benchmarks call it too, so that they time the layout a run would use."""
  create = functools.partial(create_train_state, config=config, model=model,
                             steps_per_epoch=steps)
  engine.choose(dataset, steps, create,
                functools.partial(make_train_chunk, config, jit=False),
                repr(model), recorded)
  return create


def _layout(engine, config, dataset, steps, log, recorded):
  """Builds the model, chooses the devices' layout and places the data
  there; returns the train state's maker, rng -> TrainState."""
  create = layout_for(engine, config, models.build(config), dataset, steps,
                      recorded)
  if engine.description():
    log.message(engine.description())
  engine.place(dataset, steps)
  return create


def _already_finished(workdir: str, log) -> Optional[Dict[str, Any]]:
  """What the same command says of a finished run: its result; it changes
  nothing. Returns its final row."""
  final = folder.final_metrics(workdir)
  result = (f": test accuracy {100 * final['test_accuracy']:.2f}%"
            if final else "")
  log.message(f"{workdir} already finished{result}; its report is "
              f"{workdir}/report.md (--mode=report rewrites it); to train "
              "these settings again, pass another --workdir")
  return final


def _resume_line(workdir, meta, logged, steps, resuming) -> Optional[str]:
  """Where a run in an existing folder goes on from, in one line (None: a
  new run, or one started over)."""
  if meta is None:
    if not resuming:
      return None
    epochs = [r["epoch"] for r in folder.MetricsLog(workdir).read()
              if "train_loss" in r]
    again = (f" (the {max(epochs)} epoch(s) logged are trained again)"
             if epochs else "")
    return (f"{workdir} has no complete checkpoint: training starts over from "
            f"epoch 1{again}")
  if meta.get("done"):
    what = "its report" if logged else "its final evaluation and report"
    return (f"completing {workdir}: its training ended at epoch "
            f"{meta['epoch']} (step {meta['step']}); writing {what}")
  return (f"resuming {workdir} at step {meta['step']} (epoch "
          f"{meta['epoch'] + 1}, step {meta.get('epoch_step', 0)} of {steps})")


def _logged_choice(members, final: dict) -> members_lib.Choice:
  """The member a logged final row chose (its `chosen`; member 0 if none)."""
  member = (final.get("chosen") or {}).get("index", 0)
  point = next(p for p, seeds in enumerate(members_lib.points(members))
               if member in seeds)
  return members_lib.Choice(point, member)


def _chosen_logits(engine, state, config, dataset, choice):
  """(the chosen member's test logits [N, K], the ensemble of its grid point's
  seeds as report.ensemble_metrics gives it, or None)."""
  seeds = members_lib.points(engine.members)[choice.point]
  logits = predict_logits(engine.stacked_params(state, seeds), state.apply_fn,
                          dataset.test.images, models.input_view(config),
                          config.eval_batch_size, stacked=True)
  ensemble = report.ensemble_metrics(logits, dataset.test.labels)
  return logits[seeds.index(choice.member)], ensemble


class _Epochs(NamedTuple):
  """Where the epochs left a run: its state after the last epoch run, that
  epoch, its metrics row (None: no epoch ran), the state's val and test
  metrics where they were computed, and the seconds to the target accuracy."""
  state: TrainState
  epoch: int
  row: Optional[Dict[str, Any]]
  val_m: Optional[Metrics]
  test_m: Optional[Metrics]
  time_to_target: Optional[float]


def _train_epochs(engine, state, start, saver, log, workdir, clock) -> _Epochs:
  """Trains from `start` to the last epoch (or the target accuracy): each
  epoch trains, evaluates, logs and checkpoints. `clock`: the run's seconds."""
  config, members, steps = engine.config, engine.members, engine.steps
  target = control.Target(config.target_accuracy, "val" in engine.splits)
  test_m = val_m = time_to_target = None  # The current state's, when known.
  row = None  # The last epoch's metrics row, once an epoch has run.
  epoch = start.epoch - 1
  with control.StopRequest(kept=saver.on_disk) as stop:
    for epoch in start.epochs(config.epochs):
      state, train_m, epoch_time = _train_epoch(engine, state, epoch, start,
                                                stop, saver, log, workdir)
      val_m = engine.evaluate(state, "val") if "val" in engine.splits else None
      row = _epoch_row(members, epoch, engine.step(state), train_m,
                       val_m, epoch_time, steps * config.batch_size,
                       clock())
      if target.needs_test:
        test_m = engine.evaluate(state, "test")  # Final, if this is the last.
      reached = target.value(row, test_m)
      if target.active:
        row["target_metric"] = reached
      log.epoch(row)
      last = target.reached(reached) or epoch == config.epochs
      if last or epoch % config.checkpoint_every == 0:
        saver.save(engine.step(state), engine.host_copy(state), epoch=epoch,
                   done=last)
      if target.reached(reached):
        time_to_target = clock()
        log.message(target.message(reached, epoch, time_to_target))
        break
  return _Epochs(state, epoch, row, val_m, test_m, time_to_target)


def _train_epoch(engine, state, epoch, start, stop, saver, log, workdir):
  """Runs one epoch's chunks: (state, host train metrics, epoch seconds).

  The train metrics hold `learning_rates`, each member's at the epoch's end.

  Between chunks (the safe points) a stop request saves a checkpoint and
  raises Preempted; after a chunk, a non-finite step ends the run (Diverged),
  or with several members stops that member, and the run once all are.
  """
  epoch_start = time.perf_counter()
  done = start.steps_done(epoch)
  plan = engine.epoch_plan(epoch, done)
  sums = engine.initial_sums(start.sums if done else None)
  for c in plan.chunks:
    signum = control.agreed(stop.signum)
    if signum is not None:
      _preempt(engine, state, signum, epoch, done, sums, saver, log, workdir)
    state, sums, bad, rate = engine.train_chunk(state, plan, c, sums)
    step = control.all_diverged(bad)
    if step is None and len(engine.members) > 1:
      before = (epoch - 1) * engine.steps + done
      for i in control.diverged_after(bad, before):
        log.message(control.member_diverged_message(
            members_lib.label(engine.members[i]), int(bad[i]), epoch,
            engine.steps))
    if step is not None:
      message = control.diverged_message(step, epoch, engine.steps,
                                         saver.kept())
      log.diverged(control.diverged_row(step, epoch, message))
      saver.close()
      raise Diverged(message)
    done = plan.steps_after(c)
    if not plan.is_last(c):
      log.chunk(epoch, done, engine.steps, time.perf_counter() - epoch_start)
  train_m = {**engine.metrics(sums), "learning_rates": engine.rates(rate)}
  return state, train_m, time.perf_counter() - epoch_start


def _preempt(engine, state, signum, epoch, done, sums, saver, log, workdir):
  """Saves where the run stands inside `epoch` (unless saved) and stops it."""
  step = engine.step(state)
  if not saver.is_saved(step):
    saver.save(step, engine.host_copy(state), epoch=epoch - 1, epoch_step=done,
               sums=sums if done else None)
  saver.close()
  raise control.Preempted(signum, control.stopped_message(
      signum, step, epoch, done, engine.steps,
      saver.directory if saver.last_saved else None), workdir)


def _epoch_row(members, epoch, step, train_m, val_m, epoch_time,
               examples, elapsed) -> Dict[str, Any]:
  """The metrics.jsonl row of an epoch (val_m None: no validation split).

  The top-level metrics are the leading member's (members.choose), which a
  run of several members names in `leader`.
  """
  leader = members_lib.choose(members, val_m)
  rates = train_m["learning_rates"]
  top, extras = members_lib.row(members, leader,
                                {"train": train_m, "val": val_m},
                                rates if len(members) > 1 else None)
  row = {"epoch": epoch, "step": step, **top,
         "learning_rate": rates[leader.member]}
  if len(members) > 1:
    row["leader"] = members_lib.identity(members[leader.member])
  return {**row, **extras, "epoch_time_s": epoch_time,
          "examples_per_s": examples / epoch_time, "elapsed_s": elapsed}


def _member_rates(members, row, workdir) -> Optional[list]:
  """With several members, each one's learning rate as the last epoch row
  has it (this run's, else the one metrics.jsonl kept of a run being
  completed); None for one member."""
  if len(members) == 1:
    return None
  if row is None:
    rows = [r for r in folder.MetricsLog(workdir).read() if "train_loss" in r]
    row = rows[-1] if rows else {}
  entries = row.get("members") or [{}] * len(members)
  return [e.get("learning_rate") for e in entries]


def _final_row(members, choice, test_m, ensemble, rates,
               **fields) -> Dict[str, Any]:
  """The final metrics.jsonl row: the chosen member's test metrics, `fields`,
  and with several members which one was chosen, the mean, spread and
  ensemble of its grid point's seeds and every member's metrics (with
  `rates`, their learning rates)."""
  top, extras = members_lib.row(members, choice, {"test": test_m}, rates)
  final = {**top, "test_examples": int(test_m["count"]), **fields}
  if len(members) > 1:
    final["chosen"] = members_lib.identity(members[choice.member])
  if ensemble is not None:
    final.update({f"ensemble_test_{m.name}": ensemble[m.name]
                  for m in metrics_lib.of("test")})
  return {**final, **extras}


def _summary(final: dict, members, workdir: str) -> str:
  """The line a run ends with: the chosen member's test accuracy, its grid
  point's seeds and their ensemble, and where the results are."""
  text = (f"test accuracy {100 * final['test_accuracy']:.2f}% (loss "
          f"{final['test_loss']:.4f}, {final['test_examples']} examples)")
  chosen = final.get("chosen")
  if chosen:  # As report.md says it (report.members_section).
    how = ("chosen by validation accuracy" if members[0].config.val_fraction > 0
           else "chosen as the first (no validation split to choose by)")
    label = members_lib.values_text(chosen["values"], chosen["seed"])
    text = f"{how}: {label}; {text}"
  if "test_accuracy_mean" in final:
    seeds = len(members) // len(members_lib.points(members))
    text += (f"; its {seeds} seeds {100 * final['test_accuracy_mean']:.2f} +- "
             f"{100 * final['test_accuracy_std']:.2f}%")
  if "ensemble_test_accuracy" in final:
    text += f", their ensemble {100 * final['ensemble_test_accuracy']:.2f}%"
  return (f"{text}; wall time {final['wall_time_s']:.1f}s; results in "
          f"{workdir}")

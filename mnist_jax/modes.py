"""A training run in its run folder: the loop (training/train.py) with the
folder as its hooks (`RunFolder`: resume bit for bit, records, checkpoints, a
stop after saving), then the report; and --mode=report. Process 0 writes."""

import contextlib
import functools
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax import models
from mnist_jax.errors import Diverged, UserError
from mnist_jax.models import recurrent
from mnist_jax.results import report
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import control
from mnist_jax import files
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import process
from mnist_jax.rundir import record as record_lib
from mnist_jax.rundir import resources
from mnist_jax.rundir import resume
from mnist_jax.rundir import tensorboard
from mnist_jax.training import devices
from mnist_jax.training import metrics as metrics_lib
from mnist_jax.training import members as members_lib
from mnist_jax.training import loop
from mnist_jax.training import population


class RunFolder(loop.Hooks):
  """The loop's hooks that read and write `workdir` (see the module doc)."""

  def __init__(self, workdir, config, stream=None, stop=None, *, existing,
               overwrite, data_time):
    self.workdir, self.config, self.stop = workdir, config, stop
    self.stream, self.epochs = stream or sys.stdout, config.epochs
    self.prefix = (f"[process {jax.process_index()}/{jax.process_count()}] "
                   if jax.process_count() > 1 else "")
    self.implementation = {}  # models.build's choice of layers.
    self.existing, self.overwrite = existing, overwrite
    self.data_time = data_time
    self.write = devices.is_main()
    self.checkpoints = None  # orbax's CheckpointManager, from the first save.
    self.meta, self.logged, self.saved, self.rows = None, None, None, None
    self.started = time.perf_counter()

  def seconds(self) -> float:
    """The run's training seconds so far, its earlier processes' included."""
    return (self.meta or {}).get("time_s", 0.0) + (
        time.perf_counter() - self.started)

  def start(self, state, run):
    """Restores the latest checkpoint, if any, then writes config.json."""
    self.steps, self.population = run.steps, run
    start = loop.Start()
    if self.existing and not self.overwrite and self.write:
      state, start = self._restore(state)
    if jax.process_count() > 1:  # Process 0's restore, on every process.
      state, start = self._from_main(state, start)
    if self.write:
      env = {**record_lib.environment(), **run.record(),
             "implementation": self.implementation}
      record_lib.begin(self.workdir, self.config, env, existing=self.existing,
                       overwrite=self.overwrite, meta=self.meta)
      if getattr(self.config, "sequence", "") == "permuted":
        path = os.path.join(self.workdir, record_lib.PERMUTATION_FILE)
        with files.atomic(path, "wb") as f:
          np.save(f, recurrent.permutation(self.config.permute_seed))
      self._open_rows()
    self.saved = int(self.meta["step"]) if self.meta else None
    return state, start

  def _open_rows(self) -> None:
    """The rows' writer: metrics.jsonl and TensorBoard's events, kept up to
    the checkpoint's epoch (and the final row of a run being completed)."""
    members = [{"seed": m.seed, **m.values}
               for m in members_lib.from_config(self.config)]
    events = (tensorboard.Writer(self.workdir, self.config, members)
              if self.config.tensorboard else None)
    self.rows = metrics_log.MetricsLog(self.workdir, events)
    self.rows.resume(self.meta["epoch"] if self.meta else 0,
                     keep_final=self.logged is not None)

  def _from_main(self, state, start):
    """Process 0's restored parts and start, as arrays, on every process."""
    members = len(members_lib.from_config(self.config))
    classes = datasets.get(self.config.dataset).num_classes
    zeros = metrics_lib.zeros(lead=(members,) * (members > 1), host=True,
                              num_classes=classes)
    parts, position, sums = devices.from_main((
        checkpoints.tree(state), np.array([start.epoch, start.epoch_step,
                                           start.finished], np.int32),
        start.sums if start.sums is not None else zeros))
    epoch, epoch_step, finished = (int(v) for v in position)
    return state.replace(**parts), loop.Start(
        epoch, epoch_step, sums if epoch_step else None, bool(finished))

  def _restore(self, state):
    """The latest checkpoint's state and start, saying where the run goes
    on from; a fresh start where none was saved."""
    if not checkpoints.steps(self.workdir):
      if metrics_log.final_metrics(self.workdir) is not None:
        raise checkpoints.CheckpointError(
            f"{self.workdir} trained to the end, but its report cannot be "
            "written: its checkpoints are missing from "
            f"{checkpoints.directory(self.workdir)}; put them back (the same "
            "command then writes the report), or pass another --workdir; "
            "--overwrite trains it again, deleting its logs")
      self.message(f"{self.workdir} has no complete checkpoint: training "
                   "starts over from epoch 1")
      return state, loop.Start()
    state, meta = checkpoints.restore(self.workdir, state, self.config.model)
    checkpoints.check_fits(meta, self.steps,
                           checkpoints.directory(self.workdir))
    self.meta, sums = meta, meta.get("sums")
    if meta.get("done"):
      self.logged = metrics_log.final_metrics(self.workdir)
      self.message(f"completing {self.workdir}: its training ended at epoch "
                   f"{meta['epoch']} (step {meta['step']}); writing its report")
    else:
      self.message(f"resuming {self.workdir} at step {meta['step']} (epoch "
                   f"{meta['epoch'] + 1}, step {meta.get('epoch_step', 0)} of "
                   f"{self.steps})")
    other = code_lib.note(self.workdir, record_lib.trained_code(self.workdir),
                          "training goes on with the code here now")
    if other:  # Said, and resumed: its checkpoint fits the module.
      self.message(f"note: {other}")
    return state, loop.Start(
        meta["epoch"] + 1, meta.get("epoch_step", 0),
        {k: np.asarray(v, np.float32) for k, v in sums.items()} if sums
        else None, bool(meta.get("done")))

  def save(self, state, *, epoch, epoch_step=0, sums=None, done=False):
    state = self.population.get(state)  # One copy, which the host reads.
    step = _step(state)
    if self.write and step != self.saved:
      if self.checkpoints is None:
        self.checkpoints = checkpoints.manager(self.workdir,
                                               self.config.keep_checkpoints)
      meta = checkpoints.record(self.config, epoch=epoch, step=step,
                                epoch_step=epoch_step, sums=sums, done=done,
                                time_s=self.seconds())
      checkpoints.save(self.checkpoints, step, checkpoints.tree(state), meta)
    self.saved = step

  def _stop_if_asked(self, state, epoch, done, sums):
    signum = control.agreed(self.stop.signum)
    if signum is None:
      return
    state = self.population.get(state)
    if done == self.steps:  # Stopped at an epoch's end: saved there.
      epoch, done = epoch + 1, 0
    if done or self.saved != _step(state):
      self.save(state, epoch=epoch - 1, epoch_step=done,
                sums=sums if done else None)
    self.close()
    step, name = _step(state), signal.Signals(signum).name
    if not self.saved:
      raise control.Preempted(signum, f"stopped by {name} before the first "
                              "step; nothing to save")
    where = (f"at the end of epoch {epoch - 1} (step {step})" if not done else
             f"at step {step} (epoch {epoch}, step {done} of {self.steps})")
    raise control.Preempted(signum, f"stopped by {name} {where}; the "  # Saved
                            "checkpoint is in "  # by process 0, for every one.
                            f"{checkpoints.directory(self.workdir)}")

  def trained(self, state, final) -> None:
    """A stop asked for in the final evaluation stops here (the same command
    completes the run); from here a Ctrl-C interrupts at once."""
    if self.checkpoints is not None:
      self.checkpoints.close()
    self.stop.close()
    self._stop_if_asked(state, final["epochs_run"], self.steps, None)

  def chunk(self, state, epoch, done, sums):
    super().chunk(state, epoch, done, sums)
    self._stop_if_asked(state, epoch, done, sums)

  def epoch(self, state, row, last):
    row = dict(row, elapsed_s=self.seconds())
    if self.rows is not None:
      self.rows.write(row)
    super().epoch(state, row, last)
    if last or row["epoch"] % self.config.checkpoint_every == 0:
      self.save(state, epoch=row["epoch"], done=last)
    self._stop_if_asked(state, row["epoch"], self.steps, None)

  def diverged(self, row):
    message = (f"{row['message']}; {self.kept()}; lower --learning_rate or "
               "set --grad_clip and train again")
    if self.rows is not None:
      self.rows.write({**row, "message": message})
    raise Diverged(message)

  def kept(self) -> str:
    """Which checkpoint a stopped run goes back to, in words."""
    self.close()  # A save under way is complete once this returns.
    if self.saved is None:
      return "no checkpoint had been saved yet"
    if not self.write:  # Its folder may be on another host.
      return "process 0 keeps its last good checkpoint"
    return (f"the last good checkpoint, {checkpoints.directory(self.workdir)}"
            f"/{self.saved}, is kept")

  def close(self) -> None:
    """Ends what is open, on every way out (maybe twice): the checkpoints'
    writes, the events, a progress line drawn in place."""
    if self.checkpoints is not None:
      self.checkpoints.close()
    if self.rows is not None and self.rows.events is not None:
      self.rows.events.close()
    self.end_line()


def _step(state) -> int:
  return int(np.max(jax.device_get(state.step)))


def train_and_evaluate(config, workdir: str, stream=None,
                       overwrite: bool = False) -> Optional[Dict[str, Any]]:
  """Trains `config` in run folder `workdir` (resuming it), writes its report;
  returns the final row. UserError before anything is written, Diverged, or
  control.Preempted."""
  members = members_lib.from_config(config)
  process.initialize(config, detect=False)  # Those the flags name.
  stock = models.get(config.model).stock(config)
  devices.resolve(config, len(members), stock)  # Before the data is prepared.
  lock.check_writable(workdir)
  if devices.is_main():
    lock.claim(workdir)
  existing = resume.check_run_folder(workdir, config, overwrite=overwrite)
  final = metrics_log.final_metrics(workdir) if existing else None
  if existing and not overwrite:
    # Says so, and writes nothing; where its final row was lost (a write cut
    # short), it is completed again from its last checkpoint.
    if record_lib.finished(workdir) and (
        final is not None or not checkpoints.latest_meta(workdir).get("done")):
      path = os.path.join(workdir, report.FILES[0])
      missing = resume.missing_final_checkpoint(workdir)
      said = [f"{workdir} already finished" + (
          f": test accuracy {100 * final['test_accuracy']:.2f}%" if final
          else ""), f"its report is {path}" if os.path.exists(path) else
              "--mode=report writes its report",
              "to train these settings again, pass another --workdir",
              *([f"note: {missing}"] if missing else [])]
      print("; ".join(said), file=stream or sys.stdout, flush=True)
      return final
  data_start = time.perf_counter()
  data = devices.main_first(functools.partial(pipeline.load, config))
  data_time = time.perf_counter() - data_start
  resources.check_steps(config, population.steps_per_epoch(
      config, len(data.train)))
  hooks = RunFolder(workdir, config, stream, existing=existing,
                    overwrite=overwrite, data_time=data_time)
  hooks.message(f"data ready in {data_time:.1f}s")
  with contextlib.ExitStack() as stack:
    stack.callback(hooks.close)
    model, hooks.implementation = models.build(config, hooks.message,
                                               hooks.status)
    hooks.stop = stack.enter_context(control.StopRequest())
    state, final = loop.train_and_evaluate(config, data, model, hooks)
    hooks.trained(state, final)
    return _finish(config, workdir, data, state, final, hooks, members,
                   model)


def _finish(config, workdir, data, state, final, hooks, members, model):
  """The final row and the line that gives the result, then the chosen
  member's report and config.json's record that the run is finished."""
  if hooks.logged is not None:  # A run being completed keeps its row.
    final = hooks.logged
  chosen = (final.get("chosen") or {}).get("index", 0)
  run = run_lib.Run.from_state(config, jax.device_get(state), chosen,
                               epoch=final.get("epochs_run", 0), model=model)
  if hooks.test_logits is not None:  # The ensemble and report reuse them.
    run.keep_logits(data.test.images, hooks.test_logits)
  if hooks.logged is None:
    rows = hooks.rows.read() if hooks.rows is not None else []
    last = (metrics_log.epoch_rows(rows) or [None])[-1]
    final = dict(final, wall_time_s=hooks.seconds(),
                 data_ready_s=hooks.data_time)
    if "time_to_target_s" in final:
      final["time_to_target_s"] = last["elapsed_s"] if last else None
    if devices.is_main():
      ensemble = report.ensemble_metrics(run, data.test)
      final.update({f"ensemble_test_{k}": v for k, v in (ensemble or {}).items()
                    if k != "members"})
    final.update(control.learning_verdict(final, last, data.test.labels))
    if hooks.rows is not None:
      hooks.rows.write(final)
  text = (f"test accuracy {100 * final['test_accuracy']:.2f}% (loss "
          f"{final['test_loss']:.4f}, {final['test_examples']} examples)")
  if final.get("chosen"):
    how = ("chosen by validation accuracy" if config.val_fraction > 0
           else "chosen as the first (no validation split to choose by)")
    chosen = members_lib.values_text(final["chosen"]["values"],
                                     final["chosen"]["seed"])
    text = f"{how}: {chosen}; {text}"
  if "test_accuracy_mean" in final:
    seeds = len(members) // len(members_lib.points(members))
    text += (f"; its {seeds} seeds {100 * final['test_accuracy_mean']:.2f} +- "
             f"{100 * final['test_accuracy_std']:.2f}%")
  if "ensemble_test_accuracy" in final:
    text += f", their ensemble {100 * final['ensemble_test_accuracy']:.2f}%"
  hooks.message(f"{text}; wall time {metrics_log.wall_time(final):.1f}s; "
                f"results in {workdir}" + ("" if config.report else
                                           " (--noreport: --mode=report "
                                           "writes its report)"))
  # The report comes after the result (a stop in it: the same command
  # writes it), then the record that the run is finished.
  if devices.is_main():
    if config.report:
      start, path = time.perf_counter(), os.path.join(workdir, report.FILES[0])
      hooks.status(_reporting(path, config.analyses))
      report.write(workdir, run, data.test, data.class_names, val=data.val)
      if hooks.rows.events is not None:
        hooks.rows.events.figures()
      hooks.message(f"wrote {path} in {time.perf_counter() - start:.1f}s")
    hooks.close()
    record_lib.finish(workdir, final)
  return final


def _reporting(path: str, analyses: bool) -> str:
  return (f"writing {path} with its figures" + (
      " and the analyses of what the model learned (--noanalyses skips them)"
      if analyses else ""))


def rewrite_report(workdir: str, **overrides) -> Optional[Dict[str, Any]]:
  """`--mode=report`: evaluates a run's latest checkpoint, rewrites its report
  (completes a run trained to the end). overrides: data_dir, mnist_dir, impl."""
  path = os.path.join(workdir, report.FILES[0])
  how = ("rewritten" if record_lib.finished(workdir) and all(
      os.path.exists(os.path.join(workdir, f)) for f in report.FILES)
         else "incomplete: rebuilt" if os.path.exists(path)
         else "missing: rebuilt")
  if ((not record_lib.finished(workdir) or  # Trained to the end: complete
       metrics_log.final_metrics(workdir) is None) and  # it (its final row).
      checkpoints.latest_meta(workdir).get("done")):
    final = train_and_evaluate(record_lib.used_config(
        workdir, **overrides, report=True), workdir)
    print(f"{path} was {how}; the run is finished")
    return final
  missing = resume.missing_final_checkpoint(workdir)
  if missing:
    raise UserError(f"{missing}: its report.md stands for the finished run "
                    "and is kept; put that checkpoint back to rewrite it, or "
                    "train the run again with --overwrite")
  run = run_lib.load_run(workdir, **overrides)
  dataset = pipeline.load(run.config)
  note = run_lib.run_note(workdir, run)
  print(_reporting(path, run.config.analyses), flush=True)
  result = report.write(workdir, run, dataset.test, dataset.class_names,
                        note=note, val=dataset.val)
  print(f"test accuracy {100 * result['accuracy']:.2f}% (loss "
        f"{result['loss']:.4f}, {len(dataset.test)} examples, checkpoint of "
        f"epoch {run.epoch}); {path} was {how}"
        f"{f'; note: {note}' if note else ''}")
  return result

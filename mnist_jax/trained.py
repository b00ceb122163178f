"""A finished run loaded back from its folder: `--mode=report` and predictions.

`load_run` restores the latest checkpoint of a run folder without writing to
it, every member of it, and keeps the chosen one (members.py) and its grid
point's seeds; `rewrite_report` evaluates them on the test split again and
rewrites the report files (report.py); predict.py predicts image files with
the chosen member, or with `--ensemble` the mean of its seeds.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from mnist_jax import checkpoint as checkpoint_lib
from mnist_jax import data as data_lib
from mnist_jax import members as members_lib
from mnist_jax import models
from mnist_jax import report
from mnist_jax import train
from mnist_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model loaded from its run folder: its chosen member.

  With several members (members.py), `params` are the chosen member's and
  `seed_params` those of its grid point's seeds, stacked [S, ...], for the
  ensemble; for one member, S = 1.
  """
  config: Any
  params: Any
  apply_fn: Callable
  view: Any  # The model's input layout (data.to_view).
  epoch: int
  member: int = 0
  seeds: Tuple[int, ...] = (0,)  # The chosen grid point's members.
  seed_params: Any = None

  def logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The chosen member's logits [N, K] for uint8 images [N, 28, 28]."""
    return train.predict_logits(self.params, self.apply_fn, images, self.view,
                                batch_size)

  def seed_logits(self, images: np.ndarray,
                  batch_size: int = 1000) -> np.ndarray:
    """Logits [S, N, K] of the chosen grid point's S seeds."""
    return train.predict_logits(self.seed_params, self.apply_fn, images,
                                self.view, batch_size, stacked=True)

  def probabilities(self, images: np.ndarray, ensemble: bool = False,
                    batch_size: int = 1000) -> np.ndarray:
    """Class probabilities [N, K]: the chosen member's, or with `ensemble` the
    mean of its grid point's seeds'."""
    if ensemble:
      return report.ensemble_probabilities(self.seed_logits(images, batch_size))
    return report.softmax(self.logits(images, batch_size))


def load_run(workdir: str, **overrides) -> Run:
  """Restores the latest checkpoint of a run folder, without writing to it.

  The chosen member is the one the final row of metrics.jsonl names (member
  0 of a run that has none, e.g. an unfinished one).

  overrides: Config fields to change, e.g. data_dir when the data moved.
  """
  config = workdir_lib.read_config(workdir).replace(**overrides)
  workdir_lib.check_model(workdir, config)
  members = members_lib.from_config(config)
  create = functools.partial(train.create_train_state, config=config,
                             model=models.build(config), steps_per_epoch=1)
  # Shapes only: orbax restores into them, and nothing is initialised.
  template = jax.eval_shape(lambda: members_lib.init_state(
      members, create, members_lib.keys(members)[0], 1))
  if not checkpoint_lib.complete_steps(os.path.join(
      workdir, checkpoint_lib.CHECKPOINT_DIR)) and os.path.isdir(workdir):
    raise checkpoint_lib.CheckpointError(
        f"{workdir} has no checkpoint yet (its training stopped before the "
        f"first was saved); train it first: {workdir_lib.run_command(workdir)}")
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    state, meta = checkpoints.restore(template, model=config.model)
  finally:
    checkpoints.close()
  chosen = (workdir_lib.final_metrics(workdir) or {}).get("chosen")
  member = chosen["index"] if chosen else 0
  seeds = next(p for p in members_lib.points(members) if member in p)
  params = state.params
  if len(members) == 1:
    seed_params = jax.tree.map(lambda p: p[None], params)
  else:
    seed_params = jax.tree.map(lambda p: p[np.asarray(seeds)], params)
    params = jax.tree.map(lambda p: p[member], params)
  return Run(config, params, state.apply_fn, models.input_view(config),
             int(meta.get("epoch", 0)), member, seeds, seed_params)


def checkpoint_note(workdir: str, run: Run) -> Optional[str]:
  """What results from `run` (its latest checkpoint) stand for, where that is
  not the finished run: still training, an older checkpoint than the run's
  last epoch, or an unfinished run. None for the run's last checkpoint."""
  epochs = [r["epoch"] for r in workdir_lib.read_metrics(
      os.path.join(workdir, workdir_lib.METRICS_FILE))
            if "train_loss" in r or r.get("lost")]
  last = max(epochs, default=0)
  if workdir_lib.in_use(workdir):
    pid = workdir_lib.holder(workdir).get("pid")
    return (f"{workdir} is still training ({f'pid {pid}, ' if pid else ''}"
            f"epoch {last} of {run.config.epochs} logged): these results are "
            f"of its latest checkpoint, of epoch {run.epoch}")
  if run.epoch < last:
    return (f"these results are of the checkpoint of epoch {run.epoch}, older "
            f"than the run's last epoch, {last}: its later checkpoints are "
            "missing")
  if workdir_lib.final_metrics(workdir) is None:
    return (f"{workdir} is unfinished (epoch {run.epoch} of "
            f"{run.config.epochs}): these results are of its latest "
            "checkpoint; to train it on, run: "
            f"{workdir_lib.run_command(workdir)}")
  return None


def _training_ended(workdir: str) -> bool:
  """Whether the latest checkpoint is the one a run saves at its end."""
  if not checkpoint_lib.complete_steps(
      os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)):
    return False
  reader = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    return bool(reader.read_meta()[1].get("done"))
  finally:
    reader.close()


def rewrite_report(workdir: str, **overrides) -> Dict[str, Any]:
  """The `--mode=report` command: evaluates a run, rewrites its report.

  A run trained to the end but not finished (killed while finishing) is
  completed as its training command would (train.train_and_evaluate, which
  trains nothing). Any other run's report is of its latest checkpoint, and
  says what that is where it is not the finished run (`checkpoint_note`).

  overrides: data_dir / mnist_dir, when the data is elsewhere than at
  training; impl, to evaluate with other layer implementations.
  """
  path = os.path.join(workdir, report.FILES[0])
  how = ("rewritten" if workdir_lib.finished(workdir) and all(
      os.path.exists(os.path.join(workdir, f)) for f in report.FILES)
         else "incomplete: rebuilt" if os.path.exists(path)
         else "missing: rebuilt")
  config = workdir_lib.read_config(workdir)
  if not workdir_lib.finished(workdir) and _training_ended(workdir):
    final = train.train_and_evaluate(config.replace(**overrides), workdir)
    print(f"{path} was {how}; the run is finished")
    return final
  run = load_run(workdir, **overrides)
  note = checkpoint_note(workdir, run)
  dataset = data_lib.load(run.config)
  images = np.asarray(dataset.test.images)
  logits = run.seed_logits(images, run.config.eval_batch_size)
  ensemble = report.ensemble_metrics(logits, dataset.test.labels)
  result = report.write(workdir, run.config, dataset.test,
                        logits[run.seeds.index(run.member)],
                        dataset.class_names, ensemble=ensemble, note=note)
  print(f"test accuracy {100 * result['accuracy']:.2f}% (loss "
        f"{result['loss']:.4f}, {len(dataset.test)} examples, checkpoint of "
        f"epoch {run.epoch}); {path} was {how}"
        f"{f'; note: {note}' if note else ''}")
  return result

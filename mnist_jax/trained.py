"""A finished run loaded back from its folder: `--mode=report` and predictions.

`load_run` restores the latest checkpoint of a run folder without writing to
it; `rewrite_report` evaluates that model on the test split again and rewrites
the report files (report.py); predict.py predicts image files with it.
"""

import dataclasses
import os
from typing import Any, Callable, Dict

import jax
import numpy as np

from mnist_jax import checkpoint as checkpoint_lib
from mnist_jax import data as data_lib
from mnist_jax import models
from mnist_jax import report
from mnist_jax import train
from mnist_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model loaded from its run folder."""
  config: Any
  params: Any
  apply_fn: Callable
  view: Any  # The model's input layout (data.to_view).
  epoch: int

  def logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits [N, K] for uint8 images [N, 28, 28]."""
    return train.predict_logits(self.params, self.apply_fn, images, self.view,
                                batch_size)


def load_run(workdir: str, **overrides) -> Run:
  """Restores the latest checkpoint of a run folder, without writing to it.

  overrides: Config fields to change, e.g. data_dir when the data moved.
  """
  config = workdir_lib.read_config(workdir).replace(**overrides)
  template = train.create_train_state(jax.random.PRNGKey(0), config,
                                      models.build(config), steps_per_epoch=1)
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    state, meta = checkpoints.restore(template)
  finally:
    checkpoints.close()
  return Run(config, state.params, state.apply_fn, models.input_view(config),
             int(meta.get("epoch", 0)))


def rewrite_report(workdir: str, **overrides) -> Dict[str, Any]:
  """The `--mode=report` command: evaluates a finished run, rewrites its report.

  overrides: data_dir / mnist_dir, when the data is elsewhere than at
  training; impl, to evaluate with other layer implementations.
  """
  run = load_run(workdir, **overrides)
  dataset = data_lib.load(run.config)
  logits = run.logits(np.asarray(dataset.test.images),
                      run.config.eval_batch_size)
  result = report.write(workdir, run.config, dataset.test, logits,
                        dataset.class_names)
  print(f"test accuracy {100 * result['accuracy']:.2f}% (loss "
        f"{result['loss']:.4f}, {len(dataset.test)} examples, checkpoint of "
        f"epoch {run.epoch}); report in {os.path.join(workdir, 'report.md')}")
  return result

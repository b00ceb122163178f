"""The Python API: train a run, load it back, predict on numpy images.

`import mnist_jax` exposes these names, loading this module (and JAX, Flax,
orbax) only when one is first used, so the package itself imports at once.
README.md's "Python API" section shows them; experiments/tour.ipynb tours them.
"""

import os
from typing import Any, Dict, List, Optional

import numpy as np

from mnist_jax.config import Config
from mnist_jax.data import images
from mnist_jax.data import pipeline
from mnist_jax.models import get_config
from mnist_jax.results.run import Run, as_images, load_run
from mnist_jax.rundir import folder
from mnist_jax.rundir import run

__all__ = ["Config", "Run", "as_images", "get_config", "load_data",
           "load_image", "load_run", "read_metrics", "train_and_evaluate"]


def train_and_evaluate(config: Config, workdir: Optional[str] = None,
                       overwrite: bool = False) -> Dict[str, Any]:
  """Trains a run as `python launch.py` does with the same settings.

  Resumes `workdir` if it holds an unfinished run of the same settings (and
  returns at once if it is finished), unless `overwrite`. Like launch.py, it
  is the folder's one writer while it trains: another process on it is
  refused, and it is refused while another holds it. Progress lines go to
  stdout; errors raise mnist_jax.errors.UserError with the CLI's message.

  Args:
    config: from `get_config(model, preset, **flags)`.
    workdir: the run folder; default: config.workdir, else
      runs/<model>-<timestamp>.

  Returns:
    the final metrics row (test_accuracy, test_loss, wall_time_s, ...).
  """
  workdir = workdir or config.workdir or folder.default_workdir(
      config.model)
  with folder.locking():
    return run.train_and_evaluate(config.replace(workdir=workdir), workdir,
                                  overwrite=overwrite)


def load_data(config: Config, **overrides) -> pipeline.Dataset:
  """The dataset a config trains on, split as its run was: `.train`, `.val`
  and `.test` each hold images [N, 28, 28] uint8 and labels [N] int32, and
  `.class_names` the K label names. Prepares it first if needed.

  overrides: Config fields to change, e.g. data_dir or mnist_dir.
  """
  return pipeline.load(config.replace(**overrides))


def load_image(image) -> np.ndarray:
  """A picture of one digit as the models' input, as `--mode=predict` makes it.

  image: a file path (PNG, JPEG, anything Pillow reads) or a PIL image; any
  size, colour or background.

  Returns:
    [28, 28] uint8: white ink on black, cropped, fit to 20x20 and centred by
    mass, as the MNIST digits were made.
  """
  if isinstance(image, (str, os.PathLike)):
    return images.load(os.fspath(image))
  return images.preprocess(image)


def read_metrics(workdir: str) -> List[dict]:
  """A run folder's metrics.jsonl rows: one per epoch, then the final one
  (with test_accuracy) once the run has finished."""
  return list(folder.read_metrics(
      os.path.join(workdir, folder.METRICS_FILE)))

"""The Python API (README's "Python API"; experiments/tour.ipynb tours it).

`import mnist_jax` loads this module, and JAX, only when a name is first used.
"""

import io
import os
from typing import Any, Dict, List, Optional

import numpy as np

from mnist_jax.config import Config
from mnist_jax.data import pipeline
from mnist_jax.models import get_config
from mnist_jax.results.run import Run, as_images, load_run
from mnist_jax.rundir import choose
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax import modes

__all__ = ["Config", "Run", "as_images", "get_config", "load_data",
           "load_image", "load_run", "read_metrics", "train_and_evaluate"]


def train_and_evaluate(config: Config, workdir: Optional[str] = None,
                       overwrite: bool = False) -> Optional[Dict[str, Any]]:
  """Trains as `python launch.py` does (resuming `workdir`, default
  config.workdir or runs/<model>-<timestamp>, unless `overwrite`; one writer
  at a time); returns the final metrics row. Errors: UserError."""
  workdir = workdir or config.workdir or choose.default_workdir(config.model)
  with lock.locking():
    return modes.train_and_evaluate(config.replace(workdir=workdir), workdir,
                                  overwrite=overwrite)


def load_data(config: Config, **overrides) -> pipeline.Dataset:
  """The dataset a config trains on, split as its run was (prepared if need
  be); overrides: Config fields to change, e.g. data_dir."""
  return pipeline.load(config.replace(**overrides))


def load_image(image, shape=(28, 28, 1)) -> np.ndarray:
  """A picture (a file path or PIL image) as `--mode=predict` makes it a
  dataset's input: uint8 of `shape` [H, W, C] (MNIST's digits: [28, 28, 1])."""
  from mnist_jax.data import images  # pylint: disable=g-import-not-at-top
  if not isinstance(image, (str, os.PathLike)):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    image = buffer
  return images.load(image, shape, name="the image")


def read_metrics(workdir: str) -> List[dict]:
  """A run folder's metrics.jsonl rows: one per epoch, then the final one."""
  return metrics_log.MetricsLog(workdir).read()

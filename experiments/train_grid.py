"""Trains a grid of runs, models x values of settings x seeds, into one folder,
reusing the finished ones: compare.py's --train and --vary."""

import itertools
import os
from typing import Dict, List, Sequence

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.errors import UserError
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume


def parse_vary(specs: Sequence[str]) -> Dict[str, list]:
  """`--vary` specs NAME=V1/V2/... as {setting: [values]}, typed as its
  flag (`mlp_hidden=256/512,256`: (256,) and (512, 256))."""
  grid: Dict[str, list] = {}
  for spec in specs:
    name, _, listed = (t.strip() for t in spec.partition("="))
    if name in ("model", "seed", "preset") or name not in config_lib.SETTINGS:
      raise UserError(
          f"--vary={spec}: vary a setting other than model, preset and seed "
          "(--train, --preset and --seeds choose those), e.g. "
          "--vary=mlp_hidden=256/512")
    texts = [t.strip() for t in listed.split("/") if t.strip()]
    if not texts or name in grid:
      raise UserError(f"--vary={spec}: give each name once, as NAME=V1/V2/...")
    grid[name] = []
    for text in texts:
      try:
        grid[name].append(config_lib.parse(name, text))  # As its flag reads.
      except UserError as e:
        raise UserError(f"--vary={name}: {text!r} is not a value of {name} "
                        f"({e})") from None
  return grid


def train_runs(names, seeds, runs_root: str, preset: str = "tuned", log=print,
               stream=None, vary=None, **overrides) -> List[str]:
  """Trains each model, `vary` combination and seed into runs_root, reusing
  finished runs; folders MODEL[-NAME=VALUE...]-seedN."""
  process.setup_process()
  vary, folders = vary or {}, []
  for name, values, seed in itertools.product(
      names, [dict(zip(vary, c)) for c in itertools.product(*vary.values())],
      seeds):
    folder = os.path.join(runs_root, "-".join([name] + [
        f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in values.items()] + [f"seed{seed}"]))
    config = models.get_config(name, preset, seed=seed, workdir=folder,
                               **{**overrides, **values})
    if os.path.isdir(folder) and record.finished(folder) and not (
        resume.config_differences(record.read_config(folder), config)):
      log(f"{folder}: finished before, reused")
    else:
      log(f"training {os.path.basename(folder)} in {folder}")
      modes.train_and_evaluate(config, folder, stream=stream)
    folders.append(folder)
  return folders

"""--dry_run: what a training command would run, printed instead; nothing is
trained, prepared or written (parameters are counted from shapes alone).
"""

from typing import Collection, List, Optional, Tuple

import jax

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.config import value_text
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.errors import Diverged
from mnist_jax.rundir import choose
from mnist_jax.rundir import lock
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resources
from mnist_jax.rundir import resume
from mnist_jax.training import devices


def validation_line(config: config_lib.Config, num_members: int) -> str:
  """Which part of the training split is held out, and what reads it."""
  f = config.val_fraction
  n = datasets.get(config.dataset).train_size
  if f > 0:
    held = n - pipeline.train_size(n, f)
    uses = ["the validation curve"]
    if num_members > 1:
      uses.append("the member choice")
    if config.target_accuracy:
      uses.append("--target_accuracy")
    return (f"the last {100 * f:g}% of the training split ({held:,} of its "
            f"{n:,} images; it trains on the other "
            f"{n - held:,}), for {' and '.join(uses)}")
  text = (f"none: it trains on all {n:,} training images, so no "
          "validation curve")
  if num_members > 1:
    text += "; of its members, the first is reported"
  return text + "; --sweep is refused"


def devices_line(config: config_lib.Config, members) -> str:
  """How the run would spread over this machine's devices."""
  if (config.coordinator_address or config.num_processes > 1 or
      process.slurm_tasks()):
    return ("several processes: their devices are known once they connect, "
            "when the run starts")
  lines: List[str] = []
  devices.Layout(config, models.get(config.model).stock(config), len(members),
                 lines.append)
  return lines[0] if lines else f"one {jax.default_backend().upper()} device"


def settings_lines(config: config_lib.Config,
                   given: Collection[str]) -> List[str]:
  """Every setting, grouped as --help lists them, with where it comes from:
  a flag `given` (and the value it replaced, if other), the preset or the
  default."""
  preset = models.registry.preset_overrides(config.model, config.preset)
  values = config.to_dict()
  before = {**models.get_config(config.model, None).to_dict(), **preset}
  lines = []
  for group in config_lib.GROUPS:
    lines.append(f"  {group}:")
    for name in (n for n in values if config_lib.SETTINGS[n].group == group):
      origin = "preset" if name in preset else "default"
      if name == "workdir":
        origin = "flag" if name in given else "chosen (see run folder)"
      elif name in given:
        origin = "flag" if before[name] == values[name] or name == "preset" \
            else f"flag; {origin}: {value_text(before[name])}"
      lines.append(f"    {f'--{name}={value_text(values[name])}':<34} "
                   f"{origin}")
  return lines


def text(config: config_lib.Config, given: Collection[str], folder: str,
         members: tuple) -> str:
  """What --dry_run prints. config: with the folder it would use as workdir;
  given: the settings given as flags; folder: which run folder and why."""
  return "\n".join([
      "dry run: nothing is trained, prepared or written",
      f"model:      {config.model} ({config.preset} preset): "
      f"{models.get(config.model).describe(config)}; "
      f"{resources.parameter_count(config):,} parameters; --impl="
      f"{config.impl} (a fast kernel only after it is checked against the "
      "stock module as the run starts)",
      f"validation: {validation_line(config, len(members))}",
      f"devices:    {devices_line(config, members)}",
      f"run folder: {folder}",
      "settings (flag: given on the command line; preset: set by "
      f"--preset={config.preset}; default: the Config default):",
      *settings_lines(config, given)])


def folder(config: config_lib.Config,
           overwrite: bool) -> Tuple[Optional[str], str]:
  """(the run folder, what a training command would do with it), after the
  checks a run makes before it writes."""
  work = config.workdir
  try:
    if not work:
      choice = choose.choose(config, overwrite=overwrite)
      return choice.path, choice.reason
    if lock.in_use(work):
      raise lock.InUse(work)
    lock.check_writable(work)
    if not resume.check_run_folder(work, config, overwrite):
      return work, f"{work}, a new run folder"
    if overwrite:
      return work, f"{work}, deleted and started over (--overwrite)"
    resume.check_not_diverged(work, config)
  except Diverged as e:
    return work, f"none: the run would stop at once: {e}"
  state, last = record.status(work)
  if state == "finished":
    return work, (f"{work} already finished: the run would print its result "
                  "and stop (--overwrite trains it again)")
  return work, choose.going_on(work, last, config)


def show(config: config_lib.Config, given: Collection[str], overwrite: bool,
         members: tuple) -> None:
  """Prints what the training command would do."""
  work, line = folder(config, overwrite)
  print(text(config.replace(workdir=work), given, line, members))

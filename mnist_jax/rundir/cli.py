"""launch.py's run settings as flags, the run folder it trains in, and what
the line it ends with says of the command (`Command`).
"""

import dataclasses
import os
import shutil
import signal
from typing import Dict, Optional

from absl import flags

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.config import value_text
from mnist_jax.errors import UserError
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import choose
from mnist_jax.rundir import lock
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib


def _preset_help() -> str:
  """Every preset, naming its models where not all have it, then those
  holding out no validation data: "seed (linear, cnn), best"."""
  having, empty = {}, {}
  for model, spec in models.MODELS.items():
    for preset in spec.presets:
      having.setdefault(preset, []).append(model)
      if models.get_config(model, preset).val_fraction == 0:
        empty.setdefault(preset, []).append(model)
  named = lambda found, every: ", ".join(
      p if ms == every(p) else f"{p} ({', '.join(ms)})"
      for p, ms in found.items())
  return (f": {named(having, lambda p: list(models.MODELS))}; holding out no "
          "validation data (so no validation curve, and --sweep refused): "
          f"{named(empty, having.get)}")


def flag_help(name: str, by_presets: set) -> str:
  """A run setting's --help line: its declared help, what --model, --preset
  and --sweep accept or which models have it, then its default (`by_presets`:
  the settings some preset sets)."""
  owners = models.models_with(name)
  text = config_lib.SETTINGS[name].help
  if owners:
    text += f"; {'/'.join(owners)} only"
  elif name == "model":
    *names, last = models.MODELS
    text += f": {', '.join(names)} or {last}"
  elif name == "preset":
    text += _preset_help()
  elif name == "sweep":
    text += f"; NAME: {', '.join(members_lib.SWEEPABLE)}"
  values = {value_text(models.get(m).settings[name].default)
            for m in owners} or {value_text(config_lib.SETTINGS[name].default)}
  value = values.pop() if len(values) == 1 else "the model's"
  if name in by_presets:
    value = f"the preset's, else {value}"
  return f"{text} (default: {value})"


def define_settings() -> None:
  """Every run setting as a flag of launch.py under its --help group (absl's
  module_name), unset (None): main takes the preset's value, else the
  default. --sweep is repeatable."""
  by_presets = {n for m, spec in models.MODELS.items() for p in spec.presets
                for n in models.registry.preset_overrides(m, p)}
  for name, declared in config_lib.SETTINGS.items():
    args = dict(help=flag_help(name, by_presets), module_name=declared.group)
    if name == "sweep":
      flags.DEFINE_multi_string(name, None, **args)
      flags.FLAGS[name].help = args["help"]  # Says "repeat" itself.
    elif isinstance(declared.default, bool):
      flags.DEFINE_bool(name, None, **args)
    else:
      flags.DEFINE(declared.reader(), name, None,
                   serializer=flags.ArgumentSerializer(), **args)


def overrides(given: Dict[str, object], model: str) -> dict:
  """The run settings given on the command line, --model and --preset apart
  (absl parsed them); --sweep canonical."""
  values = {n: v for n, v in given.items()
            if v is not None and n not in ("model", "preset")}
  if "sweep" in values:
    values["sweep"] = members_lib.canonical(values["sweep"], model)
  for name in members_lib.parse(values.get("sweep", "")):
    if name in values:
      raise UserError(f"--{name} and --sweep={name}=... both set {name}; pass "
                      "its values in --sweep only")
  return values


@dataclasses.dataclass
class Command:
  """What this command is doing, for the line it ends with: its settings, the
  run folder it trains in (`fresh`: this command begins the run there, and
  this process holds it; `existed`: the folder was there before, empty), the
  signal that stopped it."""
  config: Optional[config_lib.Config] = None
  work: Optional[str] = None
  fresh: bool = False
  existed: bool = False
  signum: int = signal.SIGINT

  def interrupted(self, again: str) -> str:
    """What a Ctrl-C outside the training loop says; again: how to go on."""
    name = ("Ctrl-C" if self.signum == signal.SIGINT else
            signal.Signals(self.signum).name)
    begun = self.work and os.path.exists(os.path.join(self.work,
                                                      record.CONFIG_FILE))
    return f"interrupted ({name}); {again} to {'resume' if begun else 'start'}"

  def discard_unstarted(self) -> None:
    """Removes the run folder this command began if it failed before its
    first checkpoint: nothing half-written passes for a run."""
    work = self.work
    if self.fresh and os.path.isdir(work) and not checkpoints.steps(work):
      shutil.rmtree(work, ignore_errors=True)
      if self.existed:
        os.makedirs(work, exist_ok=True)


def run_folder(config: config_lib.Config, overwrite: bool):
  """(the folder a training command trains in, claimed by process 0; a line
  saying why, or None)."""
  process.initialize(config)
  if not config.workdir:
    for attempt in range(3):
      choice = choose.choose(config, overwrite=overwrite)
      try:
        if devices.is_main():
          lock.claim(choice.path)
        return choice.path, choice.reason if choice.news else None
      except lock.InUse:  # Another command took it a moment ago.
        if attempt == 2:
          raise
  if devices.is_main():
    lock.claim(config.workdir)
  if not overwrite:
    resume.check_not_diverged(config.workdir, config)
  return config.workdir, None

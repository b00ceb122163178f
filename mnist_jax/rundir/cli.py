"""launch.py's run settings as flags, the run folder it trains in, and what
the line it ends with says of the command (`Command`).
"""

import dataclasses
import os
import shutil
import signal
from typing import Any, Dict, List, Optional

from absl import flags

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import choose
from mnist_jax.rundir import lock
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import devices


def _preset_help() -> str:
  """Every preset, naming its models where not all have it, then those
  holding out no validation data: "seed (linear, cnn), best"."""
  having: Dict[str, List[str]] = {}
  empty: Dict[str, List[str]] = {}
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


def define_settings() -> None:
  """Every run setting as a flag of launch.py under its --help group (absl's
  module_name) with its default (a model's own: where its models agree);
  --model, --preset and --sweep list what they take; --sweep is repeatable.
  A flag given is `present`: main takes it over the preset's value."""
  lists = {"model": f": {', '.join(models.MODELS)}", "preset": _preset_help(),
           "sweep": f"; NAME: {', '.join(config_lib.sweepable())}"}
  for name, declared in config_lib.SETTINGS.items():
    owners = models.models_with(name)
    defaults = {repr(models.get(m).settings[name].default) for m in owners}
    help_text = declared.help + (f"; {'/'.join(owners)} only" if owners else
                                 lists.get(name, ""))
    args: Dict[str, Any] = dict(
        default=None if len(defaults) > 1 or name == "sweep" else
        declared.default, help=help_text, module_name=declared.group)
    if name == "sweep":
      flags.DEFINE_multi_string(name, **args)
      flags.FLAGS[name].help = help_text  # Says "repeat" itself.
    elif isinstance(declared.default, bool):
      flags.DEFINE_bool(name, **args)
    else:
      flags.DEFINE(declared.reader(), name, serializer=flags.ListSerializer(
          ",") if isinstance(declared.default, tuple) else None, **args)


def overrides(flag_values: flags.FlagValues) -> dict:
  """The run settings given on the command line, --model and --preset apart
  (absl parsed them); --sweep canonical."""
  values = {n: flag_values[n].value for n in config_lib.SETTINGS
            if flag_values[n].present and n not in ("model", "preset")}
  if "sweep" in values:
    values["sweep"] = config_lib.sweep_text(values["sweep"],
                                           flag_values.model)
  for name in config_lib.sweep_grid(values.get("sweep") or ""):
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
    begun = self.work and record.is_run(self.work)
    return f"interrupted ({name}); {again} to {'resume' if begun else 'start'}"

  def discard_unstarted(self) -> None:
    """Removes the run folder this command began if it failed before its
    first checkpoint: nothing half-written passes for a run."""
    work = self.work
    if self.fresh and work and os.path.isdir(work) and not checkpoints.steps(
        work):
      shutil.rmtree(work, ignore_errors=True)
      if self.existed:
        os.makedirs(work, exist_ok=True)


def run_folder(config: config_lib.Config, overwrite: bool):
  """(the folder a training command trains in, claimed by process 0; a line
  saying why, or None)."""
  process.initialize(config)
  work = config.workdir
  if work:
    if devices.is_main():
      lock.claim(work)
    if not overwrite:
      resume.check_not_diverged(work, config)
    return work, None
  for attempt in range(3):
    choice = choose.choose(config, overwrite=overwrite)
    try:
      if devices.is_main():
        lock.claim(choice.path)
      return choice.path, choice.reason if choice.news else None
    except lock.InUse:  # Another command took it a moment ago.
      if attempt == 2:
        raise

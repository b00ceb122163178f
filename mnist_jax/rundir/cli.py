"""launch.py's flags and help, the run folder it trains in, and what the line
it ends with says of the command (`Command`).
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
from mnist_jax.errors import Diverged, UserError
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import choose
from mnist_jax.rundir import lock
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib

HELP_ARGS = ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort",
             "--helpfull", "-helpfull", "--helpxml", "-helpxml")


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


def flag_help(name: str) -> str:
  """A run setting's --help line: its declared help, what --model, --preset
  and --sweep accept or which models have it, then its default."""
  text = models.setting(name).help
  if name not in config_lib.FIELDS:
    text += f"; {'/'.join(models.models_with(name))} only"
  elif name == "model":
    *names, last = models.MODELS
    text += f": {', '.join(names)} or {last}"
  elif name == "preset":
    text += _preset_help()
  elif name == "sweep":
    text += f"; NAME: {', '.join(members_lib.SWEEPABLE)}"
  values = {value_text(models.setting(name, m).default)
            for m in models.models_with(name)} or {
                value_text(models.setting(name).default)}
  value = values.pop() if len(values) == 1 else "the model's"
  if name in models.registry.set_by_presets():
    value = f"the preset's, else {value}"
  return f"{text} (default: {value})"


def define_settings() -> None:
  """Every run setting as a flag of launch.py (see config.define); --sweep
  is repeatable."""
  for name in models.flag_names():
    if name == "sweep":
      flags.DEFINE_multi_string(name, None, "", module_name=config_lib.TRAINING)
      flags.FLAGS[name].help = flag_help(name)  # Says "repeat" itself.
    else:
      config_lib.define(name, models.setting(name), flags.FLAGS,
                        flag_help(name))


def define_own(define, name: str, default, group: str, help_text: str,
               **args) -> None:
  """One of launch.py's own flags (not a run setting), its default in its
  help."""
  define(name, default, help=f"{help_text} (default: {value_text(default)})",
         module_name=group, **args)


def help_text(usage: str, full: bool = False) -> str:
  """--help: the usage, then each flag's line under its group; `full`
  (--helpfull) adds the libraries' flags."""
  import textwrap  # pylint: disable=g-import-not-at-top
  out = [usage.strip()]
  for group in config_lib.GROUPS:
    out += ["", f"{group}:"]
    out += [textwrap.fill(f"--{'[no]' * f.boolean}{f.name}: {f.help}", width=80,
                          initial_indent="  ", subsequent_indent="      ")
            for f in flags.FLAGS.get_flags_for_module(group)]
  out += ["", textwrap.fill(
      "Exit status: 0 done (or already finished), 1 bad input, 2 a flag that "
      "does not parse, 3 diverged, 4 finished but did not learn, 5 out of "
      "memory or disk space, 130 or 143 stopped by Ctrl-C or SIGTERM, 141 "
      "the reader of its output stopped (| head). "
      "--helpfull also lists the libraries' flags.", width=80)]
  if full:
    out += [flags.FLAGS.module_help(m) for m in
            flags.FLAGS.flags_by_module_dict() if m not in config_lib.GROUPS]
  return "\n".join(out)


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


def dry_run_folder(config: config_lib.Config, overwrite: bool):
  """(the run folder, what a training command would do with it)."""
  work = config.workdir
  if not work:
    try:
      choice = choose.choose(config, overwrite=overwrite)
      return choice.path, choice.reason
    except Diverged as e:
      return None, f"none: the run would stop at once: {e}"
  lock.check_not_in_use(work)
  lock.check_writable(work)
  if not resume.check_run_folder(work, config, overwrite):
    return work, f"{work}, a new run folder"
  if overwrite:
    return work, f"{work}, deleted and started over (--overwrite)"
  try:
    resume.check_not_diverged(work, config)
  except Diverged as e:
    return work, f"none: the run would stop at once: {e}"
  state, last = record.status(work)
  if state == "finished":
    return work, (f"{work} already finished: the run would print its result "
                  "and stop (--overwrite trains it again)")
  if "test_accuracy" in (last or {}):
    return work, (f"completing {work}: it trained to the end, but its report "
                  "is not complete (the run would write it, training nothing)")
  logged = (last or {}).get("epoch", 0)
  return work, f"resuming {work} ({logged} of {config.epochs} epochs logged)"

"""--dry_run: what a training command would run, printed instead; nothing is
trained, prepared or written (parameters are counted from shapes alone).
"""

import os
from typing import Dict, List, Optional

import jax

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.config import value_text
from mnist_jax.data import datasets
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.rundir import resources


def sources(config: config_lib.Config, flags_given: Dict[str, object]
            ) -> Dict[str, str]:
  """Where each setting comes from: "flag" (with the value it replaced, if
  other), "preset" or "default"."""
  preset = models.registry.preset_overrides(config.model, config.preset)
  out = {}
  for name in config.to_dict():
    origin = "preset" if name in preset else "default"
    out[name] = origin
    if name in flags_given:
      before = preset.get(name, models.setting(name, config.model).default)
      same = before == getattr(config, name)
      out[name] = "flag" if same or name in ("model", "preset") else (
          f"flag; {origin}: {value_text(before)}")
  return out


def validation_line(config: config_lib.Config, num_members: int) -> str:
  """Which part of the training split is held out, and what reads it."""
  f = config.val_fraction
  n = datasets.get(config.dataset).train_size
  if f > 0:
    held = n - int(n * (1.0 - f))  # As pipeline.split.
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


def model_line(config: config_lib.Config) -> str:
  return (f"{config.model} ({config.preset} preset): "
          f"{models.registry.describe(config)}; "
          f"{resources.parameter_count(config):,} parameters; --impl="
          f"{config.impl} (a fast kernel only after it is checked against the "
          "stock module as the run starts)")


def devices_line(config: config_lib.Config, members) -> str:
  """How the run would spread over this machine's devices."""
  if (config.coordinator_address or config.num_processes > 1 or
      int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1):
    return ("several processes: their devices are known once they connect, "
            "when the run starts")
  lines = []
  devices.Layout(config, models.get(config.model).stock(config), len(members),
                 lines.append)
  return lines[0] if lines else f"one {jax.default_backend().upper()} device"


def settings_lines(config: config_lib.Config, flags_given: Dict[str, object],
                   workdir_source: str) -> List[str]:
  """Every setting, grouped as --help lists them, with where it comes from."""
  origin = sources(config, flags_given)
  origin["workdir"] = workdir_source
  lines = []
  for group in config_lib.GROUPS:
    names = [n for n in origin if models.setting(n).group == group]
    if names:
      lines.append(f"  {group}:")
    for name in names:
      setting = f"--{name}={value_text(getattr(config, name))}"
      lines.append(f"    {setting:<34} {origin[name]}")
  return lines


def text(config: config_lib.Config, flags_given: Dict[str, object],
         folder: str, workdir_source: str,
         members: Optional[tuple] = None) -> str:
  """What --dry_run prints. config: with the folder it would use as workdir;
  folder: which run folder and why; workdir_source: where --workdir came
  from."""
  members = members or members_lib.from_config(config)
  return "\n".join([
      "dry run: nothing is trained, prepared or written",
      f"model:      {model_line(config)}",
      f"validation: {validation_line(config, len(members))}",
      f"devices:    {devices_line(config, members)}",
      f"run folder: {folder}",
      "settings (flag: given on the command line; preset: set by "
      f"--preset={config.preset}; default: the Config default):",
      *settings_lines(config, flags_given, workdir_source)])

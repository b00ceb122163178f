"""Flag help has one source: Config field metadata and the models' settings
declarations, launch.py, --help, docs/flags.md.

Each Config field's `help` metadata (each model setting's declared help) is its
flag's one-line --help text and its row in docs/flags.md's table; launch.py's
own flags carry theirs in launch.py. These tests fail when one of the three
drifts from the others.
"""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

import launch
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.models import registry
from mnist_jax.training import members as members_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = launch.FLAGS
# A flag-table row: | `--name` | default | what it does |
ROW = re.compile(r"^\| `--(\w+)` \| (.*?) \| (.*) \|$")
GROUP_ROW = re.compile(r"^\| \*\*(.+)\*\* \| \| \|$")


def _help_line(name):
  """A flag's --help text: its help, then its default."""
  return f"{launch.flag_help(name)} (default: {launch.default_text(name)})"


def _launch_flags():
  """launch.py's own flags: those it defines that are not Config fields."""
  defined = {f.name for f in FLAGS.get_key_flags_for_module(launch)}
  return sorted(defined - set(models.flag_names()))


def _readme_flag_rows():
  """[(flag name, group, default cell, help cell)] of docs/flags.md's table,
  in order; a group starts at its row `| **Group** | | |`."""
  with open(os.path.join(ROOT, "docs", "flags.md"), encoding="utf-8") as f:
    section = f.read()
  rows, group = [], None
  for line in section.splitlines():
    heading = GROUP_ROW.match(line)
    if heading:
      group = heading.group(1)
    match = ROW.match(line)
    if match:
      name, default, help_text = match.groups()
      rows.append((name, group, *(
          c.replace("`", "").replace("\\|", "|").strip()
          for c in (default, help_text))))
  return rows


def _expected_rows():
  """[(flag name, group, default text, help text)] from Config and launch.py,
  in --help's order."""
  return [(name, launch.group_of(name), launch.default_text(name),
           launch.flag_help(name)) for name in launch.flags_in_order()]


@pytest.mark.parametrize("name", sorted(config_lib.FIELDS))
def test_every_config_field_has_one_line_help(name):
  metadata = config_lib.FIELDS[name].metadata
  help_text = metadata.get("help", "")
  assert help_text and "\n" not in help_text and len(help_text) < 160, name
  assert "`" not in help_text and "|" not in help_text, name
  assert isinstance(metadata.get("preset"), bool), name
  assert metadata.get("group") in config_lib.GROUPS, name


def test_preset_marks_match_the_registry():
  """A field is marked `preset` exactly when some preset of some model sets it,
  so --help's "the preset's, else X" is said of those fields and no others."""
  set_by_presets = set()
  for model, spec in registry.MODELS.items():
    for preset in spec.presets:
      set_by_presets |= set(registry.preset_overrides(model, preset))
  marked = {n for n, f in config_lib.FIELDS.items() if f.metadata["preset"]}
  assert marked == set_by_presets & set(config_lib.FIELDS)
  assert registry.set_by_presets() == set_by_presets


@pytest.mark.parametrize("name", sorted(
    set(models.flag_names()) - set(config_lib.FIELDS)))
def test_every_model_setting_has_one_line_help_naming_its_models(name):
  """A model's own setting is a flag whose help is its declaration's, says
  which models have it, and defaults to the module attribute's default."""
  declared = models.setting(name)
  assert declared.help and "\n" not in declared.help, name
  assert "`" not in declared.help and "|" not in declared.help, name
  assert declared.group in config_lib.GROUPS, name
  owners = models.models_with(name)
  assert launch.flag_help(name) == f"{declared.help}; {'/'.join(owners)} only"
  assert FLAGS[name].help == _help_line(name)
  for model in owners:
    module = registry.get(model).module
    attribute = models.setting(name, model).attribute
    assert models.setting(name, model).default == {
        f.name: f.default for f in dataclasses.fields(module)}[attribute]


def test_flag_help_is_built_from_the_field_metadata():
  for name, field in config_lib.FIELDS.items():
    assert FLAGS[name].help.startswith(field.metadata["help"])
    assert launch.flag_help(name).startswith(field.metadata["help"])
    assert _help_line(name) == (
        f"{launch.flag_help(name)} (default: {launch.default_text(name)})")
    assert launch.value_text(field.default) in FLAGS[name].help
  assert set(_launch_flags()) == {"debug", "dry_run", "ensemble", "host",
                                  "image", "json", "mode", "overwrite", "plot",
                                  "port"}
  assert set(_launch_flags()) == set(launch.OWN)
  for name, (_, default, group, help_text, _) in launch.OWN.items():
    assert launch.flag_help(name) == help_text and group in config_lib.GROUPS
    assert FLAGS[name].default == default


def _printed_help(capsys, arg="--help"):
  with pytest.raises(SystemExit) as e:
    launch._parse(["launch.py", arg])  # pylint: disable=protected-access
  assert e.value.code == 0, arg
  return capsys.readouterr().out


def test_help_output_carries_every_line(capsys):
  """What `python launch.py --help` prints holds every flag's help and
  default, in one style."""
  printed = " ".join(_printed_help(capsys).split())
  for name in [*models.flag_names(), *_launch_flags()]:
    spelled = f"--[no]{name}:" if FLAGS[name].boolean else f"--{name}:"
    assert f" {spelled} {_help_line(name)}" in printed, name
  assert printed.count("(default: ") == len(FLAGS.get_key_flags_for_module(
      launch))
  assert "(default: '" not in printed and "(a number)" not in printed


def test_help_lists_flags_by_group_model_first(capsys):
  printed = _printed_help(capsys)
  headings = [line[:-1] for line in printed.splitlines()
              if line.endswith(":") and not line.startswith(" ")]
  assert headings == list(config_lib.GROUPS)
  flag_lines = [line.split(":")[0].strip() for line in printed.splitlines()
                if line.startswith("  --")]
  assert flag_lines[0] == "--model"
  assert [f.replace("[no]", "")[2:] for f in flag_lines] == (
      launch.flags_in_order())


def test_sweep_and_preset_help_say_what_they_accept(capsys):
  printed = " ".join(_printed_help(capsys).split())
  assert f"NAME: {', '.join(members_lib.SWEEPABLE)}" in printed
  assert ("holding out no validation data (so no validation curve, and "
          "--sweep refused): seed (linear, cnn), tuned (linear), best, fast"
          in printed)


@pytest.mark.parametrize("arg", ["-h", "--help", "-?", "--helpshort",
                                 "--helpfull", "--helpxml"])
def test_every_help_flag_prints_help_and_exits_0(capsys, arg):
  printed = _printed_help(capsys, arg)
  assert "--model" in printed
  if arg == "--helpfull":  # And the libraries' flags.
    assert "--verbosity" in printed and printed.startswith(launch.help_text())


def test_help_exits_0_from_the_shell():
  result = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(launch.__doc__.strip()[:40])


def test_readme_flag_table_matches_the_help():
  """Same flags, in the same groups and order, with the same defaults and
  help as --help."""
  rows = _readme_flag_rows()
  names = [r[0] for r in rows]
  assert len(names) == len(set(names)), "a flag has two rows in docs/flags.md"
  assert rows == _expected_rows()


def test_value_text_spells_defaults_as_typed():
  assert launch.value_text(None) == "unset"
  assert launch.value_text([]) == "unset"
  assert launch.value_text(False) == "false"
  assert launch.value_text((512, 256)) == "512,256"
  assert launch.value_text(1e-3) == "0.001"
  assert launch.value_text("VALID") == "VALID"


@pytest.mark.parametrize("change, message", [
    ({"impl": "bogus"}, "--impl must be one of auto, stock, fast, got 'bogus'"),
    ({"cnn_kernel": 0}, "--cnn_kernel must be positive, got 0"),
])
def test_new_fields_are_validated(change, message):
  with pytest.raises(UserError, match=re.escape(message)):
    models.validate(models.new_config("cnn").replace(**change))
  assert config_lib.validate(config_lib.Config()).impl == "auto"

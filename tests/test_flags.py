"""Flags have one source: each setting's declaration (a Config field, or a
model's own setting, both in config.SETTINGS), defined as absl flags into
launch.py.

Its declared help is its flag's one-line --help text and its row in
docs/flags.md's table; launch.py's own flags carry theirs in launch.py; a
value given in Python is read by the flag's own parser. These tests fail when
one of them drifts from the others.
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
from mnist_jax.errors import BadFlag, UserError
from mnist_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = launch.FLAGS
# A flag-table row: | `--name` | default | what it does |
ROW = re.compile(r"^\| `--(\w+)` \| (.*?) \| (.*) \|$")
GROUP_ROW = re.compile(r"^\| \*\*(.+)\*\* \| \| \|$")


def _launch_flags():
  """launch.py's own flags: those of its help groups that are no setting."""
  return sorted(set(_grouped()) - set(config_lib.SETTINGS))


def _grouped():
  """Every flag of launch.py's --help groups, in --help's order."""
  return [f.name for group in config_lib.GROUPS
          for f in FLAGS.get_flags_for_module(group)]


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


def _set_by_presets():
  """The settings some preset of some model sets."""
  return {name for model, spec in registry.MODELS.items()
          for preset in spec.presets
          for name in registry.preset_overrides(model, preset)}


def _expected_rows():
  """[(flag name, group, default text, help text)] of launch.py's flags, in
  the order they are defined: the flag's help and default ("the preset's,
  else <default>" where a preset sets it; "the model's" where its models'
  defaults differ)."""
  rows = []
  for group in config_lib.GROUPS:
    for flag in FLAGS.get_flags_for_module(group):
      default = ("the model's" if flag.default is None and
                 models.models_with(flag.name) else
                 config_lib.value_text(flag.default))
      if flag.name in _set_by_presets():
        default = f"the preset's, else {default}"
      rows.append((flag.name, group, default, flag.help))
  return rows


@pytest.mark.parametrize("name", sorted(config_lib.SETTINGS))
def test_every_setting_has_one_line_help_in_a_group(name):
  declared = config_lib.SETTINGS[name]
  assert declared.help and "\n" not in declared.help, name
  assert len(declared.help) < 160, name
  assert "`" not in declared.help and "|" not in declared.help, name
  assert declared.group in config_lib.GROUPS, name
  assert FLAGS[name].help.startswith(declared.help), name
  assert FLAGS.find_module_defining_flag(name) == declared.group


def test_help_says_that_unset_flags_take_the_preset(capsys):
  """Presets set some settings of every group but the run folder's; --help
  says that a flag left out takes the preset's value."""
  assert {config_lib.SETTINGS[n].group for n in _set_by_presets()} >= {
      config_lib.MODEL, config_lib.DATA, config_lib.TRAINING}
  assert "unset flags take the preset" in " ".join(
      _printed_help(capsys).split())


@pytest.mark.parametrize("name", sorted(
    set(config_lib.SETTINGS) - set(config_lib.FIELDS)))
def test_every_model_setting_has_one_line_help_naming_its_models(name):
  """A model's own setting is a flag whose help is its declaration's, says
  which models have it, and defaults to the module attribute's default."""
  declared = config_lib.SETTINGS[name]
  owners = models.models_with(name)
  assert FLAGS[name].help == f"{declared.help}; {'/'.join(owners)} only"
  defaults = set()
  for model in owners:
    module = registry.get(model).module
    own = registry.get(model).settings[name]
    assert own.default == {
        f.name: f.default for f in dataclasses.fields(module)}[own.attribute]
    defaults.add(repr(own.default))
  assert FLAGS[name].default == (declared.default if len(defaults) == 1
                                 else None)


def test_flag_help_is_built_from_the_declarations():
  for name, declared in config_lib.FIELDS.items():
    assert FLAGS[name].help.startswith(declared.help)
    if name != "sweep":  # Repeated: a list, empty unless given.
      assert FLAGS[name].default == declared.default, name
  assert _launch_flags() == sorted([
      "debug", "dry_run", "ensemble", "host", "image", "json", "mode",
      "overwrite", "plot", "port"])
  for name in _grouped():  # Their defaults: absl's, in --help.
    assert "(default: " not in FLAGS[name].help


@pytest.mark.parametrize("name", sorted(config_lib.SETTINGS))
def test_python_and_the_flags_read_a_value_with_one_parser(name):
  """A value given to get_config or Config.replace is read by the parser of
  the flag launch.py defines, so that each refuses it in the same line."""
  reader = config_lib.SETTINGS[name].reader()
  assert type(FLAGS[name].parser) is type(reader)
  assert FLAGS[name].parser.syntactic_help == reader.syntactic_help


@pytest.mark.parametrize("name, text", [
    ("epochs", "0"), ("epochs", "1e3"), ("learning_rate", "nan"),
    ("val_fraction", "1"), ("seed", str(2**32)), ("impl", "bogus"),
    ("mlp_hidden", "512,0"), ("mlp_hidden", ""), ("dropout", "-0.1")])
def test_a_bad_value_is_refused_alike_in_python_and_as_a_flag(capsys, name,
                                                              text):
  with pytest.raises(SystemExit) as e:
    launch._parse(["launch.py", f"--{name}={text}"])  # pylint: disable=protected-access
  FLAGS.unparse_flags()
  assert e.value.code == 2
  printed = capsys.readouterr().err.strip()
  with pytest.raises(BadFlag) as caught:
    models.get_config("mlp", **{name: text})
  assert printed == f"error: {caught.value}; see python launch.py --help"
  assert str(caught.value).startswith(f"flag --{name}={text}: ")


def _printed_help(capsys, arg="--help"):
  with pytest.raises(SystemExit) as e:
    launch._parse(["launch.py", arg])  # pylint: disable=protected-access
  assert e.value.code == 0, arg
  return capsys.readouterr().out


def test_help_output_carries_every_line(capsys):
  """What `python launch.py --help` prints holds every flag's help and
  default, and the bounds its parser reads."""
  printed = " ".join(_printed_help(capsys).split())
  for name in _grouped():
    spelled = f"--[no]{name}:" if FLAGS[name].boolean else f"--{name}:"
    line = f" {spelled} {' '.join(FLAGS[name].help.split())}"
    if FLAGS[name].default_as_str:  # absl's default.
      line += f" (default: {FLAGS[name].default_as_str})"
    if FLAGS[name].parser.syntactic_help:
      line += f" ({FLAGS[name].parser.syntactic_help})"
    assert line in printed, name
  assert printed.count("(default: ") == len(
      [n for n in _grouped() if FLAGS[n].default is not None])
  assert set(_grouped()) == {*config_lib.SETTINGS, *_launch_flags()}
  assert "(a number)" not in printed
  assert "an integer in the range [1, 1000000]" in printed  # --epochs.


def test_help_lists_flags_by_group(capsys):
  """--help lists the groups in config.GROUPS' order, each group's flags as
  absl orders them (by name)."""
  printed = _printed_help(capsys)
  headings = [line[:-1] for line in printed.splitlines()
              if line.endswith(":") and not line.startswith(" ")]
  assert headings == list(config_lib.GROUPS)
  flag_lines = [line.split(":")[0].strip() for line in printed.splitlines()
                if line.startswith("  --")]
  assert [f.replace("[no]", "")[2:] for f in flag_lines] == [
      f.name for group in config_lib.GROUPS
      for f in sorted(FLAGS.get_flags_for_module(group), key=lambda f: f.name)]
  assert _grouped()[:2] == ["model", "preset"]


def test_sweep_and_preset_help_say_what_they_accept(capsys):
  printed = " ".join(_printed_help(capsys).split())
  assert f"NAME: {', '.join(config_lib.sweepable())}" in printed
  assert ("holding out no validation data (so no validation curve, and "
          "--sweep refused): seed (linear, cnn), tuned (linear), best, fast"
          in printed)


@pytest.mark.parametrize("arg", ["-h", "--help", "-?", "--helpshort",
                                 "--helpfull", "--helpxml"])
def test_every_help_flag_prints_help_and_exits_0(capsys, arg):
  printed = _printed_help(capsys, arg)
  assert "--model" in printed
  if arg == "--helpfull":  # And the libraries' flags.
    assert "--verbosity" in printed and printed.startswith(
        _printed_help(capsys).rstrip())


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
  assert config_lib.value_text(None) == "unset"
  assert config_lib.value_text([]) == "unset"
  assert config_lib.value_text(False) == "false"
  assert config_lib.value_text((512, 256)) == "512,256"
  assert config_lib.value_text(1e-3) == "0.001"
  assert config_lib.value_text("VALID") == "VALID"


@pytest.mark.parametrize("change, message", [
    ({"impl": "bogus"}, "flag --impl=bogus: value should be one of "
     "<auto|stock|fast>"),
    ({"cnn_kernel": 0}, "flag --cnn_kernel=0: 0 is not an integer in the "
     "range [1, 28]"),
])
def test_new_fields_are_validated(change, message):
  with pytest.raises(UserError, match=re.escape(message)):
    models.get_config("cnn", None).replace(**change)
  assert config_lib.validate(config_lib.Config()).impl == "auto"

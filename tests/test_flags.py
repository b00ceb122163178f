"""Flag help has one source: Config field metadata, launch.py, --help, README.

Each Config field's `help` metadata is its flag's one-line --help text and its
row in the README's flag table; launch.py's own flags carry theirs in launch.py.
These tests fail when one of the three drifts from the others.
"""

import os
import re

import pytest

import launch
from mnist_jax import config as config_lib
from mnist_jax.errors import UserError
from mnist_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = launch.FLAGS
# A flag-table row: | `--name` | default | what it does |
ROW = re.compile(r"^\| `--(\w+)` \| (.*?) \| (.*) \|$")


def _launch_flags():
  """launch.py's own flags: those it defines that are not Config fields."""
  defined = {f.name for f in FLAGS.get_key_flags_for_module(launch)}
  return sorted(defined - set(config_lib.FIELDS))


def _readme_flag_rows():
  """{flag name: (default cell, help cell)} of the README's "## Flags" table."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
  rows = {}
  for line in section.splitlines():
    match = ROW.match(line)
    if match:
      name, default, help_text = match.groups()
      assert name not in rows, f"--{name} has two rows in the README's table"
      rows[name] = tuple(c.replace("`", "").replace("\\|", "|").strip()
                         for c in (default, help_text))
  return rows


def _expected_rows():
  """{flag name: (default text, help text)} from Config and launch.py."""
  expected = {name: (launch.default_text(name), field.metadata["help"])
              for name, field in config_lib.FIELDS.items()}
  for name in _launch_flags():
    # absl puts an enum's choices first ("<train|report|predict>: ...").
    help_text = re.sub(r"^<[^>]*>: ", "", FLAGS[name].help)
    expected[name] = (launch.value_text(FLAGS[name].default), help_text)
  return expected


@pytest.mark.parametrize("name", sorted(config_lib.FIELDS))
def test_every_config_field_has_one_line_help(name):
  metadata = config_lib.FIELDS[name].metadata
  help_text = metadata.get("help", "")
  assert help_text and "\n" not in help_text and len(help_text) < 160, name
  assert "`" not in help_text and "|" not in help_text, name
  assert isinstance(metadata.get("preset"), bool), name


def test_preset_marks_match_the_registry():
  """A field is marked `preset` exactly when some preset of some model sets it,
  so --help's "the preset's, else X" is said of those fields and no others."""
  set_by_presets = set()
  for model, spec in registry.MODELS.items():
    for preset in spec.presets:
      set_by_presets |= set(registry.preset_overrides(model, preset))
  marked = {n for n, f in config_lib.FIELDS.items() if f.metadata["preset"]}
  assert marked == set_by_presets


def _own_help(name):
  """A flag's help without what absl appends to a repeatable flag's."""
  return re.sub(r";\s+repeat this option to specify a list of values$", "",
                FLAGS[name].help)


def test_flag_help_is_built_from_the_field_metadata():
  for name, field in config_lib.FIELDS.items():
    assert _own_help(name) == launch.config_flag_help(name)
    assert FLAGS[name].help.startswith(field.metadata["help"] + " (default: ")
    assert launch.value_text(field.default) in FLAGS[name].help
  assert set(_launch_flags()) == {"debug", "ensemble", "image", "json", "mode",
                                  "overwrite", "plot"}


def test_help_output_carries_every_line():
  """What `python launch.py --help` prints holds every flag's full help."""
  printed = " ".join(FLAGS.module_help(launch).split())
  for name in [*config_lib.FIELDS, *_launch_flags()]:
    assert f"--{name}:" in printed or f"--[no]{name}:" in printed, name
    assert " ".join(FLAGS[name].help.split()) in printed, name


def test_readme_flag_table_matches_the_help():
  rows = _readme_flag_rows()
  expected = _expected_rows()
  assert sorted(set(expected) - set(rows)) == [], "flags missing from README"
  assert sorted(set(rows) - set(expected)) == [], "README rows of no flag"
  for name, (default, help_text) in expected.items():
    assert rows[name] == (default, help_text), name


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
    config_lib.validate(config_lib.Config().replace(**change))
  assert config_lib.validate(config_lib.Config()).impl == "auto"

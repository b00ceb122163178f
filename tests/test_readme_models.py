"""The README's models and presets tables say what models/registry.py holds.

Each architecture cell is the registry's description of that preset's config
(or "as <the preset to its left>" when it is the same); each preset's models
and validation split come from the presets themselves. These tests fail when
a preset changes and the README does not.
"""

import os
import re

import launch
from mnist_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURE_PRESETS = ("seed", "tuned", "best")  # The models table's columns.


def _table(first_header: str):
  """The rows of the README table of "## Models and presets" whose header
  starts with `first_header`, as lists of cells."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("\n## Models and presets\n", 1)[1].split("\n## ", 1)[0]
  lines = section.splitlines()
  start = lines.index(next(l for l in lines if l.startswith(first_header)))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append([c.strip() for c in line.strip("|").split(" | ")])
  return rows


def _architecture_cells(model):
  cells, before = [], None
  for preset in ARCHITECTURE_PRESETS:
    text = registry.get(model).describe(registry.get_config(model, preset))
    cells.append(f"as {before[0]}" if before and before[1] == text else text)
    before = (preset, text)
  return cells


def test_models_table_shows_each_presets_architecture():
  rows = _table("| `--model` |")
  assert [r[0] for r in rows] == [f"`{m}`" for m in registry.MODELS]
  for row in rows:
    model = row[0].strip("`")
    assert row[1:4] == _architecture_cells(model), model


def _models_cell(preset):
  having = [m for m, s in registry.MODELS.items() if preset in s.presets]
  return "all" if len(having) == len(registry.MODELS) else ", ".join(having)


def _validation_cell(preset):
  """"last 10%", "none", or "last 10%; none for linear, cnn"."""
  having = [m for m, s in registry.MODELS.items() if preset in s.presets]
  fractions = {m: registry.get_config(m, preset).val_fraction for m in having}
  held = sorted({f for f in fractions.values() if f > 0})
  assert len(held) <= 1, f"{preset}: several validation fractions {held}"
  none = [m for m, f in fractions.items() if f == 0]
  if not held:
    return "none"
  return f"last {100 * held[0]:g}%" + (f"; none for {', '.join(none)}"
                                       if none else "")


def test_presets_table_says_which_hold_out_no_validation_data():
  rows = _table("| `--preset` |")
  listed = []
  for row in rows:
    presets = re.findall(r"`(\w+)`", row[0])
    listed += presets
    for preset in presets:
      expected = [_models_cell(preset), _validation_cell(preset)]
      assert row[1:3] == expected, preset
  every = {p for s in registry.MODELS.values() for p in s.presets}
  assert sorted(listed) == sorted(every)


def test_the_tuned_mlp_is_the_one_the_results_report():
  """The issue's example: the tuned MLP is 1024-1024 with dropout 0.3."""
  assert registry.get("mlp").describe(registry.get_config("mlp", "tuned")) == (
      "784-1024-1024-10, ReLU, dropout 0.3")


def _named(text: str) -> dict:
  """"seed (linear, cnn), best" -> {"seed": ["linear", "cnn"], "best": None}:
  each preset and the models named for it."""
  return {p: models.split(", ") if models else None
          for p, models in re.findall(r"(\w+)(?: \(([^)]*)\))?", text)}


def _preset_help():
  """--preset's help: (the presets listed, those holding out no validation
  data), each as _named reads it."""
  text = launch.FLAGS["preset"].help.split("found): ", 1)[1]
  listed, empty = text.split(" (default: ")[0].split("; holding out no "
                                                      "validation data ")
  return _named(listed), _named(empty.split("): ", 1)[1])


def test_help_names_the_presets_holding_out_no_validation_data():
  named = _preset_help()[1]
  for preset in {p for s in registry.MODELS.values() for p in s.presets}:
    having = [m for m, s in registry.MODELS.items() if preset in s.presets]
    empty = [m for m in having
             if registry.get_config(m, preset).val_fraction == 0]
    assert named.get(preset, []) == (None if empty == having else empty)


def test_preset_help_names_each_preset_and_its_models():
  """--preset's help lists every preset, naming the models of those not
  every model has, from the registry (a new model's presets join it)."""
  listed = _preset_help()[0]
  every = {p for s in registry.MODELS.values() for p in s.presets}
  assert set(listed) == every
  for preset, named in listed.items():
    having = [m for m, s in registry.MODELS.items() if preset in s.presets]
    assert named == (None if having == list(registry.MODELS) else having)

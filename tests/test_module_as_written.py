"""The module as written runs, in both modes (issue 54): an edit a researcher
plants in a model file, for evaluation only or for training only, changes
what a run computes on a CPU under the default --impl=auto, exactly as the
stock layers (--impl=stock) compute the edited module.

Each edit is made in the file's text in a copy of the package, trained and
evaluated from that copy in a child process on tiny synthetic data: one child
per model file, running the unedited copy and each edited one in turn.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import launch_helpers as lh
from conftest import synthetic_digits
from mnist_jax import models

# One registered model per file of mnist_jax/models/ (the first registered),
# with small settings.
FILES = {}
for _name, _spec in models.MODELS.items():
  FILES.setdefault(os.path.basename(sys.modules[_spec.module.__module__]
                                    .__file__), _name)
SMALL = {"cnn": dict(cnn_features=(4, 8), cnn_dense=16),
         "rnn": dict(hidden=16), "lstm": dict(hidden=16),
         "gru": dict(hidden=16), "mlp": dict(mlp_hidden=(16,))}
# A model's last line, its logits (whatever the variable it reads).
OUTPUT = re.compile(r'^( +)return (nn\.Dense\(self\.num_classes, name="out"\)'
                    r'\(\w+\))$', re.MULTILINE)
EDITS = {  # The edit: the logits it returns instead.
    "evaluation": "logits if train else -logits",
    "training": "2.0 * logits if train else logits",
}

# Runs each (package copy, --impl) in turn in this process: the package is
# imported afresh from each copy. Prints a JSON list of each run's numbers,
# lines said and implementation record.
CHILD = r"""
import json, sys
import numpy as np
model, settings, data, runs = json.loads(sys.argv[1])
settings = {k: tuple(v) if isinstance(v, list) else v
            for k, v in settings.items()}
data = np.load(data)
results = []
for root, impl in runs:
  for name in [m for m in sys.modules if m.split(".")[0] == "mnist_jax"]:
    del sys.modules[name]
  sys.path.insert(0, root)
  from mnist_jax import models
  from mnist_jax.data import pipeline
  from mnist_jax.training import loop
  sys.path.pop(0)
  assert models.__file__.startswith(root), models.__file__

  class Hooks(loop.Hooks):
    said = []

    def message(self, text):
      self.said.append(text)

    def status(self, text):
      pass

    def epoch(self, state, row, last):
      self.train_loss = row["train_loss"]

  split = lambda x, y: pipeline.Split(x, y.astype(np.int32))
  dataset = pipeline.Dataset(
      split(data["x"], data["y"]), split(data["x"][:0], data["y"][:0]),
      split(data["tx"], data["ty"]), tuple("0123456789"))
  config = models.get_config(model, "seed", impl=impl, **settings)
  hooks = Hooks()
  module, record = models.build(config, hooks.message, hooks.status)
  _, final = loop.train_and_evaluate(config, dataset, module, hooks)
  results.append({"numbers": {"train_loss": hooks.train_loss, **{
      k: final[k] for k in ("test_loss", "test_accuracy")}},
                  "said": hooks.said, "record": record})
print(json.dumps(results))
"""


def _copy(root, edit=None):
  """launch.py's package copied into `root`, every model file's output line
  edited to return EDITS[edit] (None: unedited)."""
  shutil.copytree(os.path.join(lh.ROOT, "mnist_jax"),
                  os.path.join(root, "mnist_jax"),
                  ignore=shutil.ignore_patterns("__pycache__"))
  if edit:
    for name in FILES:
      path = os.path.join(root, "mnist_jax", "models", name)
      with open(path, encoding="utf-8") as f:
        source, count = OUTPUT.subn(
            rf"\1logits = \2\n\1return {EDITS[edit]}", f.read())
      assert count, f"{name}: no output line to edit"
      with open(path, "w", encoding="utf-8") as f:
        f.write(source)
  return root


# About 25 s of CPU for the CNN's five runs (each compiles its convolutions
# anew): the slow suite's.
SLOW = {"cnn.py"}


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
    for name in sorted(FILES)])
def runs(request, tmp_path_factory):
  """{(edit or None, impl): that run's numbers, lines and record} for the
  model of file request.param."""
  model = FILES[request.param]
  tmp = tmp_path_factory.mktemp(model)
  x, y = synthetic_digits(512, 0)
  tx, ty = synthetic_digits(100, 1)
  np.savez(tmp / "data.npz", x=x, y=y, tx=tx, ty=ty)
  settings = dict(SMALL.get(model, {}), epochs=1, batch_size=32,
                  learning_rate=1e-2, val_fraction=0.0)
  plan = [(None, "auto")] + [(edit, impl) for edit in EDITS
                             for impl in ("auto", "stock")]
  roots = {edit: _copy(str(tmp / f"package-{edit}"), edit)
           for edit in (None, *EDITS)}
  proc = subprocess.run(
      [sys.executable, "-c", CHILD, json.dumps([
          model, settings, str(tmp / "data.npz"),
          [(roots[edit], impl) for edit, impl in plan]])],
      cwd=str(tmp), env=dict(lh.child_env(), PYTHONPATH=""),
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return model, dict(zip(plan, json.loads(proc.stdout.splitlines()[-1])))


def _assert_edit_runs(runs, edit, changed):
  """The edited run (auto) computes what the stock layers compute of the
  edited module, and its `changed` number is not the unedited run's."""
  model, runs = runs
  edited, stock = runs[edit, "auto"], runs[edit, "stock"]
  for key, value in edited["numbers"].items():
    assert value == pytest.approx(stock["numbers"][key], rel=1e-4,
                                  abs=1e-2 if key.endswith("accuracy") else 0
                                  ), (model, key, edited, stock)
  unedited = runs[None, "auto"]["numbers"][changed]
  assert edited["numbers"][changed] != pytest.approx(unedited, rel=1e-2), (
      model, edited, runs[None, "auto"])
  assert stock["record"]["impl"] == "stock"
  assert "/kernels/" not in stock["record"]["module"]
  return model, edited, runs[None, "auto"]


def test_an_evaluation_only_edit_changes_what_the_run_computes(runs):
  """Logits negated at evaluation: training as before, the test loss not."""
  model, edited, unedited = _assert_edit_runs(runs, "evaluation",
                                              "test_loss")
  assert edited["numbers"]["train_loss"] == pytest.approx(
      unedited["numbers"]["train_loss"], rel=1e-4)
  if "kernel" in unedited["record"]:  # The whole-module kernel ran unedited.
    assert unedited["record"]["module"] == unedited["record"]["kernel"]
    assert edited["record"]["passed"] is False
    assert len(edited["said"]) == 1 and "does not compute" in edited["said"][0]


def test_a_training_only_edit_changes_what_the_run_computes(runs):
  """Logits doubled in training: the training loss is not as before."""
  _assert_edit_runs(runs, "training", "train_loss")

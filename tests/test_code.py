"""A run knows its code (rundir/code.py): what it records, and what every mode
that loads the run says where the code here differs."""

import io
import json
import os
import shutil

from mnist_jax import models
from mnist_jax import modes
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve
from mnist_jax.rundir import code
from mnist_jax.rundir import record


def test_a_run_records_the_core_files_it_trained_with(tiny_run):
  recorded = json.load(open(os.path.join(tiny_run, "config.json")))[
      "environment"]["code"]
  assert recorded["files"] == code.core_files() and "diff" not in recorded
  assert {"models/dense.py", "training/train.py", "optim.py"} <= set(
      recorded["files"])
  assert code.changed(recorded) == [] and code.note(tiny_run, recorded) is None


def _edited(monkeypatch, name="models/dense.py"):
  """This checkout as if `name` were edited since the runs trained."""
  files = {**code.core_files(), name: "edited"}
  monkeypatch.setattr(code, "core_files", lambda: files)


def test_every_mode_says_the_code_differs(tiny_run, tmp_path, monkeypatch):
  """predict, the page and a resume say so in one line (a resume's
  checkpoint fits the module: then it trains on)."""
  work = str(tmp_path / "run")
  shutil.copytree(tiny_run, work)
  _edited(monkeypatch)
  said = run_lib.run_note(work, run_lib.load_run(work))
  assert said == (f"{work} was trained with other code: models/dense.py "
                  "changed since (its config.json's environment.code holds "
                  "what it ran); these results are of the code here now")
  out, err = io.StringIO(), io.StringIO()
  run_lib.print_predictions(work, [os.path.join(
      os.path.dirname(__file__), "..", "docs", "img", "seven.png")], out=out,
                            err=err)
  assert err.getvalue().startswith(f"note: {said}")
  assert serve.load([work])[0].info["note"] == said
  config = record.read_config(work).replace(epochs=2, workdir=work)
  path = os.path.join(work, "config.json")
  stored = json.load(open(path))
  stored.update(finished=False, config=config.to_dict())
  json.dump(stored, open(path, "w"))
  out = io.StringIO()
  modes.train_and_evaluate(config, work, stream=out)
  assert (f"note: {work} was trained with other code: models/dense.py "
          "changed since") in out.getvalue()
  assert "training goes on with the code here now" in out.getvalue()
  assert record.status(work)[0] == "finished"


def test_edited_code_is_named_with_its_diff(tmp_path, monkeypatch):
  """A dirty tree: config.json names the edited files, the run folder keeps
  their diff, and the report's summary line names them."""
  edited = {"commit": "c" * 40, "dirty": True,
            "edited": ["mnist_jax/models/cnn.py"], "files": code.core_files(),
            "diff": "--- a/mnist_jax/models/cnn.py\n+++ b/..."}
  monkeypatch.setattr(code, "record", lambda: dict(edited))
  work = str(tmp_path / "run")
  config = models.get_config("linear", "seed", workdir=work)
  record.begin(work, config, record.environment())
  assert open(os.path.join(work, code.DIFF_FILE)).read() == edited["diff"]
  kept = record.trained_code(work)
  assert "diff" not in kept and kept["edited"] == edited["edited"]
  assert code.summary(kept) == ("code: ccccccc, edited: "
                                "mnist_jax/models/cnn.py")

"""The docs' generated tables: each is what experiments/tables.py writes from
the committed figures (docs/measurements.json); run folders holding those
figures give them, and the docs, back unchanged."""

import json
import os
import shutil

from PIL import Image
import pytest

import launch_helpers as lh
from experiments import tables
from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError

with open(os.path.join(lh.ROOT, tables.MEASUREMENTS), encoding="utf-8") as _f:
  COMMITTED = json.load(_f)


def _read(root, name):
  with open(os.path.join(root, name), encoding="utf-8") as f:
    return f.read()


def test_every_seed_models_epoch_beats_pytorchs_in_each_round():
  """The README's claim, on the committed figures: every registered model
  has a row, and each round's ratio to PyTorch is below 1."""
  rows = COMMITTED["epochs"]["rows"]
  assert [r["model"] for r in rows] == list(models.MODELS)
  assert all(r["ratio_range"][1] < 1 for r in rows), rows


def test_the_pages_screenshot_shows_runs_of_the_results_table():
  """docs/img/serve.png's runs (test_serve_browser.py --out names them): each a
  README row's run, of its preset, with the table's accuracy to the digit."""
  with Image.open(os.path.join(lh.ROOT, "docs", "img", "serve.png")) as image:
    shown = json.loads(image.text["runs"])
  rows = {row.name: row for row in tables.ROWS}
  assert shown and set(shown) <= set(rows), shown
  for name, card in shown.items():
    assert card["title"] == f"{rows[name].model} ({rows[name].preset})"
    table = COMMITTED["results"][name]["test_accuracy"]
    assert f"{card['test_accuracy']:.4f}" == f"{table:.4f}", (name, card)


def write_run(folder, row, figures, final=True):
  """A run folder of `row`'s command, as launch.py leaves it, whose final row
  holds `figures` (as measurements.json keeps them), in place of any there."""
  shutil.rmtree(folder, ignore_errors=True)
  cpu, jax, python = figures["host"].rsplit(", ", 2)
  env = {"cpu": cpu, "packages": {"jax": jax.split()[1]},
         "python": python.split()[1]}
  overrides = {k: config_lib.sweep_text(v, row.model) if k == "sweep" else v
               for k, v in row.flags}
  config = models.get_config(row.model, row.preset, **overrides).replace(
      workdir=str(folder), data_dir="/data")
  epochs = figures.get("epochs_run", 2)
  rows = [{"epoch": e, "step": 100 * e, "train_loss": 1.0 / e,
           "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None,
           "epoch_time_s": 1.0, "examples_per_s": 1000.0}
          for e in range(1, epochs + 1)]
  if final:  # The data took 0.25 s of the wall time.
    last = {k: v for k, v in figures.items()
            if k not in ("host", "time_s", "members", "chosen", "seeds")}
    last.setdefault("test_accuracy", figures.get("test_accuracy_mean"))
    last.update(test_loss=0.1, data_time_s=0.25,
                wall_time_s=figures["time_s"] + 0.25, epochs_run=epochs)
    if "members" in figures:
      last["members"] = [{"index": i, "seed": i} | (
          {"test_accuracy": figures["seeds"][i]} if "seeds" in figures else {})
                         for i in range(figures["members"])]
    if "chosen" in figures:
      values, seed = figures["chosen"].rsplit("seed=", 1)  # "[k=v, ]seed=N"
      pairs = [v.split("=") for v in values.rstrip(", ").split(", ") if v]
      last["chosen"] = {"values": {k: float(v) for k, v in pairs},
                        "seed": int(seed)}
    rows.append(last)
  lh.run_folder(folder, config, rows=rows, environment=env)


@pytest.fixture
def runs(tmp_path):
  """Run folders of every command, holding the committed figures."""
  folder = tmp_path / "runs"
  for row in tables.ROWS + (tables.SWEEP,):
    write_run(folder / row.name, row, COMMITTED["results"][row.name])
  for row in tables.BEST:
    write_run(folder / row.name, row, COMMITTED["best"][row.name])
  Image.new("RGB", (8, 4), "white").save(folder / tables.SWEEP.name /
                                         "sweep.png")
  return str(folder)


def _results(checkout, runs, *more, table="results"):
  return tables.main([f"--table={table}", f"--runs={runs}",
                      f"--root={checkout}", *more])


def test_the_run_folders_give_back_the_committed_figures_and_docs(checkout,
                                                                   runs):
  """Both tables of runs (results, best), and every other doc table as
  tables.py writes it from the committed figures; also the figures: the sweep
  run's sweep.png, accuracy against time."""
  assert _results(checkout, runs) == 0
  assert _results(checkout, runs, table="best") == 0
  for name in (tables.README, tables.PERFORMANCE):
    assert _read(checkout, name) == _read(lh.ROOT, name)
  for table in ("results", "best"):
    got = json.loads(_read(checkout, tables.MEASUREMENTS))[table]
    assert got.keys() == COMMITTED[table].keys()
    for name, figures in COMMITTED[table].items():  # And the mean's
      assert {k: pytest.approx(v) if isinstance(v, float) else v  # accuracy.
              for k, v in figures.items()} == {k: got[name][k] for k in figures}
  img = os.path.join(checkout, "docs", "img")
  with open(os.path.join(img, "sweep_mlp.png"), "rb") as f, open(os.path.join(
      runs, tables.SWEEP.name, "sweep.png"), "rb") as g:
    assert f.read() == g.read()
  with Image.open(os.path.join(img, "accuracy_vs_time.png")) as image:
    assert image.format == "PNG"
  assert _results(checkout, runs, "--check") == 0


def test_a_changed_run_changes_its_row_and_names_its_host(checkout, runs):
  write_run(os.path.join(runs, "linear-tuned"), tables.ROWS[0], {
      "test_accuracy": 0.9123, "epochs_run": 10, "time_s": 4.25,
      "host": "a CPU not recorded, jax 0.0.1, Python 3.0"})
  assert _results(checkout, runs, "--check") == 1
  _results(checkout, runs)
  table = _read(checkout, "README.md").split("<!-- tables.py: results -->\n")[1]
  host = COMMITTED["results"]["mlp-tuned"]["host"]
  assert table.startswith("Run on a CPU not recorded, jax 0.0.1, Python 3.0; "
                          f"{host}.\n")  # In the rows' order.
  assert ("| linear | tuned | 91.23% | 92.0% | 10 | 4.2 s | "
          "`python launch.py --model=linear` |") in table.splitlines()


def _unfinished_cnn_no_gru(runs, _):
  shutil.rmtree(os.path.join(runs, "gru-tuned"))
  cnn = os.path.join(runs, "cnn-tuned")
  write_run(cnn, tables.ROWS[2], COMMITTED["results"]["cnn-tuned"], final=False)
  return (rf"^2 of {len(tables.ROWS) + 1} commands have no finished run in "
          rf".*`python launch.py --model=cnn` \(unfinished in {cnn}\); "
          r"`python launch.py --model=gru` \(no run\); pass --train")


def _other_seed(runs, _):
  """A run of other settings (the seed) is not the command's run."""
  write_run(os.path.join(runs, "linear-tuned"), tables.Row(
      "x", "linear", flags=(("seed", 1),)), COMMITTED["results"]["linear-tuned"])
  return (rf"1 of {len(tables.ROWS) + 1} commands .* `python launch.py "
          r"--model=linear` [(]no run")


def _no_markers(_, checkout):
  path = os.path.join(checkout, "README.md")
  files.write_text(path, _read(checkout, "README.md").replace(
      "<!-- tables.py: results -->", ""))
  return "README.md has no .* `<!-- tables.py: results -->`"


def _no_sweep_figure(runs, _):
  os.remove(os.path.join(runs, tables.SWEEP.name, "sweep.png"))
  return "cannot read .*sweep.png .* --mode=report --workdir="


def _another_run_in_the_way(runs, _):
  """--train: the folder a missing run would go to holds another run."""
  folder = os.path.join(runs, "linear-tuned")
  write_run(folder, tables.Row("x", "linear", "seed"),
            COMMITTED["results"]["linear-tuned"])
  return (f"{folder} holds no run of `python launch.py --model=linear` .* "
          "move it out of the way")


@pytest.mark.parametrize("break_it", [
    _unfinished_cnn_no_gru, _other_seed, _no_markers, _no_sweep_figure,
    _another_run_in_the_way])
def test_a_refusal_names_what_to_do_and_writes_nothing(break_it, checkout,
                                                       runs):
  expected = break_it(runs, checkout)
  before = {n: _read(checkout, n) for n in (tables.README, tables.PERFORMANCE,
                                           tables.MEASUREMENTS)}
  with pytest.raises(UserError, match=expected) as e:
    _results(checkout, runs, *(["--train"] if break_it is
                               _another_run_in_the_way else []))
  assert "\n" not in str(e.value)
  assert {n: _read(checkout, n) for n in before} == before
  assert os.listdir(os.path.join(checkout, "docs", "img")) == []


@pytest.mark.slow
def test_trains_missing_runs_through_launch_py_and_reuses_them(prepared,
                                                              tmp_path):
  row = tables.Row("linear-seed", "linear", "seed", (("epochs", 1),))
  runs, flags = str(tmp_path / "runs"), prepared.flags
  logs = []
  tables.train_missing([row], runs, flags, log=logs.append)
  assert logs == [f"[1/1] python launch.py --model=linear --preset=seed "
                  f"--epochs=1 --workdir={runs}/linear-seed"]
  [(found, folder)] = tables.require([row], runs).items()
  assert found == row and folder == os.path.join(runs, "linear-seed")
  figures = tables.result(folder)
  assert figures["epochs_run"] == 1 and 0 < figures["time_s"]
  tables.train_missing([row], runs, flags, log=logs.append)
  assert len(logs) == 1  # Finished: reused, not trained again.

"""experiments/results.py: the README's results come from run folders, whole.

The fast tests write minimal run folders (config.json and metrics.jsonl as
launch.py writes them) holding the README's own numbers: the script must
write the README's table back unchanged, so its format is the README's.
"""

import json
import os
import re
import shutil

from PIL import Image
import pytest

from experiments import results
from mnist_jax.errors import UserError
from mnist_jax import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BY_COMMAND = {r.command(): r for r in results.ROWS}


def _block(text: str, name: str) -> str:
  return text.split(f"<!-- results.py: {name} -->\n")[1].split(
      f"\n{results.END}")[0]


def _seconds(cell: str) -> float:
  value, unit = cell.split()
  return float(value) * (60 if unit == "min" else 1)


def _readme_host():
  """The environment the README's table names: {cpu, packages, python}."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    first = _block(f.read(), "table").splitlines()[0]
  where = re.fullmatch(r"Run on (.+), jax (\S+), Python (\S+)\.", first)
  assert where, first
  return {"cpu": where[1], "packages": {"jax": where[2]}, "python": where[3]}


def _readme_results():
  """{row: final metrics} read back from the README's results table."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    lines = _block(f.read(), "table").splitlines()[2:]  # The host line apart.
  assert "\n".join(lines[:2]) == results.TABLE_HEADER
  out = {}
  for line in lines[2:]:
    model, _, accuracy, _, epochs, time, command = [
        c.strip() for c in line.strip().strip("|").split("|")]
    row = BY_COMMAND[command.strip("`")]
    assert row.model == model
    final = {"epochs_run": int(epochs), "time": _seconds(time)}
    ensemble = re.fullmatch(
        r"([\d.]+)% ensemble; members ([\d.]+) ± ([\d.]+)%", accuracy)
    if ensemble:
      final.update(ensemble_test_accuracy=float(ensemble[1]) / 100,
                   test_accuracy_mean=float(ensemble[2]) / 100,
                   test_accuracy_std=float(ensemble[3]) / 100,
                   test_accuracy=float(ensemble[2]) / 100)
    else:
      final["test_accuracy"] = float(accuracy.rstrip("%")) / 100
    out[row] = final
  assert list(out) == list(results.ROWS)  # Every row, in order, once.
  return out


def test_the_pages_screenshot_shows_runs_of_the_table():
  """docs/img/serve.png names the runs it shows (test_serve_browser.py --out
  writes their titles and test accuracies into it): each is a README row's
  run folder, of that row's preset, with the table's accuracy to the digit."""
  with Image.open(os.path.join(ROOT, "docs", "img", "serve.png")) as image:
    shown = json.loads(image.text["runs"])
  table = _readme_results()
  by_name = {row.name: row for row in table}
  assert shown and set(shown) <= set(by_name), shown
  for name, card in shown.items():
    row = by_name[name]
    assert card["title"] == f"{row.model} ({row.preset})", card
    assert (f"{100 * card['test_accuracy']:.2f}" ==
            f"{100 * table[row]['test_accuracy']:.2f}"), (name, card)


def write_run(folder, row, *, test_accuracy, time, epochs_run=2, final=True,
              **extra):
  """A run folder of `row`'s command, as launch.py leaves it."""
  os.makedirs(folder)
  config = row.config().replace(workdir=str(folder), data_dir="/data")
  files.write_json(os.path.join(folder, "config.json"),
                   {"config": config.to_dict(), "environment": _readme_host()})
  rows = [{"epoch": e, "step": 100 * e, "train_loss": 1.0 / e,
           "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None,
           "epoch_time_s": 1.0, "examples_per_s": 1000.0}
          for e in range(1, epochs_run + 1)]
  if final:  # The data took 0.25 s of the wall time.
    rows.append({"test_loss": 0.1, "test_accuracy": test_accuracy,
                 "test_examples": 10000, "epochs_run": epochs_run,
                 "compile_time_s": 1.0, "data_time_s": 0.25,
                 "wall_time_s": time + 0.25, "num_params": 10, **extra})
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    f.writelines(f"{json.dumps(r)}\n" for r in rows)


def _members(n, accuracy):
  return [{"index": i, "seed": i, "values": {}, "test_accuracy": accuracy}
          for i in range(n)]


@pytest.fixture
def checkout(tmp_path):
  """A copy of README.md and docs/performance.md to rewrite."""
  root = tmp_path / "checkout"
  os.makedirs(root / "docs" / "img")
  for name in ("README.md", os.path.join("docs", "performance.md")):
    shutil.copy(os.path.join(ROOT, name), root / name)
  return str(root)


@pytest.fixture
def runs(tmp_path):
  """Run folders of every command, with the README's numbers."""
  folder = tmp_path / "runs"
  for row, final in _readme_results().items():
    extra = {k: v for k, v in final.items() if k not in ("time", "epochs_run")}
    if "ensemble_test_accuracy" in final:
      extra["members"] = _members(5, final["test_accuracy"])
    write_run(folder / row.name, row, time=final["time"],
              epochs_run=final["epochs_run"], **extra)
  sweep = folder / results.SWEEP.name
  write_run(sweep, results.SWEEP, test_accuracy=0.9864, time=922.0,
            epochs_run=20, members=_members(8, 0.98),
            chosen={"index": 2, "seed": 0, "values": {"learning_rate": 0.001}})
  Image.new("RGB", (8, 4), "white").save(sweep / "sweep.png")
  return str(folder)


def _read(root, name):
  with open(os.path.join(root, name), encoding="utf-8") as f:
    return f.read()


def test_writes_the_readme_table_back_unchanged(checkout, runs):
  """The README's table is the script's output of runs holding its numbers."""
  logs = []
  assert results.main(["--runs", runs, "--root", checkout]) == 0
  assert _read(checkout, "README.md") == _read(ROOT, "README.md")
  performance = _read(checkout, results.PERFORMANCE)
  original = _read(ROOT, results.PERFORMANCE)
  for name in ("fast", "ensemble"):  # The same runs as the README's rows.
    assert _block(performance, name) == _block(original, name)
  single = _readme_results()[results.SINGLE_MLP]["time"]
  sweep = " ".join(_block(performance, "sweep").split())
  assert (f"took 15.4 min against {single:.0f} s for the single run "
          f"`python launch.py --model=mlp` of the results table: "
          f"{922 / single:.1f}x for 8 members") in sweep
  assert "(learning_rate=0.001, seed=0) reaches 98.64%" in sweep
  with open(os.path.join(checkout, results.SWEEP_FIGURE), "rb") as f, open(
      os.path.join(runs, results.SWEEP.name, "sweep.png"), "rb") as g:
    assert f.read() == g.read()
  with Image.open(os.path.join(checkout, results.ACCURACY_VS_TIME)) as image:
    assert image.format == "PNG"
  assert results.check(checkout, runs, log=logs.append)
  assert logs[-1].endswith("match the runs")


def test_a_changed_run_changes_its_row(checkout, runs):
  linear = os.path.join(runs, "linear-tuned")
  shutil.rmtree(linear)
  write_run(linear, results.ROWS[0], test_accuracy=0.9123, time=4.25,
            epochs_run=10)
  assert not results.check(checkout, runs, log=lambda _: None)
  results.main(["--runs", runs, "--root", checkout])
  table = _block(_read(checkout, "README.md"), "table")
  assert ("| linear | tuned | 91.23% | 92.0% | 10 | 4.2 s | "
          "`python launch.py --model=linear` |") in table.splitlines()


def test_refuses_missing_and_unfinished_runs_and_writes_nothing(checkout, runs):
  shutil.rmtree(os.path.join(runs, "gru-best"))
  cnn = os.path.join(runs, "cnn-tuned")
  shutil.rmtree(cnn)
  write_run(cnn, BY_COMMAND["python launch.py --model=cnn"], test_accuracy=0,
            time=0, final=False)
  before = {n: _read(checkout, n) for n in ("README.md", results.PERFORMANCE)}
  with pytest.raises(UserError) as e:
    results.main(["--runs", runs, "--root", checkout])
  message = str(e.value)
  assert message.startswith("2 of 15 commands have no finished run")
  assert f"`python launch.py --model=cnn` (unfinished in {cnn})" in message
  assert "`python launch.py --model=gru --preset=best` (no run)" in message
  assert "--train" in message and "\n" not in message
  assert {n: _read(checkout, n) for n in before} == before
  assert os.listdir(os.path.join(checkout, "docs", "img")) == []


def test_a_run_of_other_settings_is_not_the_commands(checkout, runs):
  """A run with another setting (here the seed) does not stand in for a row;
  where the data was read from does not matter."""
  folder = os.path.join(runs, "linear-tuned")
  shutil.rmtree(folder)
  row = results.ROWS[0]
  other = results.Row(row.name, row.model, flags=(("seed", 1),))
  write_run(folder, other, test_accuracy=0.9, time=1.0)
  with pytest.raises(UserError, match="`python launch.py --model=linear` "):
    results.main(["--runs", runs, "--root", checkout])


def test_missing_markers_are_named(checkout, runs):
  path = os.path.join(checkout, "README.md")
  files.write_text(path, _read(checkout, "README.md").replace(
      "<!-- results.py: table -->", ""))
  with pytest.raises(UserError, match="README.md has no .* `<!-- results.py: "
                     "table -->`"):
    results.main(["--runs", runs, "--root", checkout])


def test_a_missing_sweep_figure_is_named_before_anything_is_written(checkout,
                                                                     runs):
  os.remove(os.path.join(runs, results.SWEEP.name, "sweep.png"))
  before = _read(checkout, "README.md")
  with pytest.raises(UserError, match="cannot read .*sweep.png .* "
                     "--mode=report --workdir="):
    results.main(["--runs", runs, "--root", checkout])
  assert _read(checkout, "README.md") == before


def test_training_refuses_a_folder_holding_another_run(runs):
  folder = os.path.join(runs, "linear-tuned")
  shutil.rmtree(folder)
  write_run(folder, results.Row("x", "linear", "seed"), test_accuracy=0.9,
            time=1.0)
  with pytest.raises(UserError, match=f"{folder} holds no run of `python "
                     "launch.py --model=linear` .* move it out of the way"):
    results.train_missing(results.ROWS, runs, [], log=lambda _: None)


@pytest.mark.parametrize("seconds,text", [(3.64, "3.6 s"), (19.94, "19.9 s"),
                                          (78.4, "78 s"), (599.4, "599 s"),
                                          (948.0, "15.8 min")])
def test_times_read_as_the_table_writes_them(seconds, text):
  assert results._time(seconds) == text  # pylint: disable=protected-access


@pytest.mark.slow
def test_trains_missing_runs_through_launch_py_and_reuses_them(prepared,
                                                              tmp_path):
  mnist_dir, data_dir = prepared
  row = results.Row("linear-seed", "linear", "seed", (("epochs", 1),))
  runs = str(tmp_path / "runs")
  flags = [f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}"]
  logs = []
  results.train_missing([row], runs, flags, log=logs.append)
  assert logs == [f"[1/1] python launch.py --model=linear --preset=seed "
                  f"--epochs=1 --workdir={runs}/linear-seed"]
  finished, _ = results.find([row], runs)
  assert finished == {row: os.path.join(runs, "linear-seed")}
  final = results.require([row], runs)[row]
  assert final["data_ready_s"] > 0 and final["time_s"] == final["wall_time_s"]
  results.train_missing([row], runs, flags, log=logs.append)
  assert len(logs) == 1  # Finished: reused, not trained again.


def test_the_table_names_every_host_and_release_its_runs_ran_on(checkout,
                                                                runs):
  """A run from another machine or jax release is named beside the rest;
  one whose config.json records no CPU says so."""
  gru = os.path.join(runs, "gru-tuned", "config.json")
  with open(gru) as f:
    record = json.load(f)
  record["environment"] = {"packages": {"jax": "0.0.1"}, "python": "3.0"}
  files.write_json(gru, record)
  results.main(["--runs", runs, "--root", checkout])
  first = _block(_read(checkout, "README.md"), "table").splitlines()[0]
  host = _readme_host()
  assert first == (f"Run on {host['cpu']}, jax {host['packages']['jax']}, "
                   f"Python {host['python']}; a CPU not recorded, jax 0.0.1, "
                   "Python 3.0."), first

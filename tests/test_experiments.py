"""The scripts in experiments/: every one answers --help and -h (usage, exit 0,
no traceback), the measuring ones time what a run runs, and each runs on tiny
data (the slow tests).

One child process runs the scripts as `__main__` in turn (the imports they
share load once), so the check stays cheap as scripts are added.
"""

import glob
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest

from experiments import epoch_table
from mnist_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))

# Runs each (script, argv) as `python script argv...` would, in this process:
# prints one JSON line per run with its exit status, output and any traceback.
_DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
for script, args in json.loads(sys.argv[1]):
  out, err, status = io.StringIO(), io.StringIO(), 0
  sys.argv = [script, *args]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # pylint: disable=broad-except
      status, err = "traceback", io.StringIO(traceback.format_exc())
  print(json.dumps({"script": script, "args": args, "status": status,
                    "out": out.getvalue(), "err": err.getvalue()}))
"""


def _run(calls, timeout=300):
  result = subprocess.run(
      [sys.executable, "-c", _DRIVER, json.dumps(calls)], cwd=ROOT,
      capture_output=True, text=True, check=False, timeout=timeout,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_every_script_answers_help(tmp_path):
  """Also: a command the docstring continues with a backslash is printed as written."""
  assert len(SCRIPTS) >= 10
  calls = [[s, [flag]] for s in SCRIPTS for flag in ("--help", "-h")]
  # And a refused results.py run: one error line, exit 1.
  calls.append([os.path.join(ROOT, "experiments", "results.py"),
                [f"--runs={tmp_path}", f"--root={tmp_path}"]])
  runs = _run(calls)
  assert len(runs) == len(calls)
  for run in runs[:-1]:
    name = f"{os.path.basename(run['script'])} {run['args'][0]}"
    assert run["status"] == 0, (name, run["err"])
    assert run["out"].startswith("usage: "), name
    assert "Traceback" not in run["err"], name
    assert not re.search(r"python .*\S {6,}--", run["out"]), name
  refused = runs[-1]
  assert refused["status"] == 1
  assert refused["err"].startswith("error: 15 of 15 commands have no finished")
  assert refused["err"].count("\n") == 1 and "Traceback" not in refused["err"]


@pytest.mark.slow
def test_tensorboard_cost_replays_a_finished_run(tiny_run, tmp_path):
  """tensorboard_cost.py drives the run's own TensorBoard writer, so an
  interface change of the writer fails here rather than in a user's hands;
  with --runs it writes the doc's table, a row per run and member count, and
  --check then finds it matching."""
  from experiments import tensorboard_cost  # pylint: disable=g-import-not-at-top
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  script = os.path.join(ROOT, "experiments", "tensorboard_cost.py")
  keep = [f"--runs={tmp_path / 'r'}", f"--doc={doc}"]
  [run, check] = _run([
      [script, [f"--run={tiny_run}", "--members=1,3", "--repeats=3", "--train",
                *keep]], [script, keep + ["--check"]]])
  assert run["status"] == 0, run["err"]
  results = [json.loads(l) for l in run["out"].splitlines() if l.startswith("{")]
  assert [r["members"] for r in results] == [1, 3]
  assert all(r["event_bytes"] > 0 for r in results)
  marker = tensorboard_cost.MARKER
  table = doc.read_text().split(marker.format("table"))[1].split(
      marker.format("end"))[0]
  assert [l.split(" | ")[:2] for l in table.splitlines()
          if l.startswith("| mlp")] == [["| mlp (seed)", "1"],
                                        ["| mlp (seed)", "3"]], table
  assert check["status"] == 0 and "matches" in check["out"], check


@pytest.mark.slow
def test_pixel_rnn_times_a_step_with_and_without_remat(tmp_path):
  """pixel_rnn.py compiles the run's own train chunk on 784-step sequences;
  with --runs it writes the doc's table (a row per setting), which --check
  then finds matching."""
  from experiments import pixel_rnn  # pylint: disable=g-import-not-at-top
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  script = os.path.join(ROOT, "experiments", "pixel_rnn.py")
  keep = [f"--runs={tmp_path / 'r'}", f"--doc={doc}"]
  [run, check] = _run([
      [script, ["--model=rnn", "--steps=1", "--repeats=1", "--batch_size=4",
                "--train", *keep]], [script, keep + ["--check"]]])
  assert run["status"] == 0, run["err"]
  lines = run["out"].splitlines()[:2]
  assert "'remat': True" in lines[1], run["out"]
  assert all("ms/step" in line and "temp memory" in line for line in lines)
  table = doc.read_text().split(pixel_rnn.MARKER.format("table"))[1].split(
      pixel_rnn.MARKER.format("end"))[0]
  assert [l.split("`")[1] for l in table.splitlines() if l.startswith("| `")
          ] == ["python launch.py --model=rnn --preset=pixels",
                "python launch.py --model=rnn --preset=pixels --remat"], table
  assert check["status"] == 0 and "matches" in check["out"], check


def _script(name):
  return os.path.join(ROOT, "experiments", name)


def test_no_script_speaks_of_the_layout_timing_that_is_gone():
  """--parallel=auto is a rule now (devices.Layout): nothing measures or
  caches layouts, so no script reads or writes parallel.json or reports a
  measured choice."""
  for path in SCRIPTS + [_script("tour.ipynb")]:
    with open(path) as f:
      text = f.read()
    for gone in ("parallel_choice", "parallel.json", "auto_layouts",
                 "layout_for", "data.batches", "make_train_chunk"):
      assert gone not in text, (os.path.basename(path), gone)


def test_benchmark_times_the_loop_and_reports_its_fields(prepared):
  """benchmark.py runs loop.train_and_evaluate itself: its epoch times are
  the loop's, and the derived numbers follow from them."""
  _, data_dir = prepared
  [run] = _run([[_script("benchmark.py"), [
      "--model=linear", "--preset=seed", "--epochs=3", f"--data_dir={data_dir}",
      "--peak_size=64", "--eval", "--set=batch_size=50",
      "--set=chunk_steps=5"]]])
  assert run["status"] == 0, run["err"]
  [line] = run["out"].splitlines()
  row = json.loads(line)
  steps = 600 // 50  # The linear seed preset holds out no validation data.
  assert (row["model"], row["members"], row["steps_per_epoch"],
          row["chunk_steps"]) == ("linear", 1, steps, 5)
  assert (row["parallel"], row["devices"]) == ("none", 1)
  assert "parallel_choice" not in row and row["num_params"] == 7850
  assert len(row["epoch_times_s"]) == 3 and row["compile_time_s"] > 0
  assert row["epoch_time_s"] == pytest.approx(
      statistics.median(row["epoch_times_s"][1:]), rel=1e-3)  # 4 figures.
  epoch = row["epoch_time_s"]
  assert row["examples_per_s"] == pytest.approx(steps * 50 / epoch, rel=0.02)
  # One step's matmuls: the forward pass and the weights' gradient.
  assert row["step_gflop"] == pytest.approx(2 * 2 * 50 * 784 * 10 / 1e9,
                                            abs=1e-5)  # Printed to 1e-5.
  assert row["gflops"] == pytest.approx(row["step_gflop"] * steps / epoch,
                                        rel=0.02)
  assert row["fraction_of_peak"] == pytest.approx(
      row["gflops"] / row["peak_gflops"], rel=0.02)
  assert 0 <= row["test_accuracy"] <= 1 and row["eval_time_s"] > 0


@pytest.mark.slow
def test_the_other_scripts_run_on_tiny_data(prepared, tmp_path):
  """phases.py, profile_chunk.py, num_seeds.py, serve_benchmark.py (on the
  page in Chromium too where the browser test can run) and reference_torch.py
  (when PyTorch is installed), each once on the synthetic data."""
  mnist_dir, data_dir = prepared
  tiny = ["--model=linear", "--preset=seed", "--epochs=1",
          f"--data_dir={data_dir}"]
  browser = os.environ.get("MNIST_JAX_BROWSER") or (
      shutil.which("chromedriver") and importlib.util.find_spec("selenium"))
  calls = [
      [_script("phases.py"), ["--", *tiny, "--num_seeds=2", "--noanalyses",
                              f"--workdir={tmp_path / 'phases'}"]],
      [_script("profile_chunk.py"), ["--model=linear", "--preset=seed",
                                     f"--data_dir={data_dir}", "--top=3"]],
      [_script("num_seeds.py"), ["--seeds=2", "--repeats=1", "--", *tiny,
                                 "--noreport"]],
      [_script("serve_benchmark.py"), ["--strokes=2"] + (
          ["--browser"] if browser else [])],
  ]
  torch = subprocess.run([sys.executable, "-c", "import torch"],
                         capture_output=True, check=False).returncode == 0
  if torch:
    calls.append([_script("reference_torch.py"), [
        "--model=linear", "--epochs=2", f"--mnist_dir={mnist_dir}",
        f"--data_dir={data_dir}", "--threads=1"]])
  runs = _run(calls, timeout=600)
  for run in runs:
    assert run["status"] == 0, (run["script"], run["err"][-3000:])
  phases = json.loads(runs[0]["out"].splitlines()[-1])
  assert phases["calls"]["train_chunks"] >= 1
  assert phases["calls"]["compile_train"] == 1
  assert phases["calls"]["evaluate"] >= 1 and phases["report"] > 0
  profile = runs[1]["out"].splitlines()
  assert "ms per step" in profile[0] and len(profile) == 5, profile
  assert "ms per step while traced" in profile[1], profile
  lines = runs[2]["out"].splitlines()
  assert lines[0].startswith("warm-up, untimed") and len(lines) == 4, lines
  assert "ratio" in lines[-1]
  served = runs[3]["out"].splitlines()
  assert served[0].startswith(f"{len(models.MODELS)} models loaded"), served
  for count in (1, len(models.MODELS)):  # Each timed over HTTP and the page.
    assert sum(line.startswith(f"{count} model(s)") and "median" in line
               for line in served) == (2 if browser else 1), served
  if torch:
    result = json.loads(runs[4]["out"])
    assert result["model"] == "linear" and len(result["epoch_times_s"]) == 2


@pytest.mark.slow
def test_speedrun_keeps_each_runs_timing_and_writes_the_table_from_them(
    prepared, tmp_path):
  """speedrun.py --train on the synthetic data: a row per command and seed
  offset in a copy of docs/performance.md, the published anchor marked as
  such; --check then finds the table matching the run folders."""
  from experiments import speedrun  # pylint: disable=g-import-not-at-top
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  base = [sys.executable, _script("speedrun.py"), f"--runs={tmp_path / 'r'}",
          f"--doc={doc}", "--offsets=3"]
  train = subprocess.run(
      base + ["--train", f"--data_dir={prepared[1]}", "--times=2", "--",
              "--epochs=1", "--noanalyses"], capture_output=True, text=True,
      check=False)
  assert train.returncode == 0, train.stderr[-3000:]
  table = doc.read_text().split(speedrun.MARKER.format("table"))[1].split(
      speedrun.MARKER.format("end"))[0]
  for _, flags, _ in speedrun.ROWS:
    assert (f"`python launch.py {' '.join(flags)} --seed=3 --epochs=1 "
            "--noanalyses`") in table, table
  assert "| published, not measured here" in table
  for name, *_ in speedrun.ROWS:
    with open(tmp_path / "r" / f"{name.replace(' ', '_')}-3" /
              "speedrun.json") as f:
      timed = json.load(f)
    assert 0 < timed["to_result_s"] <= timed["to_exit_s"]
    assert len(timed["runs_s"]) == 2  # Each cold run's, and their medians:
    assert [timed["to_result_s"], timed["to_exit_s"]] == pytest.approx(
        np.median(timed["runs_s"], axis=0)), timed
  check = subprocess.run(base + ["--check"], capture_output=True, text=True,
                         check=False)
  assert check.returncode == 0 and "matches" in check.stdout, check.stdout


@pytest.mark.slow
def test_epoch_table_times_each_layout_and_writes_the_table_from_them(
    prepared, tmp_path):
  """epoch_table.py --train for one model on the synthetic data: its row in
  a copy of docs/performance.md names the layout auto picked and the host,
  and PyTorch's figure from the Python --torch_python names (here a stand-in
  printing reference_torch.py's line); --check then finds the table matching
  the runs."""
  from experiments import epoch_table  # pylint: disable=g-import-not-at-top
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  torch_python = tmp_path / "torch_python"
  torch_python.write_text(
      "#!/bin/sh\necho '" + json.dumps(
          {"model": "linear", "framework": "pytorch", "torch": "9.9.9+test",
           "epoch_times_s": [9.0, 4.0, 4.0], "epoch_time_s": 4.0}) + "'\n")
  torch_python.chmod(0o755)
  base = [sys.executable, _script("epoch_table.py"),
          f"--runs={tmp_path / 'r'}", f"--doc={doc}"]
  timed = subprocess.run(
      base + ["--train", "--models=linear", "--repeats=1",
              f"--data_dir={prepared[1]}", f"--torch_python={torch_python}"],
      capture_output=True, text=True, check=False)
  assert timed.returncode == 0, timed.stderr[-3000:]
  table = doc.read_text().split(epoch_table.MARKER.format("table"))[1].split(
      epoch_table.MARKER.format("end"))[0]
  rows = [l for l in table.splitlines() if l.startswith("| linear")]
  assert len(rows) == 1 and "| one device |" in rows[0], table
  assert rows[0].split("|")[6].strip() == "4.00", rows[0]  # PyTorch's.
  assert "median" in table and "jax " in table and "torch 9.9.9+test" in table
  check = subprocess.run(base + ["--check"], capture_output=True, text=True,
                         check=False)
  assert check.returncode == 0 and "matches" in check.stdout, check.stdout


def test_epoch_table_gives_the_ratio_of_the_medians_and_its_range_over_rounds(
    tmp_path):
  """The seed table's last column: the medians' ratio, then the lowest and
  highest ratio of a run of ours to PyTorch's run of the same round."""
  ours, theirs = [2.0, 3.0, 2.5], [4.0, 3.0, 2.5]  # Ratios 0.5, 1.0, 1.0.
  for kind, times in (("auto", ours), ("none", ours), ("torch", theirs)):
    for i, t in enumerate(times):
      (tmp_path / f"{kind}.{i}.jsonl").write_text(json.dumps(
          {"model": "linear", "epoch_time_s": t, "parallel": "none",
           "devices": 1, "gflops": 1.0}) + "\n")
  (tmp_path / "host.json").write_text(json.dumps(
      {"host": "test host", "jax": "0", "torch": "0"}))
  row = [l for l in epoch_table.table(str(tmp_path)).splitlines()
         if l.startswith("| linear")][0]
  assert row.split("|")[7].strip() == f"{2.5 / 3.0:.2f} (0.50-1.00)", row


def test_the_speedrun_table_says_whose_exit_drew_the_t_sne_map(tmp_path):
  """A run whose report drew the t-SNE map (the analysis extra) exits later:
  its "launch to exit" cell says so, the others' do not."""
  from experiments import speedrun  # pylint: disable=g-import-not-at-top
  from mnist_jax.results import analysis  # pylint: disable=g-import-not-at-top
  folders = []
  for name, flags, _ in speedrun.ROWS:
    workdir = tmp_path / f"{name.replace(' ', '_')}-1"
    (workdir / analysis.FOLDER).mkdir(parents=True)
    (workdir / "speedrun.json").write_text(json.dumps(
        {"command": " ".join(["python launch.py", *flags]), "host": "host",
         "jax": "0", "to_result_s": 5.0, "to_exit_s": 10.0}))
    (workdir / "metrics.jsonl").write_text(json.dumps(
        {"test_accuracy": 0.99, "test_loss": 0.1}) + "\n")
    folders.append(workdir)
  (folders[0] / analysis.FOLDER / analysis.TSNE_MAP).write_bytes(b"")
  exits = [row[6] for row in speedrun.rows(str(tmp_path), ["1"])
           if row[0].startswith("`")]
  assert exits == ["10.0 s (t-SNE map drawn)"] + ["10.0 s"] * (
      len(speedrun.ROWS) - 1), exits


def test_the_readme_says_what_the_epoch_table_shows():
  """The README says every seed model's epoch takes less time than
  PyTorch's in each round of the table's runs: every row of the committed
  table, each round's ratio (the brackets' highest) below 1."""
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = " ".join(f.read().split())
  assert ("Every seed model's epoch takes less time than the same network in "
          "PyTorch on the same 2-core CPU, in each round" in readme)
  with open(os.path.join(ROOT, "docs", "performance.md")) as f:
    table = f.read().split(epoch_table.MARKER.format("table"))[1].split(
        epoch_table.MARKER.format("end"))[0]
  rows = {l.split("|")[1].split()[0]: l.split("|")[7] for l in
          table.splitlines() if l.startswith("| ") and "batch" in l}
  assert set(rows) == set(models.MODELS), rows
  for name, cell in rows.items():
    highest = re.findall(r"[0-9.]+", cell)[-1]
    assert float(highest) < 1.0, (name, cell)


def _timed_table(script, marker, train_args, prepared, tmp_path):
  """Runs `script --train` on the synthetic data into a copy of
  docs/performance.md; (its table between `marker`'s lines, the --check
  command)."""
  doc = tmp_path / "performance.md"
  shutil.copy(os.path.join(ROOT, "docs", "performance.md"), doc)
  base = [sys.executable, _script(script), f"--runs={tmp_path / 'r'}",
          f"--doc={doc}"] + [a for a in train_args if a.startswith("--table")]
  timed = subprocess.run(
      base + ["--train", f"--data_dir={prepared[1]}"] +
      [a for a in train_args if not a.startswith("--table")],
      capture_output=True, text=True, check=False)
  assert timed.returncode == 0, timed.stderr[-3000:]
  table = doc.read_text().split(marker.format("table"))[1].split(
      marker.format("end"))[0]
  return table, base + ["--check"]


def _matches(check):
  out = subprocess.run(check, capture_output=True, text=True, check=False)
  return out.returncode == 0 and "matches" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(epoch_table.COMPARED))
def test_epoch_table_times_the_compared_commands_side_by_side(
    name, prepared, tmp_path):
  """--table=NAME: a row per kind of run, the first the unit of the ratio
  column; --check then finds the table matching the runs."""
  compared = epoch_table.COMPARED[name]
  table, check = _timed_table(
      "epoch_table.py", epoch_table.marker(name),
      [f"--table={name}", "--repeats=1", "--", "--batch_size=8"], prepared,
      tmp_path)
  rows = [l for l in table.splitlines() if l.startswith("| `python")]
  assert [r.split("`")[1] for r in rows] == [
      f"python launch.py {flags}" for _, flags in compared.kinds.values()
  ], table
  assert rows[0].endswith("| 1.00 |") and "jax " in table
  assert f"| {compared.unit[0]} |" in table and compared.subject in table
  assert _matches(check)


@pytest.mark.slow
def test_startup_times_a_first_and_a_warm_run_and_writes_the_table(
    prepared, tmp_path):
  """startup.py --train --runs: a first run and a warm one of the linear
  model; the table's columns are the models timed, its rows the runs and the
  first run's phases; --check then finds it matching the runs."""
  from experiments import startup  # pylint: disable=g-import-not-at-top
  table, check = _timed_table("startup.py", startup.MARKER,
                              ["--model=linear", "--repeats=2"], prepared,
                              tmp_path)
  rows = [l.strip("|").split("|") for l in table.splitlines()
          if l.startswith("| ") and "---" not in l]
  assert [c.strip() for c in rows[0]] == ["", "linear"], table
  first, warm = (float(r[1]) for r in rows[1:3])
  assert 0 < warm and 0 < first, table
  assert any("kernel check" in r[0] and r[1].strip() == "-" for r in rows)
  assert _matches(check)


@pytest.mark.slow
def test_num_seeds_times_a_row_and_writes_the_members_table(prepared,
                                                           tmp_path,
                                                           monkeypatch):
  """num_seeds.py --train --runs for the linear model's row: its one run,
  seeds and sweep timed; the row's ratios are theirs; --check then finds the
  table matching the runs; retiming another model keeps the row."""
  from experiments import num_seeds  # pylint: disable=g-import-not-at-top
  table, check = _timed_table("num_seeds.py", num_seeds.MARKER,
                              ["--models=linear", "--repeats=1"], prepared,
                              tmp_path)
  rows = [[c.strip() for c in l.strip().strip("|").split("|")]
          for l in table.splitlines() if l.startswith("| linear")]
  assert len(rows) == 1, table
  one, seeds, ratio = float(rows[0][1]), float(rows[0][2]), rows[0][3]
  assert abs(float(ratio.rstrip("x")) - seeds / one) < 0.02, rows
  assert _matches(check)
  # Retiming another model's rows keeps this one's.
  kept = (tmp_path / "r" / "runs.jsonl").read_text()
  monkeypatch.setattr(num_seeds, "wall_time", lambda *_: 1.0)
  num_seeds.train_table(str(tmp_path / "r"), ["mlp"], 1, [])
  after = (tmp_path / "r" / "runs.jsonl").read_text()
  assert after.startswith(kept) and "mlp 512-256 (seed)" in after, after


@pytest.mark.slow
def test_layout_parity_compares_each_layout_with_one_device(prepared,
                                                            tmp_path):
  """layout_parity.py --train for the linear row on 2 devices: a cell per
  layout and member count, `=` for one device of the split host and for
  member 0 (on one device and split over 2); --check then finds the table
  matching the runs, and refuses runs in which such a cell moved (the doc's
  bit-for-bit claim)."""
  from experiments import layout_parity  # pylint: disable=g-import-not-at-top
  table, check = _timed_table("layout_parity.py", layout_parity.MARKER,
                              ["--rows=0", "--devices=2"], prepared, tmp_path)
  rows = [[c.strip() for c in l.strip().strip("|").split("|")]
          for l in table.splitlines() if l.startswith("| ")]
  assert rows[0][2:] == ["`none`, 2", "`sharded`, 2", "`pmap`, 2",
                         "member 0 of `--num_seeds=2`, `none`, 1 / 2 devices",
                         "member 0, members split over the devices, 2"], rows
  linear = next(r for r in rows if r[0] == "linear")
  assert (linear[2], linear[5], linear[6]) == ("=", "= / =", "="), linear
  assert "test losses end up to" in table
  assert _matches(check)
  kept = tmp_path / "r" / "parity.jsonl"
  text = kept.read_text()
  for moved_cell, named in (
      (("none", 2, 1), "--parallel=none, devices=2, members=1"),
      (("sharded", 2, 2), "--parallel=sharded, devices=2, members=2")):
    runs = [json.loads(line) for line in text.splitlines()]
    for run in runs:
      if (run["parallel"], run["devices"], run["members"]) == moved_cell:
        run["train_loss"] += 1e-6
    kept.write_text("".join(json.dumps(r) + "\n" for r in runs))
    moved = subprocess.run(check, capture_output=True, text=True, check=False)
    assert moved.returncode == 1 and "not bit for bit" in moved.stdout, (
        moved.stdout)
    assert f"linear ({named})" in moved.stdout, moved.stdout

"""experiments/: each script answers --help, benchmark.py times what a run
runs, each timed table is measured on tiny data and written from its figures."""

import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

from launch_helpers import ROOT
from experiments import performance
from experiments import tables

# The files of experiments/ that run as __main__ (not compare.py's parts).
SCRIPTS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                 if '__name__ == "__main__"' in pathlib.Path(p).read_text())


def _script(name, *args, timeout=600):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", name), *args],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
      env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.slow
@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS])
def test_every_script_answers_help(script):
  out = _script(script, "--help", timeout=120)
  assert out.returncode == 0 and out.stdout.startswith("usage: "), out.stderr
  assert "Traceback" not in out.stderr


def test_benchmark_times_the_loop_and_reports_its_fields(prepared):
  """benchmark.py runs loop.train_and_evaluate itself: its epoch times are
  the loop's, and the derived numbers follow from them."""
  run = _script("benchmark.py", "--model=linear", "--preset=seed",
                "--epochs=3", f"--data_dir={prepared[1]}",
                "--set=batch_size=50", "--set=chunk_steps=5")
  assert run.returncode == 0, run.stderr[-3000:]
  [row] = [json.loads(line) for line in run.stdout.splitlines()]
  steps = 600 // 50  # The linear seed preset holds out no validation data.
  assert (row["model"], row["members"], row["steps_per_epoch"],
          row["chunk_steps"], row["parallel"], row["devices"],
          row["num_params"]) == ("linear", 1, steps, 5, "none", 1, 7850)
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


# Table -> (tables.py's flags for one quick round, {torch}: a stand-in for
# PyTorch's Python; the first cells of the rows it writes, where the prefix of
# `--offsets` is the seed).
MEASURED = {
    "epochs": (["--models=linear", "--torch_python={torch}"],
               ["linear (batch 32)"]),
    "speedrun": (["--offsets=3", "--", "--epochs=1", "--noanalyses"],
                 [f"`python launch.py {' '.join(flags)} --seed=3 --epochs=1 "
                  "--noanalyses`" for _, flags, _ in performance.SPEEDRUN]),
    "startup": (["--models=linear"], ["launch to first step, first run "
                                      "(compiles)"]),
    "members": (["--models=linear", "--", "--noreport"], ["linear (tuned) ¹"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MEASURED))
def test_each_timed_table_is_measured_and_written_from_its_figures(
    name, prepared, checkout, tmp_path):
  """A row per model or command, the host on the table; the figures kept
  give it again (--check), and --runs reads them back from the runs."""
  flags, first_cells = MEASURED[name]
  torch = tmp_path / "torch_python"  # Prints reference_torch.py's line.
  torch.write_text("#!/bin/sh\necho '" + json.dumps(
      {"model": "linear", "torch": "9.9.9+test", "epoch_time_s": 4.0}) + "'\n")
  torch.chmod(0o755)
  base = [f"--table={name}", f"--runs={tmp_path / 'runs'}",
          f"--root={checkout}", "--repeats=1"]
  timed = _script("tables.py", *base, "--train", f"--data_dir={prepared[1]}",
                  *(flag.format(torch=torch) for flag in flags))
  assert timed.returncode == 0, timed.stderr[-3000:]
  doc = (checkout / tables.PERFORMANCE).read_text()
  table = doc.split(f"<!-- tables.py: {name} -->\n")[1].split(tables.END)[0]
  rows = [line.split(" | ")[0][2:] for line in table.splitlines()
          if line.startswith("| ") and "---" not in line][1:]
  assert rows[:len(first_cells)] == first_cells, table
  assert performance.host().split(", jax")[0] in table
  if name == "epochs":  # PyTorch's figure, and the ratio to it.
    assert "| 4.00 |" in table and "torch 9.9.9+test" in table
  kept = (checkout / tables.MEASUREMENTS).read_text()
  assert _script("tables.py", f"--root={checkout}", "--check").returncode == 0
  again = _script("tables.py", *base[:3])
  assert again.returncode == 0 and (
      checkout / tables.MEASUREMENTS).read_text() == kept, again.stderr


def test_the_epoch_ratio_is_of_the_medians_with_its_range_over_rounds(
    tmp_path):
  """On a shared host PyTorch's epoch varies more than the medians show: the
  table gives each round's ratio of ours to PyTorch's too."""
  ours, theirs = [2.0, 3.0, 2.5], [4.0, 3.0, 2.5]  # Ratios 0.5, 1.0, 1.0.
  (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(
      {"host": "test host, jax 0", "kind": kind, "round": i, "model": "linear",
       "epoch_time_s": t, "parallel": "none", "devices": 1, "gflops": 1.0,
       "batch_size": 32, "torch": "0"}) + "\n"
      for kind, times in (("auto", ours), ("none", ours), ("torch", theirs))
      for i, t in enumerate(times)))
  [row] = performance.measure_epochs(str(tmp_path))["rows"]
  assert row["ratio"] == pytest.approx(2.5 / 3.0)
  assert row["ratio_range"] == [0.5, 1.0]


def test_the_speedrun_table_says_whose_exit_drew_the_t_sne_map(tmp_path):
  """A run whose report drew the t-SNE map (the analysis extra) exits later:
  its "launch to exit" cell says so, the others' do not."""
  from mnist_jax.results import analysis  # pylint: disable=g-import-not-at-top
  folders = []
  for name, flags, _ in performance.SPEEDRUN:
    workdir = tmp_path / f"{name.replace(' ', '_')}-1"
    (workdir / analysis.FOLDER).mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    (workdir / "speedrun.json").write_text(json.dumps(
        {"command": " ".join(["python launch.py", *flags]), "host": "host",
         "to_result_s": 5.0, "to_exit_s": 10.0}))
    (workdir / "metrics.jsonl").write_text(json.dumps(
        {"test_accuracy": 0.99, "test_loss": 0.1}) + "\n")
    folders.append(workdir)
  (folders[0] / analysis.FOLDER / analysis.TSNE_MAP).write_bytes(b"")
  table = performance.speedrun_table(
      {"speedrun": performance.measure_speedrun(str(tmp_path))})
  exits = [row.split(" | ")[6] for row in table.splitlines()[2:-1]]
  assert exits == ["10.0 s (t-SNE map drawn)"] + ["10.0 s"] * (
      len(performance.SPEEDRUN) - 1), exits

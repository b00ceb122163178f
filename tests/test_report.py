"""The report (results/report.py): its files, --mode=report, figure layout."""

import csv
import io
import json
import os
import shutil

from matplotlib.patches import Rectangle
import numpy as np
from PIL import Image
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.results import plots
from mnist_jax.results import report
from mnist_jax.results import run
from mnist_jax.rundir import control
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib


def _read_csv(path):
  with open(path) as f:
    return list(csv.reader(f))


def test_a_run_leaves_every_report_file_and_its_counts_add_up(tiny_run):
  """Each file whole, each figure linked in report.md (no analyses: told not
  to); the confusion counts sum to the test split."""
  text = open(os.path.join(tiny_run, "report.md")).read()
  assert "## What the model learned" not in text
  assert not os.path.exists(os.path.join(tiny_run, "analysis"))
  for name in report.FILES:
    assert os.path.getsize(os.path.join(tiny_run, name)) > 0, name
    if name.endswith(".png"):
      with Image.open(os.path.join(tiny_run, name)) as image:
        assert image.format == "PNG" and min(image.size) >= 300, name
      assert f"({name})" in text, name
  assert not [f for f in os.listdir(tiny_run) if ".tmp" in f]
  rows = _read_csv(os.path.join(tiny_run, "confusion_matrix.csv"))
  assert rows[0][1:] == [str(i) for i in range(10)]
  counts = np.array([[int(c) for c in r[1:]] for r in rows[1:]])
  final = metrics_log.final_metrics(tiny_run)
  assert counts.sum() == final["test_examples"] == 200
  assert counts.sum(axis=1).tolist() == [20] * 10  # The fixture's class sizes.
  assert np.trace(counts) / counts.sum() == pytest.approx(final["test_accuracy"])
  per_class = _read_csv(os.path.join(tiny_run, "per_class.csv"))
  assert per_class[0][:5] == ["class", "name", "support", "correct", "accuracy"]


def test_confusion_and_pairs_on_known_labels():
  labels = np.array([3, 3, 3, 8, 8, 4, 9, 9, 9, 0])
  predicted = np.array([8, 8, 3, 3, 8, 9, 4, 9, 4, 0])
  counts = run.confusion(labels, predicted, 10)
  assert counts[3, 8] == 2 and counts[8, 3] == 1 and counts[9, 4] == 2
  assert counts.sum() == len(labels)
  pairs = report.confused_pairs(counts)
  assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
      (3, 8, 2), (9, 4, 2), (4, 9, 1), (8, 3, 1)]
  stats = report.per_class(counts)
  assert stats["accuracy"][3] == pytest.approx(1 / 3)
  assert stats["precision"][8] == pytest.approx(1 / 3)


def test_noreport_leaves_the_report_to_report_mode(prepared, tmp_path,
                                                   capsys):
  """--noreport --notensorboard: no report or event file, and it says (run
  again too) that --mode=report writes it, which then says it was missing."""
  workdir = str(tmp_path / "run")
  config = models.get_config("mlp", "seed", epochs=1, mlp_hidden=(16,),
                             batch_size=32, report=False, tensorboard=False,
                             workdir=workdir, **prepared.settings)
  out = io.StringIO()
  modes.train_and_evaluate(config, workdir, stream=out)
  assert out.getvalue().rstrip().endswith(
      f"results in {workdir} (--noreport: --mode=report writes its report)")
  assert not [n for n in os.listdir(workdir)
              if n in report.FILES or "tfevents" in n]
  final = metrics_log.final_metrics(workdir)
  assert record_lib.finished(workdir) and final
  out = io.StringIO()
  modes.train_and_evaluate(config, workdir, stream=out)
  assert "already finished: test accuracy" in out.getvalue()
  assert "; --mode=report writes its report;" in out.getvalue()
  result = modes.rewrite_report(workdir, analyses=False)
  assert capsys.readouterr().out.rstrip().endswith(
      f"{workdir}/report.md was missing: rebuilt")
  assert set(report.FILES) <= set(os.listdir(workdir))
  assert result["accuracy"] == pytest.approx(final["test_accuracy"])


def _epoch(row, e, seconds, **more):
  return {**row, "epoch": e, "epoch_time_s": seconds,
          "examples_per_s": 100 / seconds, **more}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["older_checkpoint", "did_not_learn"])
def test_report_mode_says_what_the_rows_say(tiny_run, tmp_path, capsys, case):
  """metrics.jsonl edited, a figure gone, report.md rebuilt: (a) the log past
  the newest checkpoint: a note (run.run_note, which predict and the
  page pass on: test_folder.py); the epoch times whole epochs' (not the resumed
  epoch 2), the wall time the final row's; (b) the final row's learning
  verdict heads it."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(tiny_run, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  first, *_, final = metrics_log.read_metrics(path)
  if case == "older_checkpoint":
    rows = [_epoch(first, 1, 10.0), _epoch(first, 2, 2.0, partial_steps=3),
            _epoch(first, 3, 12.0), {**final, "wall_time_s": 40.0,
                                     "compile_time_s": 1.0, "data_time_s": 4.0}]
    said = ("> **Note:** these results are of the checkpoint of epoch 1, "
            "older than the run's last epoch, 3: its later checkpoints are "
            "missing.")
  else:
    rows = [first, {**final, control.NOT_LEARNED: {
        "cause": "chance", "message": "the run did not learn: X"}}]
    said = "> **Warning:** The run did not learn: X."
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.remove(os.path.join(workdir, "mistakes.png"))
  modes.rewrite_report(workdir)
  out = capsys.readouterr().out
  assert f"{workdir}/report.md was incomplete: rebuilt" in out
  text = open(os.path.join(workdir, "report.md")).read()
  assert text.splitlines()[2] == said
  if case == "older_checkpoint":
    assert f"; note: {said[12:-1]}" in out
    assert "| Epoch time (median) | 11.0 s |" in text
    assert f"| Examples/s (median) | {(10 + 100 / 12) / 2:,.0f} |" in text
    assert "| Wall time | 36.0 s (compile 1.0 s) |" in text


@pytest.mark.slow
def test_a_run_folder_from_another_machine_is_reported_here_quietly(
    tiny_run, prepared, tmp_path):
  """Data folders this machine lacks: the default one is read, none made; an
  unwritable HOME: nothing but the report's two lines. A relative folder
  that is here, seen from where it was trained, is used."""
  workdir = str(tmp_path / "moved")
  shutil.copytree(tiny_run, workdir)
  path = tmp_path / "moved" / record_lib.CONFIG_FILE

  def trained_in(cwd, **settings):
    saved = json.loads(path.read_text())
    saved["config"].update(settings)
    saved["environment"]["cwd"] = str(cwd)
    path.write_text(json.dumps(saved))

  gone = tmp_path / "other_machine"
  trained_in(gone / "repo", data_dir=str(gone / "tfds"), mnist_dir="../mnist")
  rc, out, err = lh.run(["--mode=report", f"--workdir={workdir}"],
                        TFDS_DATA_DIR=prepared[1], HOME="/proc/self",
                        XDG_CONFIG_HOME="", XDG_CACHE_HOME="", MPLCONFIGDIR="",
                        JAX_COMPILATION_CACHE_DIR="")  # As by default.
  assert rc == 0 and err == "" and "was rewritten" in out, err
  lines = out.splitlines()  # What it does, then its result.
  assert len(lines) == 2 and lines[1].startswith("test accuracy "), out
  assert not gone.exists()
  mnist_dir = prepared[0]
  trained_in(os.path.dirname(mnist_dir), mnist_dir=os.path.basename(mnist_dir))
  assert record_lib.used_config(workdir).mnist_dir == mnist_dir
  assert record_lib.used_config(workdir, mnist_dir="x").mnist_dir == "x"


def _bars(ax):
  return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_per_class_accuracy_stops_at_100_and_its_legend_and_line_clear_the_text(
    drawn, tmp_path):
  accuracy = np.array([1.0, 0.99, 0.985, 0.97, 0.98, 0.978, 1.0, 0.98, 0.96,
                       0.962])
  plots.per_class_accuracy(accuracy, np.full(10, 200), str(tmp_path / "p.png"),
                           [str(k) for k in range(10)], overall=0.98)
  [fig] = drawn
  [ax] = fig.axes
  assert ax.get_ylim()[1] <= 100
  box = lambda artist: artist.get_window_extent(fig.canvas.get_renderer())
  legend = box(ax.get_legend())
  assert not legend.overlaps(box(ax))
  assert not any(legend.overlaps(box(b)) for b in _bars(ax))
  ticks = [t.get_text() for t in ax.get_xticklabels()]
  assert [t.split("\n")[1] for t in ticks] == [  # Each bar's value.
      f"{100 * a:.1f}%" for a in accuracy]
  [line] = ax.get_lines()
  texts = [t for t in ax.texts + ax.get_xticklabels() if t.get_text()]
  assert not any(box(line).overlaps(box(t)) for t in texts)  # It clears them.


def test_sample_probabilities_name_their_colours_and_stop_at_100(drawn,
                                                                 tmp_path):
  probs = np.array([0.02, 0.6, 0.3] + [0.1 / 7] * 7)
  image = np.zeros((28, 28), np.uint8)
  plots.sample_probabilities(
      [{"image": image, "probabilities": probs, "label": 2},
       {"image": image, "probabilities": np.eye(10)[4], "label": 4},
       {"image": image, "probabilities": probs}], str(tmp_path / "s.png"),
      [str(k) for k in range(10)])
  [fig] = drawn
  said = []
  renderer = fig.canvas.get_renderer()
  for ax in fig.axes[1::2]:
    assert ax.get_ylim()[1] <= 100
    legend = ax.get_legend()
    named = {tuple(h.get_facecolor()): t.get_text()
             for h, t in zip(legend.legend_handles, legend.texts)}
    assert {tuple(b.get_facecolor()) for b in _bars(ax)} <= set(named)
    assert not legend.get_window_extent(renderer).overlaps(
        ax.get_window_extent(renderer))
    said.append(sorted(named.values()))
  assert said == [["other classes", "predicted (wrong)", "true class"],
                  ["other classes", "predicted = true class"],
                  ["other classes", "predicted"]]


def test_learning_curves_stop_at_100_and_draw_a_null_metric_as_a_gap(
    drawn, tmp_path):
  """An older run's null (non-finite) epoch mean: a gap."""
  rows = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8},
          {"epoch": 2, "train_loss": None, "train_accuracy": 1.0},
          {"test_loss": None, "test_accuracy": 0.86}]
  plots.learning_curves([("run", [rows])], str(tmp_path / "c.png"))
  [fig] = drawn
  loss = fig.axes[0].lines[0].get_ydata()
  assert loss[0] == 0.5 and np.isnan(loss[1])
  assert fig.axes[1].get_ylabel() == "Accuracy (%)"
  assert fig.axes[1].get_ylim()[1] == 100
  keys = [t.get_text() for t in fig.legends[0].texts]
  assert keys[0].startswith("train: the epoch's mean over its steps")
  assert "test (86)" in keys and not any("validation" in k for k in keys)

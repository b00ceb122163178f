"""What each model learned (results/analysis.py): each lens on a known case;
the analyses end to end (report.md, compare.py's page); their figures."""

import csv
import functools
import os
import re
import subprocess
import sys
from unittest import mock

import flax.linen as nn
import jax
import matplotlib.text
from matplotlib.patches import StepPatch
import numpy as np
from PIL import Image
import pytest

from conftest import drawn_run, extra, synthetic_digits
from launch_helpers import ROOT, run_folder
from experiments import compare
from experiments import compare_figures
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.data import pipeline
from mnist_jax.results import analysis
from mnist_jax.results import analysis_plots
from mnist_jax.results import plots
from mnist_jax.results import report
from mnist_jax.results import run as run_lib

K = 10
DECIDING_ROW = 13  # 0-based: the 14th row read.


def _data(images, labels, val: int):
  """A Dataset whose last `val` examples are its validation split."""
  n = len(labels) - val
  return pipeline.Dataset(
      pipeline.Split(images[:0], labels[:0]),
      pipeline.Split(images[n:], labels[n:]),
      pipeline.Split(images[:n], labels[:n]), tuple(str(k) for k in range(K)))


def _row_digits(n: int):
  """Images blank but for row 13, where class c lights pixel c."""
  labels = np.arange(n) % K
  images = np.zeros((n, 28, 28, 1), np.uint8)
  images[np.arange(n), DECIDING_ROW, labels] = 255
  return images, labels


def _row_reader():
  """A SimpleRNN that remembers which of pixels 0..9 a row lit, and nothing
  else: hidden unit c = tanh(5 x_c + h_c), read out as logit 10 h_c."""
  w_in = np.zeros((28, K), np.float32)
  w_in[np.arange(K), np.arange(K)] = 5.0
  params = {"rnn_0": {"i": {"kernel": w_in, "bias": np.zeros(K, np.float32)},
                      "h": {"kernel": np.eye(K, dtype=np.float32)}},
            "out": {"kernel": 10 * np.eye(K, dtype=np.float32),
                    "bias": np.zeros(K, np.float32)}}
  return drawn_run("rnn", {"params": params}, hidden=K)


def test_a_model_that_decides_at_row_14_reaches_its_accuracy_there():
  """The reading, evaluated as the run's logits (in padded batches): after
  each row, its own readout."""
  run = _row_reader()
  images, labels = _row_digits(200)
  _, logits, steps = run_lib.logits(functools.partial(
      analysis.forward, run.model, every=1), run.variables, images, 64)
  assert steps.shape == (200, 28, K)
  np.testing.assert_allclose(logits, run.logits(images), rtol=1e-6)
  np.testing.assert_allclose(steps[:, -1], logits, rtol=1e-5, atol=1e-6)
  r = analysis.reading(steps, labels)
  before, after = slice(0, DECIDING_ROW), slice(DECIDING_ROW, 28)
  np.testing.assert_array_equal(r["accuracy"][before], 1 / K)  # Ties: class 0.
  np.testing.assert_allclose(r["true_class_probability"][before], 1 / K, rtol=1e-5)
  np.testing.assert_array_equal(r["accuracy"][after], 1.0)
  assert (r["true_class_probability"][after] > 0.5).all()
  assert r["units_to_99"] == DECIDING_ROW + 1


class _Attending(nn.Module):
  """Rows attend to rows; Flax's attention names its own projection `out`."""
  OUTPUT = "out"
  num_classes: int = K

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = nn.MultiHeadDotProductAttention(2, qkv_features=8)(
        images[..., 0] / 255.0)
    x = nn.relu(nn.Dense(6)(x.mean(1)))
    return nn.Dense(self.num_classes, name=self.OUTPUT)(x)


def test_the_features_are_the_input_of_the_declared_output_layer():
  """Each model declares its output layer (OUTPUT): the features are that
  layer's input, not the first submodule named `out`'s (attention's)."""
  assert all(spec.module.OUTPUT for spec in models.MODELS.values())
  images, _ = synthetic_digits(4, 0)
  module = _Attending()
  variables = module.init(jax.random.key(0), images)
  features, logits, _ = analysis.forward(module, variables, images)
  head = variables["params"]["out"]
  assert features.shape == (4, 6)
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits,
                             rtol=1e-5, atol=1e-6)


def test_shift_moves_each_image_its_way_and_noise_is_clipped():
  images, _ = synthetic_digits(4, seed=5)
  out = np.asarray(analysis.changed(images))
  names = [(c, l) for c, _, levels, _ in analysis.CHANGES for l in levels if l]
  shifted = out[names.index(("shift", 2))]
  x = images.astype(np.float32)
  np.testing.assert_array_equal(shifted[0, :-2], x[0, 2:])  # Up.
  np.testing.assert_array_equal(shifted[1, :, 2:], x[1, :, :-2])  # Right.
  np.testing.assert_array_equal(shifted[2, 2:], x[2, :-2])  # Down.
  np.testing.assert_array_equal(shifted[3, :, :-2], x[3, :, 2:])  # Left.
  np.testing.assert_array_equal(shifted[1, :, :2], 0)
  noisy = out[names.index(("noise", 0.5))]
  assert noisy.min() == 0 and noisy.max() == 255 and (noisy != x).mean() > 0.5
  thick, thin = out[names.index(("thickness", 3))], out[names.index(("thickness", -3))]
  assert (thick >= x - 1e-3).all() and (thin <= x + 1e-3).all()


def test_integrated_gradients_sum_to_the_logit_difference():
  """A CNN with biases, so that its ReLUs switch along the path from black
  (a network without is linear along it): the steps must double to get there."""
  images, _ = synthetic_digits(8, seed=2)
  rng = np.random.default_rng(0)
  run = drawn_run("cnn", cnn_features=(4, 8), cnn_dense=16)
  run = drawn_run("cnn", jax.tree_util.tree_map_with_path(
      lambda path, v: rng.normal(0, 0.5, v.shape).astype(np.float32)
      if path[-1].key == "bias" else 3 * v, run.variables),
             cnn_features=(4, 8), cnn_dense=16)
  apply = jax.jit(lambda x: run.model.apply(run.variables, x))
  logits, black = np.asarray(apply(images)), np.asarray(apply(0 * images))
  target = np.abs(logits - black).argmax(-1)
  r = analysis.attributions(run.model, run.variables, images, target)
  want = (logits - black)[np.arange(8), target]
  np.testing.assert_allclose(r["ig"].sum((1, 2, 3)), want, rtol=0.01)
  np.testing.assert_allclose(r["logit_difference"], want, rtol=1e-4)
  assert r["ig_error"].max() <= 0.01 and r["ig_steps"] > analysis.IG_STEPS
  gxi = np.asarray(jax.jit(jax.grad(lambda x: apply(x)[
      np.arange(8), target].sum()))(images.astype(np.float32))) * images
  np.testing.assert_allclose(r["gxi"], gxi, rtol=1e-4, atol=1e-5)


def test_pca_finds_the_one_informative_axis():
  rng = np.random.default_rng(0)
  axis = rng.normal(size=16)
  axis /= np.linalg.norm(axis)
  labels = rng.integers(0, 2, 2000)
  features = rng.normal(0, 0.3, (2000, 16)) + np.outer(6.0 * labels - 3, axis)
  coords, explained, axes = analysis.pca(features)
  assert abs(axes[:, 0] @ axis) > 0.999
  assert explained[0] > 0.8  # 9 of 9 + 16 * 0.09.
  assert ((coords[:, 0] > 0) == (labels == (axes[:, 0] @ axis > 0))).all()


def test_temperature_scaling_calms_an_over_confident_model():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, K, 6000)
  said = np.where(rng.random(6000) < 0.7, labels,
                  (labels + rng.integers(1, K, 6000)) % K)
  logits = 8.0 * np.eye(K)[said] + rng.normal(0, 0.5, (6000, K))
  t = analysis.fit_temperature(logits[:3000], labels[:3000])
  before = analysis.calibration(logits[3000:], labels[3000:])["ece"]
  after = analysis.calibration(logits[3000:] / t, labels[3000:])["ece"]
  assert t > 1 and before > 0.2 and after < before / 4


def test_a_lens_that_fails_reaches_the_reports_caller(tmp_path, monkeypatch):
  """Its error is raised where the report waits for the lenses in their
  thread, the figures of the lenses that ended drawn."""
  images, labels = _row_digits(60)
  run, data = _row_reader(), _data(images, labels, 20)
  monkeypatch.setattr(analysis, "robustness", mock.Mock(
      side_effect=ValueError("a lens failed")))
  with pytest.raises(ValueError, match="a lens failed"):
    analysis.write(str(tmp_path), run, data.test, data.val,
                   lenses=report.Lenses(run, data.test, data.val).ended())
  assert sorted(os.listdir(tmp_path / "analysis")) == [
      "features_pca.png", "reading.png", "reliability.png"]


def test_a_process_that_stops_waits_for_no_more_lenses():
  """A process exiting while the lenses run waits for no more lenses."""
  script = """
import sys, time
from mnist_jax.results import analysis, report
def analyse(run, test, val, done):
  for lens in range(50):
    time.sleep(0.05)
    print(lens, flush=True)
    done({})
analysis.analyse = analyse
report.Lenses(None, None)
time.sleep(0.3)
sys.exit(3)
"""
  out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, check=False)
  assert out.returncode == 3, out.stderr[-2000:]
  assert 2 <= len(out.stdout.split()) <= 12, out.stdout


# Colour images 12x10, class c lit in channel c (in kmnist's place: --dataset's
# choices are read as config.py is imported).
COLOUR = datasets.DatasetInfo("kmnist", "1.0.0", "", ("red", "green", "blue"),
                              (12, 10, 3))


@pytest.fixture(scope="module")
def colour_report(tmp_path_factory):
  """A report with analyses of a CNN on COLOUR's 40 test, 20 val images."""
  folder = tmp_path_factory.mktemp("colour")
  labels = np.arange(60) % 3
  images = np.zeros((60, 12, 10, 3), np.uint8)
  images[np.arange(60), 2:10, 2:8, labels] = 255
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(datasets.DATASETS, COLOUR.name, COLOUR)
    run = drawn_run("cnn", dataset=COLOUR.name, cnn_features=(4,), cnn_dense=8)
    report.write(str(folder), run, pipeline.Split(images[:40], labels[:40]),
                 val=pipeline.Split(images[40:], labels[40:]))
  return folder


def test_a_colour_datasets_run_is_drawn_in_colour(colour_report):
  """Report and analyses figures (predict, the page: test_everyday_changes)."""
  for name in ("predictions.png", "analysis/attributions.png"):
    with Image.open(colour_report / name) as image:
      pixels = np.asarray(image.convert("RGB"), int)
    green = (pixels[..., 1] > 200) & (pixels[..., [0, 2]] < 60).all(-1)
    assert green.sum() > 20, name  # Class 1's digits.


def test_the_analysis_extra_draws_the_tsne_map(colour_report):
  """The `analysis` extra (scikit-learn) adds the t-SNE map, even of a split
  too small for t-SNE's default perplexity."""
  extra("sklearn")
  with open(colour_report / "analysis" / "features_tsne.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "![What it learned (t-SNE)](analysis/features_tsne.png)" in (
      colour_report / "report.md").read_text()
  assert compare_figures.load_analysis(str(colour_report))["tsne"].shape == (
      len(range(0, 40, analysis.STRIDE)), 2)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """Reports with analyses, in folders of finished runs (0.25 s of the wall
  time loading data): the row reader (with a val split) and a bidirectional
  LSTM (without)."""
  root = tmp_path_factory.mktemp("analysis")
  images, labels = _row_digits(240)
  digits, digit_labels = synthetic_digits(200, seed=4)
  out = []
  for name, run, data, wall in (
      ("rnn", _row_reader(), _data(images, labels, 40), 30.25),
      ("lstm", drawn_run("lstm", hidden=4, bidirectional=True),
       _data(digits, digit_labels, 0), 10.25)):
    rows = [{"epoch": 1, "step": 10, "train_loss": 1.0, "train_accuracy": 0.5,
             "val_loss": None, "val_accuracy": None, "epoch_time_s": 1.0,
             "examples_per_s": 100.0},
            {"test_loss": 0.5, "test_accuracy": 0.5, "test_examples": 10,
             "epochs_run": 1, "compile_time_s": 1.0, "data_time_s": 0.25,
             "wall_time_s": wall, "num_params": 7}]
    folder = run_folder(root / name, run.config.replace(
        workdir=str(root / name)), rows=rows)
    report.write(folder, run, data.test, val=data.val)
    out.append((folder, run, data))
  return out


@pytest.mark.slow
def test_a_report_writes_its_runs_analysis(two_runs):
  """report.md's section links files that exist; each change's level 0 is the
  test accuracy (others on every STRIDE-th image); the reading's rows; no
  validation split or reading both ways: n/a."""
  (rnn, *_), (lstm, run, data) = two_runs  # The LSTM of drawn weights.
  for folder, *_ in two_runs:
    text = open(os.path.join(folder, "report.md")).read()
    assert "## What the model learned" in text
    links = re.findall(r"\]\((analysis/[^)]+)\)", text)
    assert {"analysis/robustness.csv", "analysis/robustness.png"} <= set(links)
    for link in links:
      assert os.path.getsize(os.path.join(folder, link)) > 0, link

  r = compare_figures.load_analysis(lstm)
  expected = run.evaluate(data.test.images, data.test.labels)["accuracy"]
  zeros = [(a, n) for _, level, a, n in r["robustness"] if level == 0]
  assert zeros == [(expected, len(data.test))] * len(analysis.CHANGES)
  assert r["test_accuracy"] == expected
  assert {n for _, level, _, n in r["robustness"] if level != 0} == {
      len(range(0, len(data.test), analysis.STRIDE))}
  assert r["robustness_subset_accuracy"] != expected  # So the test can tell.
  r = compare_figures.load_analysis(rnn)  # Its numbers: the lenses' tests above.
  assert r["val_images"] == 40 and r["temperature"] > 0
  assert set(r["seconds"]) >= {"robustness", "attributions", "total"}
  with open(os.path.join(rnn, "analysis", "reading.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == list(range(1, 29))
  assert float(rows[DECIDING_ROW]["accuracy"]) == 1.0
  text = open(os.path.join(lstm, "report.md")).read()
  assert "| T | n/a (no validation) |" in text and "| ECE after T | n/a |" in text
  assert "| n/a (bidirectional) |" in text
  assert not os.path.exists(os.path.join(lstm, "analysis", "reading.csv"))


@pytest.mark.slow
def test_compare_sets_the_runs_analyses_side_by_side(two_runs, drawn, tmp_path):
  """compare.py --analyses: analysis.md's table holds each run's numbers, its
  figures drawn, each run named by compare's label or model and preset."""
  folders = [f for f, *_ in two_runs]
  out = str(tmp_path / "out")
  compare.compare(folders, out, log=lambda _: None, analyses=True)
  lines = open(os.path.join(out, "analysis.md")).read().splitlines()
  header = next(l for l in lines if l.startswith("| model |"))
  names = [c.strip() for c in header.strip("|").split("|")]
  assert names[:4] == ["model", "parameters", "wall time", "test accuracy"]
  for folder, model, seconds in zip(folders, ("rnn", "lstm"), (30, 10)):
    row = next(l for l in lines if l.startswith(f"| {model} (seed, "))
    cells = dict(zip(names, (c.strip() for c in row.strip("|").split("|"))))
    r = compare_figures.load_analysis(folder)
    at = {(c, float(l)): a for c, l, a, _ in r["robustness"]}
    assert cells["parameters"] == f"{int(r['parameters']):,}"
    assert cells["wall time"] == f"{seconds:.1f} s"
    assert cells["test accuracy"] == f"{100 * r['test_accuracy']:.2f}%"
    assert cells["ECE"] == f"{100 * r['test_ece']:.2f}%"
    assert cells["at 20 degrees"] == f"{100 * at['rotation', 20]:.2f}%"
    assert cells["at noise 0.3"] == f"{100 * at['noise', 0.3]:.2f}%"
    assert cells["read to 99%"].startswith("14" if model == "rnn" else "n/a")
  figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", "\n".join(lines))
  assert len(figures) == 5  # Reading (the rnn alone) and four for both.
  for name in figures:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
  for given, named in ((["rnn (seed, A)", "lstm (seed, B)"],) * 2,
                       (None, ["rnn (seed)", "lstm (seed)"])):
    drawn.clear()
    compare_figures.analysis_page(folders, str(tmp_path / "a.md"), labels=given)
    texts = {t.get_text() for fig in drawn for t in fig.findobj(
        matplotlib.text.Text)}
    assert set(named) <= texts

def _result(model, steps=1):
  """A run's analysis as analysis_plots reads it, of made-up numbers."""
  count = np.array([0, 0, 1, 2, 3, 5, 4, 6, 8, 10, 12, 20, 40, 80, 9800.])
  correct = np.linspace(0.1, 0.99, 15)
  return {"model": model, "preset": "seed", "label": f"{model} (seed)",
          "names": [str(k) for k in range(K)], "stride": analysis.STRIDE,
          "changes": [c[:3] for c in analysis.CHANGES],
          "robustness": [(c, l, 0.99 - 0.001 * abs(l), 100) for c, _, levels, _
                         in analysis.CHANGES for l in levels],
          "test_count": count, "test_correct": correct, "test_ece": 0.01,
          "temperature": 1.5, "scaled_ece": 0.005, "scaled_count": count[::-1],
          "scaled_correct": correct,
          "reading_accuracy": np.linspace(0.1, 1, 28),
          "reading_true_class_probability": np.linspace(0.1, 0.9, 28),
          "reading_steps": np.arange(1, 29) * steps,
          "reading_unit": ["row", "rows"]}


def test_figure_titles_wrap_between_words(drawn, tmp_path):
  """The issue's 'equal-/width': no title breaks inside a word."""
  plots.save(plots.plt.figure(figsize=(2, 2)), str(tmp_path / "t.png"),
             "well-calibrated equal-width bins, run-to-run")
  [fig] = drawn
  assert "\n" in fig.get_suptitle() and "-\n" not in fig.get_suptitle()


def test_reliability_shows_each_bins_share_and_tells_its_lines_apart(
    drawn, tmp_path):
  """Under each diagram each bin's share of the images; thin bins pale."""
  r = _result("lstm")
  analysis_plots.reliability([r], str(tmp_path / "r.png"))
  [fig] = drawn
  top, under = fig.axes
  shares = sorted(100 * c / r[f"{key}_count"].sum() for key in ("test", "scaled")
                  for c in r[f"{key}_count"])
  np.testing.assert_allclose(sorted(p.get_height() for p in under.patches),
                             shares)
  assert under.get_ylabel() == "Share of the images (%)"
  steps = [p for p in top.patches if isinstance(p, StepPatch)]
  assert len(steps) == 4 and not any(p.get_fill() for p in steps)
  assert sorted(p.get_alpha() for p in steps) == [0.25, 0.25, 1.0, 1.0]
  assert steps[0].get_linestyle() != steps[2].get_linestyle()
  assert not [p for p in top.patches if p not in steps]  # No filled bars.
  legend = fig.legends[0]
  markers = {t.get_text(): h.get_marker()
             for h, t in zip(legend.legend_handles, legend.texts)}
  assert markers["as trained"] != markers["temperature scaled"]


@pytest.mark.parametrize("steps, says", [
    ([1], "Rows read (a step each)"),
    ([28], "Rows read (28 steps each)"),
    ([1, 28], "Rows read (a step each); Rows read (28 steps each)")])
def test_the_reading_axis_says_what_a_unit_is_for_the_run(drawn, tmp_path,
                                                          steps, says):
  runs = [_result(m, s) for m, s in zip(("lstm", "rnn"), steps)]
  analysis_plots.reading(runs, str(tmp_path / "r.png"))
  [fig] = drawn
  for ax in fig.axes:
    assert ax.get_xlabel() == says


def test_equal_robustness_lines_stay_apart(drawn, tmp_path):
  """The issue's lstm and gru: two runs of equal accuracies."""
  analysis_plots.robustness([_result("lstm"), _result("gru")],
                            str(tmp_path / "b.png"))
  [fig] = drawn
  for ax in fig.axes:
    assert ax.get_ylim()[1] <= 100
    lstm, gru = ax.lines
    assert lstm.get_linestyle() != gru.get_linestyle()
    assert lstm.get_marker() != gru.get_marker()
    assert lstm.get_markerfacecolor() == gru.get_markerfacecolor() == "none"
    at = [line.get_transform().transform(line.get_xydata()) for line in
          ax.lines]
    assert (np.abs(at[0][:, 0] - at[1][:, 0]) >= 2).all()  # Points apart.

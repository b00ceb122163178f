"""--sweep and --num_seeds: the grid and its refusals, member order, the
choice, the run folder's files, report, predict and compare.py on members
(a member's numbers: test_parallel.py; resumed: test_resume.py)."""

import csv
import functools
import io
import json
import os
import pathlib
import shutil
import types

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import assert_trees_equal, one_per_module_class
from experiments import compare
import launch
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import images as images_lib
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.results import plots
from mnist_jax.results import report
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import cli
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib
from mnist_jax.training import members
from mnist_jax.training import metrics
from mnist_jax.training import population

TINY = dict(mlp_hidden=(16,), dropout=0.2, epochs=2, batch_size=50,
            val_fraction=0.1, analyses=False)
SWEEP = "learning_rate=0.003,0.01;grad_clip=0,1"  # 4 points x 2 seeds.


def _overrides(*argv):
  """launch.py's Config overrides for a command line (parsed in-process)."""
  launch.FLAGS.unparse_flags()
  launch.FLAGS(["launch.py", *argv])
  try:
    return cli.overrides(launch.FLAGS)
  finally:
    launch.FLAGS.unparse_flags()


def test_repeated_and_joined_sweep_flags_give_one_canonical_grid():
  """In the order given, reading back as the same grid; the repeat command
  holds it, not the swept flags."""
  repeated = _overrides("--sweep=learning_rate=3e-4, 1e-3",
                        "--sweep=weight_decay=0,1e-4")
  joined = _overrides("--sweep=learning_rate=3e-4,1e-3;weight_decay=0,1e-4")
  assert repeated == joined == {
      "sweep": "learning_rate=0.0003,0.001;weight_decay=0.0,0.0001"}
  assert _overrides() == {}
  text = repeated["sweep"]  # Its grid: the members test's first case.
  assert config_lib.sweep_text(text) == text
  command = record_lib.repeat_command(models.get_config("mlp", **repeated))
  assert "--sweep=" in command and "--learning_rate" not in command
  assert "--weight_decay" not in command and "--epochs=20" in command


# Refusals of the --sweep and compare.py --vary parsers alone (the others,
# and a shape's pointer to compare.py --vary: test_refusals.py).
_vary = lambda *specs: compare.parse_vary(list(specs))


@pytest.mark.parametrize("parse,args,words", [
    (_overrides, ["--sweep=learning_rate"], ["expected NAME=V1,V2"]),
    (_overrides, ["--sweep=learning_rate=1e-3", "--sweep=learning_rate=3e-3"],
     ["learning_rate twice"]),
    (_overrides, ["--sweep=model=mlp,cnn"], [
        "python experiments/compare.py --train=mlp,cnn", "learning_rate"]),
    (_vary, ["model=mlp/cnn"], ["--train, --preset and --seeds"]),
    (_vary, ["nope=1/2"], ["--train, --preset and --seeds"]),
    (_vary, ["mlp_hidden=a"], ["'a' is not a value of mlp_hidden"]),
    (_vary, ["dropout="], ["NAME=V1/V2"])])
def test_bad_sweeps_and_varies_are_one_line_errors(parse, args, words):
  with pytest.raises(UserError) as e:
    parse(*args)
  assert "\n" not in str(e.value)
  for word in words:
    assert word in str(e.value)


@pytest.mark.parametrize("num_seeds,sweep,expected", [
    (2, "learning_rate=0.001,0.003;weight_decay=0.0,0.0001",
     [(s, {"learning_rate": lr, "weight_decay": wd})
      for lr in (1e-3, 3e-3) for wd in (0, 1e-4) for s in (5, 6)]),
    (3, "", [(s, {}) for s in (5, 6, 7)]),
    (1, "", [(5, {})])])
def test_members_are_grid_point_major_seed_minor(num_seeds, sweep, expected):
  """Member i's config is the single run of its seed and values; a point's
  seeds are consecutive."""
  config = models.get_config("mlp", "seed", seed=5, num_seeds=num_seeds,
                             sweep=sweep)
  listed = members.from_config(config)
  assert [(m.seed, m.values) for m in listed] == expected
  assert [m.index for m in listed] == list(range(len(expected)))
  for m in listed:
    assert m.config == config.replace(seed=m.seed, num_seeds=1, sweep="",
                                      **m.values)
  assert members.points(listed) == [
      tuple(range(i, i + num_seeds))
      for i in range(0, len(expected), num_seeds)]
  if sweep:
    assert members.label(listed[3]) == (
        "learning_rate=0.001, weight_decay=0.0001, seed=6")


def _val(*pairs):
  """host_metrics-like validation metrics from (accuracy, loss) per member."""
  return [{"accuracy": a, "loss": l, "count": 10.0} for a, l in pairs]


def test_choosing_takes_the_best_mean_point_then_its_best_seed():
  """Ties: the lower mean loss, then index; no validation: member 0."""
  listed = members.from_config(models.get_config(
      "mlp", **TINY, num_seeds=2, sweep="learning_rate=1e-3,3e-3,1e-2"))
  # Point 0 holds the single best member, point 1 the best mean.
  assert members.choose(listed, _val((1.0, .1), (.6, .9), (.9, .2), (.9, .3),
                                     (.5, 1.), (.5, 1.))) == (1, 2)
  assert members.choose(listed, _val((.75, .25), (.25, .25), (.5, .25),
                                     (.5, .125), (.25, 1.), (.25, 1.))) == (1, 3)
  assert members.choose(listed, _val(*[(.9, .2)] * 6)) == (0, 0)
  assert members.choose(listed, None) == (0, 0)


def test_ensemble_metrics_are_the_mean_of_probabilities():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50, 10)) * 3
  labels = rng.integers(0, 10, 50)
  mean = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).mean(0)

  def stub(seed_logits):  # A Run as ensemble_metrics uses one.
    return types.SimpleNamespace(
        config=types.SimpleNamespace(eval_batch_size=100),
        seeds=tuple(range(len(seed_logits))),
        seed_logits=lambda images, batch_size: seed_logits)

  test = pipeline.Split(np.zeros((50, 28, 28, 1), np.uint8), labels)
  got = report.ensemble_metrics(stub(logits), test)
  assert got["members"] == 3
  assert got["accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == labels))
  assert got["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(50),
                                                           labels])))
  # The mean of probabilities, not of logits: here only the first is right.
  pair = np.stack([np.log([.9, .1, 1e-9]), np.log([1e-9, .45, .55])])[:, None]
  one = pipeline.Split(np.zeros((1, 28, 28, 1), np.uint8), np.array([0]))
  assert report.ensemble_metrics(stub(pair), one)["accuracy"] == 1.0
  assert pair.mean(0).argmax() != 0
  # A diverged member has no place in it; one finite member is no ensemble.
  nan = np.concatenate([logits[:1], np.full_like(logits[:1], np.nan)])
  assert report.ensemble_metrics(stub(nan), test) is None


@pytest.mark.parametrize("values,scale", [
    ([3e-4, 1e-3, 3e-3, 1e-2], "log"), ([0.0, 1e-4, 1e-2], "symlog"),
    ([0.0, 0.1, 0.2], "linear"), ([0.5, 1.0], "linear")])
def test_sweep_plot_axis_is_logarithmic_for_values_spanning_decades(values,
                                                                   scale):
  fig, ax = plots.plt.subplots()
  plots._value_axis(ax, values)  # pylint: disable=protected-access
  assert ax.get_xscale() == scale
  np.testing.assert_allclose(ax.get_xticks(), sorted(values))
  plots.plt.close(fig)


def test_a_diverged_member_stops_alone(prepared, tmp_path):
  """SGD at 1e38 overflows: that member stops (said, losses none, "n/a" in
  the report); the other trains on and is chosen."""
  stream = io.StringIO()
  modes.train_and_evaluate(models.get_config(
      "linear", **prepared.settings, epochs=1, batch_size=50, val_fraction=0.1,
      optimizer="sgd", momentum=0.0, analyses=False,
      sweep="learning_rate=0.01,1e38"), str(tmp_path), stream=stream)
  assert "member learning_rate=1e+38, seed=0 diverged at step" in (
      stream.getvalue())
  assert ("\nchosen by validation accuracy: learning_rate=0.01, seed=0; "
          "test accuracy ") in stream.getvalue()
  rows = metrics_log.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert rows[-1]["chosen"]["index"] == 0 and "diverged" not in rows[-1]
  for row in rows:
    good, bad = row["members"]
    assert "diverged" not in good and bad["diverged"] is True
    assert all(bad[k] is None for k in bad if k.endswith("_loss"))
  assert "n/a" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def swept(prepared, tmp_path_factory):
  """(folder, metrics rows) of a finished 8-member sweep, with its report."""
  folder = str(tmp_path_factory.mktemp("sweep") / "run")
  modes.train_and_evaluate(models.get_config(
      "mlp", num_seeds=2, sweep=SWEEP, **prepared.settings, **TINY), folder,
      stream=io.StringIO())
  return folder, metrics_log.read_metrics(os.path.join(folder,
                                                       "metrics.jsonl"))


@pytest.mark.slow
def test_a_sweeps_rows_csv_and_report_name_every_member_and_the_chosen(
    swept):
  """Rows: every member's metrics and the leader; the final row: the chosen's,
  its seeds' mean and std, each member's, the ensemble's; sweep.csv; report."""
  folder, rows = swept
  listed = members.from_config(record_lib.read_config(folder))
  epochs, final = rows[:-1], rows[-1]
  for row in epochs:
    per = row["members"]
    assert [(p["index"], p["seed"], p["values"]) for p in per] == [
        (m.index, m.seed, m.values) for m in listed]
    _, leader = members.choose(listed, [
        {"accuracy": p["val_accuracy"], "loss": p["val_loss"]} for p in per])
    assert row["leader"] == members.identity(listed[leader])
  chosen = final["chosen"]
  own = final["members"][chosen["index"]]
  assert chosen == {k: own[k] for k in ("index", "seed", "values")}
  assert final["test_accuracy"] == own["test_accuracy"]
  seeds = [final["members"][i]["test_accuracy"]
           for i in members.points(listed)[chosen["index"] // 2]]
  assert final["test_accuracy_mean"] == pytest.approx(np.mean(seeds), abs=1e-6)
  assert final["test_accuracy_std"] == pytest.approx(np.std(seeds, ddof=1),
                                                     abs=1e-6)
  assert final["ensemble_test_loss"] > 0
  with open(os.path.join(folder, "sweep.csv")) as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == [
      "member", "learning_rate", "grad_clip", "seed", *[
          f"{w}_{k}" for w in ("best", "final") for k in metrics.keys("val")],
      *metrics.keys("test"), "diverged", "chosen"]
  assert [r["chosen"] for r in table] == [
      str(int(i == chosen["index"])) for i in range(8)]
  for r, entry in zip(table, final["members"]):
    assert float(r["learning_rate"]) == entry["values"]["learning_rate"]
    assert float(r["test_accuracy"]) == pytest.approx(entry["test_accuracy"],
                                                      abs=1e-6)
    vals = [row["members"][int(r["member"])]["val_accuracy"] for row in epochs]
    assert float(r["best_val_accuracy"]) == pytest.approx(max(vals), abs=1e-6)
    assert float(r["final_val_accuracy"]) == pytest.approx(vals[-1], abs=1e-6)
  with Image.open(os.path.join(folder, "sweep.png")) as image:
    assert image.format == "PNG" and min(image.size) >= 300
  text = pathlib.Path(folder, "report.md").read_text()
  label = members.values_text(chosen["values"], chosen["seed"])
  assert f"member {chosen['index']} ({label}) of 8" in text
  assert "highest mean final validation accuracy" in text
  assert f"{100 * final['ensemble_test_accuracy']:.2f}%" in text
  assert f"**{100 * own['test_accuracy']:.2f}%**" in text
  assert "![sweep](sweep.png)" in text and "(sweep.csv)" in text


@pytest.mark.slow
def test_report_and_predict_use_the_chosen_member_and_the_ensemble(
    swept, tmp_path):
  """From the checkpoint: the final row's chosen and ensemble test metrics
  again, the same report (sweep.png too), predict's probabilities."""
  folder, rows = swept
  run = run_lib.load_run(folder)
  final = rows[-1]
  assert run.member == final["chosen"]["index"]
  assert run.seeds == members.points(members.from_config(run.config))[
      run.member // 2]
  test = pipeline.load(run.config).test
  images, labels = np.asarray(test.images), np.asarray(test.labels)
  own = run_lib.softmax(np.asarray(run.model.apply(jax.tree.map(  # Its own.
      lambda p: p[run.seeds.index(run.member)], run.seed_variables), images)))
  assert final["test_accuracy"] == pytest.approx(
      np.mean(own.argmax(-1) == labels), abs=1e-9)
  np.testing.assert_allclose(run.probabilities(images[:7]), own[:7],
                             rtol=1e-5, atol=1e-7)
  ensemble = run.evaluate(images, labels, ensemble=True)
  assert ensemble["accuracy"] == pytest.approx(
      final["ensemble_test_accuracy"], abs=1e-9)
  assert ensemble["confusion"].sum() == len(labels)
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  os.remove(os.path.join(copy, "sweep.png"))
  result = modes.rewrite_report(copy)
  assert result["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-9)
  assert os.path.exists(os.path.join(copy, "sweep.png"))
  assert pathlib.Path(copy, "report.md").read_text() == pathlib.Path(
      folder, "report.md").read_text()
  path = str(tmp_path / "digit.png")
  Image.fromarray(images[0, ..., 0]).save(path)
  out = io.StringIO()
  assert run_lib.print_predictions(folder, [path], as_json=True, out=out,
                                   ensemble=True) == 0
  np.testing.assert_allclose(
      json.loads(out.getvalue())["probabilities"],
      run.probabilities(images_lib.load(path)[None], ensemble=True)[0],
      atol=2e-6)


@pytest.mark.slow
def test_compare_reads_every_member_as_its_own_configuration(swept, tmp_path):
  folder, rows = swept
  groups = compare.compare([folder], str(tmp_path / "out"), log=lambda _: None)
  assert len(groups) == 4
  # Each label names its member's swept values where they are off the preset.
  for g in groups:
    c = g["config"]
    assert f"--learning_rate={c.learning_rate:g}" in g["label"]
    assert ("--grad_clip=1" in g["label"]) == (c.grad_clip == 1.0)
    assert g["seeds"] == [0, 1] and c.sweep == ""
  by_values = {(g["config"].learning_rate, g["config"].grad_clip): g
               for g in groups}
  for entry in rows[-1]["members"]:
    g = by_values[tuple(entry["values"][k] for k in ("learning_rate",
                                                     "grad_clip"))]
    k = g["seeds"].index(entry["seed"])
    assert g["test_accuracy"][k] == entry["test_accuracy"]
    assert g["curves"][k][-1]["val_loss"] == rows[-2]["members"][
        entry["index"]]["val_loss"]


@pytest.mark.slow
def test_compare_vary_trains_a_run_per_value(prepared, tmp_path):
  assert compare.parse_vary(["mlp_hidden=16/32,16"]) == {
      "mlp_hidden": [(16,), (32, 16)]}
  folders = compare.train_runs(["linear"], [0], str(tmp_path / "runs"),
                               preset="seed", log=lambda _: None,
                               stream=io.StringIO(), epochs=1,
                               vary=compare.parse_vary(["batch_size=50/100"]),
                               **prepared.settings)
  assert [os.path.basename(f) for f in folders] == [
      "linear-batch_size=50-seed0", "linear-batch_size=100-seed0"]
  groups = compare.compare(folders, str(tmp_path / "out"), log=lambda _: None)
  assert sorted(g["label"] for g in groups) == [
      "linear (seed, --epochs=1, --batch_size=100)",
      "linear (seed, --epochs=1, --batch_size=50)"]


@pytest.mark.slow
@pytest.mark.parametrize("name", one_per_module_class())
def test_the_initializer_compiled_for_speed_draws_the_default_compiles_bits(
    name, monkeypatch):
  """population.INIT_OPTIONS (a faster compile) gives every preset's initial
  state XLA's default level gives, bit for bit: no README number moves."""
  backend = jax.default_backend()
  if not population.INIT_OPTIONS.get(backend):
    pytest.skip(f"no initializer options on {backend}")
  for preset in models.get(name).presets:
    config = models.get_config(name, preset)
    model, _ = models.build(config, say=lambda _: None)
    init = functools.partial(population.initial_state, config, model, 10,
                             (28, 28, 1))
    fast = init()
    with monkeypatch.context() as default:
      default.setitem(population.INIT_OPTIONS, backend,
                      {"xla_backend_optimization_level": 3})
      assert_trees_equal(fast, init(), err_msg=f"{name} --preset={preset}")

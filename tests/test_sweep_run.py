"""--sweep end to end: flags, members against single runs, choosing, the
ensemble, the run folder's files, report / predict, compare.py and resume."""

import csv
import io
import json
import os
import shutil
import types

import jax
import numpy as np
from PIL import Image
import pytest

from experiments import compare
import launch
import launch_helpers as lh
from mnist_jax import models
from mnist_jax.data import images as images_lib
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.results import report
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir import cli
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib
from mnist_jax import modes as run_folder
from mnist_jax.training import members
from mnist_jax import optim

# The analyses aside: tests/test_analysis.py holds them.
TINY = dict(mlp_hidden=(16,), dropout=0.2, epochs=2, batch_size=50,
            val_fraction=0.1, analyses=False)
# The linear model's share of TINY: it has no settings of its own.
LINEAR = {k: v for k, v in TINY.items() if k not in ("mlp_hidden", "dropout")}
SWEEP = "learning_rate=0.003,0.01;grad_clip=0,1"  # 4 points x 2 seeds.


def _config(prepared, **overrides):
  mnist_dir, data_dir = prepared
  return models.get_config("mlp", mnist_dir=mnist_dir, data_dir=data_dir,
                           **{**TINY, **overrides})


def _train(prepared, folder, **overrides):
  run_folder.train_and_evaluate(_config(prepared, **overrides), str(folder),
                                stream=io.StringIO())
  return metrics_log.read_metrics(os.path.join(str(folder), "metrics.jsonl"))


@pytest.fixture(scope="module")
def swept(prepared, tmp_path_factory):
  """(folder, metrics rows) of a finished 8-member sweep."""
  folder = tmp_path_factory.mktemp("sweep") / "run"
  return str(folder), _train(prepared, folder, num_seeds=2, sweep=SWEEP)


# Flags.


def _overrides(*argv):
  """launch.py's Config overrides for a command line (parsed in-process)."""
  launch.FLAGS.unparse_flags()
  launch.FLAGS(["launch.py", *argv])
  try:
    return cli.overrides(launch.FLAGS)
  finally:
    launch.FLAGS.unparse_flags()


def test_repeated_and_joined_sweep_flags_give_one_canonical_spec():
  repeated = _overrides("--sweep=learning_rate=3e-4,1e-3",
                        "--sweep=weight_decay=0,1e-4")
  joined = _overrides("--sweep=learning_rate=3e-4,1e-3;weight_decay=0,1e-4")
  assert repeated == joined == {
      "sweep": "learning_rate=0.0003,0.001;weight_decay=0.0,0.0001"}
  assert _overrides() == {}
  config = models.get_config("mlp", **repeated)
  command = record_lib.repeat_command(config)
  assert "--sweep=" in command and "--learning_rate" not in command
  assert "--weight_decay" not in command and "--epochs=20" in command


BAD_SWEEPS = [
    (["--sweep=learning_rate=abc"], ["'abc' is not a number"]),
    (["--sweep=learning_rate=1e-3,-1e-3"],
     ["--sweep: flag --learning_rate=-0.001: -0.001 is not a finite number "
      "in (0, inf)"]),
    (["--sweep=learning_rate="], ["lists no values"]),
    (["--sweep=lr=1e-3"], ["unknown name 'lr'"]),
    (["--learning_rate=1e-3", "--sweep=learning_rate=1e-3,3e-3"],
     ["--learning_rate and --sweep=learning_rate=... both set"]),
    (["--val_fraction=0", "--sweep=learning_rate=1e-3,3e-3"],
     ["--val_fraction=0.1"]),
    (["--model=cnn", "--sweep=cnn_dense=64,128"],
     ["python experiments/compare.py --train=cnn --vary=cnn_dense=64/128"]),
    (["--sweep=dropout=0,0.2"],
     ["--sweep cannot vary dropout", "--train=mlp --vary=dropout=0/0.2"]),
]


@pytest.mark.parametrize("args,words", BAD_SWEEPS)
def test_bad_sweeps_are_one_line_errors_before_anything_is_written(
    prepared, tmp_path, args, words):
  """launch.py's path in process: flags, config, then the run's first check."""
  folder = tmp_path / "run"
  model = next((a.partition("=")[2] for a in args if a.startswith("--model=")),
               "mlp")
  mnist_dir, data_dir = prepared
  with pytest.raises(UserError) as e:
    config = models.get_config(model, mnist_dir=mnist_dir, data_dir=data_dir,
                               **{**TINY, **_overrides(*args)})
    run_folder.train_and_evaluate(config, str(folder), stream=io.StringIO())
  assert "\n" not in str(e.value)
  for word in words:
    assert word in str(e.value)
  assert not folder.exists()


@pytest.mark.slow
@pytest.mark.parametrize("args,words", [BAD_SWEEPS[0], BAD_SWEEPS[1]])
def test_bad_sweeps_through_launch_are_one_line_and_write_nothing(
    prepared, tmp_path, args, words):
  mnist_dir, data_dir = prepared
  rc, out, err = lh.run([*args, "--epochs=1", f"--mnist_dir={mnist_dir}",
                         f"--data_dir={data_dir}",
                         f"--workdir={tmp_path / 'run'}"], timeout=60)
  assert rc == 2, err  # A value of the flag that does not parse.
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for word in words:
    assert word in lines[0]
  assert "Traceback" not in out + err
  assert not (tmp_path / "run").exists()


# Members are single runs; choosing.


@pytest.mark.slow
def test_member_i_is_the_single_run_with_its_values_and_seed(prepared, swept,
                                                             tmp_path):
  _, rows = swept
  listed = members.from_config(_config(prepared, num_seeds=2, sweep=SWEEP))
  for i in (5,):  # learning_rate 0.01, seed 1 and a swept clip of 0: the
    m = listed[i]  # single run holds no clip at all.
    single = _train(prepared, tmp_path / str(i), seed=m.seed, **m.values)
    assert "members" not in single[-1]
    for multi, own in zip(rows, single):
      entry = multi["members"][i]
      assert (entry["index"], entry["seed"], entry["values"]) == (
          i, m.seed, m.values)
      for key in ("train_loss", "val_loss", "test_loss"):
        if key in own:
          assert entry[key] == pytest.approx(own[key], rel=1e-5), (i, key)
      for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        if key in own:
          assert entry[key] == pytest.approx(own[key], abs=1e-6), (i, key)


def _rate(config, steps_per_epoch, step):
  """The learning rate of `config`'s run after `step` updates: its peak
  times the schedule's multiplier."""
  fn = optim.schedule(config, steps_per_epoch)
  return config.learning_rate * float(fn(step, optim.hyperparams(config)))


def _val(*pairs):
  """host_metrics-like validation metrics from (accuracy, loss) per member."""
  return [{"accuracy": a, "loss": l, "count": 10.0} for a, l in pairs]


def test_choosing_takes_the_best_mean_point_then_its_best_seed():
  config = models.get_config("mlp", **TINY, num_seeds=2,
                             sweep="learning_rate=1e-3,3e-3,1e-2")
  listed = members.from_config(config)
  assert members.points(listed) == [(0, 1), (2, 3), (4, 5)]
  # Point 0 holds the single best member, point 1 the best mean.
  choice = members.choose(listed, _val((1.0, .1), (.6, .9), (.9, .2), (.9, .3),
                                       (.5, 1.), (.5, 1.)))
  assert choice == (1, 2)  # (grid point, member)
  # Equal mean accuracy: the lower mean loss; then the seed likewise.
  choice = members.choose(listed, _val((.75, .25), (.25, .25), (.5, .25),
                                       (.5, .125), (.25, 1.), (.25, 1.)))
  assert choice == (1, 3)
  # Full ties: the lower index, for the point and for the seed.
  same = _val(*[(.9, .2)] * 6)
  assert members.choose(listed, same) == (0, 0)
  assert members.choose(listed, None) == (0, 0)


def test_without_a_sweep_the_best_seed_or_without_validation_member_0():
  listed = members.from_config(models.get_config("mlp", num_seeds=3))
  assert members.choose(listed, _val((.8, .3), (.9, .4), (.9, .2))) == (0, 2)
  assert members.choose(listed, None) == (0, 0)


@pytest.mark.slow
def test_a_diverged_member_stops_alone(prepared, tmp_path):
  """SGD at 1e38 overflows at once; the other member trains on and is chosen."""
  folder = tmp_path / "run"
  stream = io.StringIO()
  run_folder.train_and_evaluate(
      models.get_config("linear", mnist_dir=prepared[0], data_dir=prepared[1],
                        **{**LINEAR, "optimizer": "sgd", "momentum": 0.0,
                           "sweep": "learning_rate=0.01,1e38"}),
      str(folder), stream=stream)
  assert "member learning_rate=1e+38, seed=0 diverged at step" in (
      stream.getvalue())
  rows = metrics_log.read_metrics(str(folder / "metrics.jsonl"))
  final = rows[-1]
  assert final["chosen"]["index"] == 0 and "diverged" not in final
  assert final["test_accuracy"] == final["members"][0]["test_accuracy"]
  assert final["test_accuracy"] > final["members"][1]["test_accuracy"]
  for row in rows:
    good, bad = row["members"]
    assert "diverged" not in good and bad["diverged"] is True
    assert all(bad[k] is None for k in bad if k.endswith("_loss"))
    assert good[[k for k in good if k.endswith("_loss")][0]] is not None
  with open(folder / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["diverged"], r["chosen"]) for r in table] == [("0", "1"),
                                                           ("1", "0")]


# metrics.jsonl and the run folder.


@pytest.mark.slow
def test_rows_hold_the_leading_member_and_every_member(prepared, swept):
  folder, rows = swept
  listed = members.from_config(record_lib.read_config(folder))
  steps = 540 // 50
  epochs, final = rows[:-1], rows[-1]
  for row in epochs:
    per = row["members"]
    val = [{"accuracy": p["val_accuracy"], "loss": p["val_loss"]}
           for p in per]
    leader_point, leader = members.choose(listed, val)
    point = members.points(listed)[leader_point]
    assert row["leader"] == members.identity(listed[leader])
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      values = [per[i][key] for i in point]
      assert row[key] == per[leader][key]
      assert row[key + "_mean"] == pytest.approx(np.mean(values))
      assert row[key + "_std"] == pytest.approx(np.std(values, ddof=1))
    for m, entry in zip(listed, per):
      assert entry["learning_rate"] == pytest.approx(
          _rate(m.config, steps, row["step"]), rel=1e-6)
  last = [{"accuracy": p["val_accuracy"], "loss": p["val_loss"]}
          for p in epochs[-1]["members"]]
  chosen_point, chosen_index = members.choose(listed, last)
  chosen = listed[chosen_index]
  assert final["chosen"] == {"index": chosen.index, "seed": chosen.seed,
                             "values": chosen.values}
  point = members.points(listed)[chosen_point]
  tests = [final["members"][i]["test_accuracy"] for i in point]
  assert final["test_accuracy"] == tests[point.index(chosen.index)]
  assert final["test_accuracy_mean"] == pytest.approx(np.mean(tests))
  assert final["test_accuracy_std"] == pytest.approx(np.std(tests, ddof=1))
  assert 0 <= final["ensemble_test_accuracy"] <= 1
  assert final["ensemble_test_loss"] > 0
  # Each member's test metrics (its learning rates are the epoch rows').
  assert all("test_loss" in e and "test_accuracy" in e
             for e in final["members"])


@pytest.mark.slow
def test_sweep_csv_and_png(swept):
  folder, rows = swept
  with open(os.path.join(folder, "sweep.csv")) as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == [
      "member", "learning_rate", "grad_clip", "seed", "best_val_loss",
      "best_val_accuracy", "best_val_ece", "final_val_loss",
      "final_val_accuracy", "final_val_ece", "test_loss", "test_accuracy",
      "test_ece", "diverged", "chosen"]
  assert [r["member"] for r in table] == [str(i) for i in range(8)]
  assert [r["chosen"] for r in table].count("1") == 1
  chosen = next(r for r in table if r["chosen"] == "1")
  assert int(chosen["member"]) == rows[-1]["chosen"]["index"]
  for r, entry in zip(table, rows[-1]["members"]):
    assert float(r["learning_rate"]) == entry["values"]["learning_rate"]
    assert float(r["test_accuracy"]) == pytest.approx(entry["test_accuracy"],
                                                      abs=1e-6)
    vals = [row["members"][int(r["member"])]["val_accuracy"]
            for row in rows[:-1]]
    assert float(r["best_val_accuracy"]) == pytest.approx(max(vals), abs=1e-6)
    assert float(r["final_val_accuracy"]) == pytest.approx(vals[-1], abs=1e-6)
    eces = [row["members"][int(r["member"])]["val_ece"] for row in rows[:-1]]
    assert float(r["best_val_ece"]) == pytest.approx(min(eces), abs=1e-6)
    assert float(r["test_ece"]) == pytest.approx(entry["test_ece"], abs=1e-6)
  with Image.open(os.path.join(folder, "sweep.png")) as image:
    assert image.format == "PNG" and min(image.size) >= 300


@pytest.mark.parametrize("values,scale", [
    ([3e-4, 1e-3, 3e-3, 1e-2], "log"), ([0.0, 1e-4, 1e-2], "symlog"),
    ([0.0, 0.1, 0.2], "linear"), ([0.5, 1.0], "linear")])
def test_sweep_plot_axis_is_logarithmic_for_values_spanning_decades(values,
                                                                   scale):
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  fig, ax = plots.plt.subplots()
  plots._value_axis(ax, values)  # pylint: disable=protected-access
  assert ax.get_xscale() == scale
  np.testing.assert_allclose(ax.get_xticks(), sorted(values))
  plots.plt.close(fig)


def test_a_run_without_sweep_writes_no_sweep_files(tiny_run):
  assert not os.path.exists(os.path.join(tiny_run, "sweep.csv"))
  assert not os.path.exists(os.path.join(tiny_run, "sweep.png"))
  assert "## Members" not in open(os.path.join(tiny_run, "report.md")).read()


@pytest.mark.slow
def test_report_names_the_chosen_member_and_the_ensemble(swept):
  folder, rows = swept
  text = open(os.path.join(folder, "report.md")).read()
  chosen = rows[-1]["chosen"]
  label = members.values_text(chosen["values"], chosen["seed"])
  assert f"member {chosen['index']} ({label}) of 8" in text
  assert "highest mean final validation accuracy" in text
  assert "Ensemble test accuracy" in text
  assert f"{100 * rows[-1]['ensemble_test_accuracy']:.2f}%" in text
  assert "![sweep](sweep.png)" in text and "(sweep.csv)" in text
  # The headline's test accuracy is the chosen member's own.
  own = rows[-1]["members"][chosen["index"]]["test_accuracy"]
  assert f"**{100 * own:.2f}%**" in text


def test_ensemble_metrics_are_the_mean_of_probabilities():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50, 10)) * 3
  labels = rng.integers(0, 10, 50)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = probs.mean(0)

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
  sure, torn = np.log([.9, .1, 1e-9]), np.log([1e-9, .45, .55])
  pair = np.stack([sure, torn])[:, None]
  one = pipeline.Split(np.zeros((1, 28, 28, 1), np.uint8), np.array([0]))
  assert report.ensemble_metrics(stub(pair), one)["accuracy"] == 1.0
  assert pair.mean(0).argmax() != 0
  # A diverged member has no place in it; one finite member is no ensemble.
  nan = np.concatenate([logits[:1], np.full_like(logits[:1], np.nan)])
  assert report.ensemble_metrics(stub(nan), test) is None


@pytest.mark.slow
def test_ensemble_and_chosen_member_from_the_checkpoint(prepared, swept):
  """The final row's ensemble and member metrics, recomputed from probabilities
  of each member's own variables through its Flax module."""
  folder, rows = swept
  run = run_lib.load_run(folder)
  final = rows[-1]
  assert run.member == final["chosen"]["index"]
  assert run.seeds == tuple(members.points(members.from_config(run.config))[
      run.member // 2])
  dataset = pipeline.load(run.config)
  images = np.asarray(dataset.test.images)
  labels = np.asarray(dataset.test.labels)
  probs = []
  for position in range(len(run.seeds)):
    variables = jax.tree.map(lambda p, k=position: p[k], run.seed_variables)
    probs.append(run_lib.softmax(np.asarray(run.model.apply(variables,
                                                           images))))
  mean = np.mean(probs, axis=0)
  assert final["ensemble_test_accuracy"] == pytest.approx(
      np.mean(mean.argmax(-1) == labels), abs=1e-9)
  own = probs[run.seeds.index(run.member)]
  assert final["members"][run.member]["test_accuracy"] == pytest.approx(
      np.mean(own.argmax(-1) == labels), abs=1e-9)
  np.testing.assert_allclose(run.probabilities(images[:7]), own[:7],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(run.probabilities(images[:7], ensemble=True),
                             mean[:7], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_report_mode_and_predict_use_the_chosen_member(swept, tmp_path):
  folder, rows = swept
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  os.remove(os.path.join(copy, "sweep.png"))
  result = run_folder.rewrite_report(copy)
  chosen = rows[-1]["members"][rows[-1]["chosen"]["index"]]
  assert result["accuracy"] == pytest.approx(chosen["test_accuracy"], abs=1e-9)
  assert os.path.exists(os.path.join(copy, "sweep.png"))
  assert (open(os.path.join(copy, "report.md")).read() ==
          open(os.path.join(folder, "report.md")).read())

  image = Image.fromarray(np.asarray(pipeline.load(
      record_lib.read_config(folder)).test.images[0, ..., 0]))
  path = str(tmp_path / "digit.png")
  image.save(path)
  run = run_lib.load_run(folder)
  out = io.StringIO()
  assert run_lib.print_predictions(folder, [path], as_json=True, out=out, ensemble=True) == 0
  got = json.loads(out.getvalue())["probabilities"]
  np.testing.assert_allclose(
      got, run.probabilities(images_lib.load(path)[None], ensemble=True)[0],
      atol=2e-6)


# compare.py


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
  by_values = {(g["config"].learning_rate, g["config"].grad_clip): g
               for g in groups}
  for entry in rows[-1]["members"]:
    g = by_values[(entry["values"]["learning_rate"],
                   entry["values"]["grad_clip"])]
    k = g["seeds"].index(entry["seed"])
    assert g["test_accuracy"][k] == entry["test_accuracy"]
    assert g["curves"][k][-1]["val_loss"] == rows[-2]["members"][
        entry["index"]]["val_loss"]
  assert all(g["seeds"] == [0, 1] and g["config"].sweep == "" for g in groups)


@pytest.mark.slow
def test_compare_vary_trains_a_run_per_value(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  grid = compare.parse_vary(["batch_size=50/100"])
  assert grid == {"batch_size": [50, 100]}
  assert compare.parse_vary(["mlp_hidden=16/32,16"]) == {
      "mlp_hidden": [(16,), (32, 16)]}
  folders = compare.train_runs(["linear"], [0], str(tmp_path / "runs"),
                               preset="seed", log=lambda _: None,
                               stream=io.StringIO(), vary=grid, epochs=1,
                               mnist_dir=mnist_dir, data_dir=data_dir)
  assert [os.path.basename(f) for f in folders] == [
      "linear-batch_size=50-seed0", "linear-batch_size=100-seed0"]
  assert [record_lib.read_config(f).batch_size for f in folders] == [50, 100]
  groups = compare.compare(folders, str(tmp_path / "out"), log=lambda _: None)
  assert sorted(g["label"] for g in groups) == [
      "linear (seed, --epochs=1, --batch_size=100)",
      "linear (seed, --epochs=1, --batch_size=50)"]


@pytest.mark.parametrize("spec,words", [
    ("model=mlp/cnn", "--train, --preset and --seeds"),
    ("nope=1/2", "--train, --preset and --seeds"),
    ("mlp_hidden=a", "'a' is not a value of mlp_hidden"),
    ("dropout=", "NAME=V1/V2"),
])
def test_compare_vary_errors(spec, words):
  with pytest.raises(UserError) as e:
    compare.parse_vary([spec])
  assert words in str(e.value) and "\n" not in str(e.value)


# Checkpoints.


@pytest.mark.slow
def test_a_sweep_resumes_from_its_checkpoint_exactly(prepared, swept, tmp_path):
  folder, rows = swept
  copy = tmp_path / "resumed"
  shutil.copytree(folder, copy)
  latest = max(os.listdir(copy / "checkpoints"), key=int)
  shutil.rmtree(copy / "checkpoints" / latest)
  resumed = _train(prepared, copy, num_seeds=2, sweep=SWEEP)
  assert lh.deterministic(resumed) == lh.deterministic(rows)


@pytest.mark.slow
# auto: the members split over the devices the host is split into.
@pytest.mark.parametrize("parallel", ["auto", "none"])
def test_a_sweep_stopped_mid_epoch_resumes_exactly(prepared, tmp_path,
                                                   parallel):
  mnist_dir, data_dir = prepared
  args = lambda name: ["--noreport", "--model=mlp", "--mlp_hidden=16",
                       "--epochs=2", f"--parallel={parallel}",
                       "--batch_size=16", "--chunk_steps=5",
                       "--sweep=learning_rate=1e-3,3e-3", "--num_seeds=2",
                       f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
                       f"--workdir={tmp_path / name}"]
  rc, _, err = lh.run(args("whole"))
  assert rc == 0, err
  whole = lh.deterministic(lh.metrics(str(tmp_path / "whole")))
  rc, _, err, _ = lh.run_and_signal(args("stopped"), lh.SIGTERM, epoch=2)
  assert rc == 128 + lh.SIGTERM, err
  meta = checkpoints.latest_meta(str(tmp_path / "stopped"))
  assert meta["epoch"] == 1 and meta["epoch_step"] > 0
  rc, out, err = lh.run(args("stopped"))
  assert rc == 0 and "resuming" in out, err
  assert lh.deterministic(lh.metrics(str(tmp_path / "stopped"))) == whole


def _set_format(workdir, value):
  """Rewrites the latest checkpoint's meta record with another format number
  (None: none), its checksum made to match, as an older mnist_jax wrote it."""
  folder = os.path.join(workdir, "checkpoints")
  path = os.path.join(folder, max(os.listdir(folder), key=int), "meta",
                      "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta.pop("format") if value is None else meta.update(format=value)
  meta.pop("meta_checksum")
  meta["meta_checksum"] = checkpoints._meta_checksum(meta)  # pylint: disable=protected-access
  with open(path, "w") as f:
    json.dump(meta, f)


@pytest.mark.parametrize("value,words", [
    (None, "an older mnist_jax (checkpoint format 1;"),
    (1, "an older mnist_jax (checkpoint format 1;"),
    (checkpoints.FORMAT + 1, "a newer mnist_jax"),
])
def test_a_checkpoint_of_another_format_is_a_one_line_error(
    swept, tmp_path, value, words):
  source, _ = swept
  meta = checkpoints.latest_meta(source)
  assert meta["format"] == checkpoints.FORMAT
  folder = str(tmp_path / "run")
  shutil.copytree(source, folder)
  # An unfinished run to resume from epoch 1's checkpoint, which another
  # mnist_jax wrote.
  folders = os.path.join(folder, "checkpoints")
  shutil.rmtree(os.path.join(folders, max(os.listdir(folders), key=int)))
  _set_format(folder, value)
  record = json.load(open(os.path.join(folder, "config.json")))
  del record["finished"]
  files.write_json(os.path.join(folder, "config.json"), record)
  rows = lh.metrics(folder)
  files.write_text(os.path.join(folder, "metrics.jsonl"),
                   "".join(json.dumps(r) + "\n" for r in rows[:1]))
  assert not record_lib.finished(folder)
  before = lh.snapshot(folder)
  with pytest.raises(checkpoints.CheckpointError) as e:
    run_folder.train_and_evaluate(record_lib.read_config(folder), folder,
                                  stream=io.StringIO())
  message = str(e.value)
  assert "\n" not in message and words in message
  assert "or pass another --workdir" in message
  assert "--overwrite" not in message and "damaged" not in message
  assert "does not fit" not in message
  assert lh.snapshot(folder) == before
  with pytest.raises(checkpoints.CheckpointError, match="older|newer"):
    run_lib.load_run(folder)

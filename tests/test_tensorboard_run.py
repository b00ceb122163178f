"""A run's TensorBoard events, read back with TensorBoard's loaders, equal its
metrics.jsonl: every epoch, the test metrics, the report's figures, the
Config as hparams, each member's series, and one series after a resume."""

import io
import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import launch_helpers as lh
import tensorboard_helpers as tbh
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import Diverged
from mnist_jax.results import report
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record as record_lib
from mnist_jax.rundir import tensorboard
from mnist_jax import modes as run_folder

EPOCH_TAGS = {**tensorboard.epoch_tags(), **tensorboard.SPEED_TAGS}
TINY = dict(mlp_hidden=(16,), epochs=2, batch_size=32, val_fraction=0.1,
            schedule="cosine")


def _train(prepared, workdir, model="mlp", draw=False, **overrides):
  """Trains a seed-preset model into `workdir`: the rows of its metrics.jsonl.

  draw: write the report (its figures take most of a tiny run's time; the
  tests that read no figure leave it out).
  """
  mnist_dir, data_dir = prepared
  tiny = {k: v for k, v in TINY.items()  # The linear model has no mlp_hidden.
          if k in config_lib.FIELDS or k in models.get(model).settings}
  config = models.get_config(model, "seed", mnist_dir=mnist_dir,
                             data_dir=data_dir, workdir=str(workdir),
                             **{**tiny, **overrides})
  with pytest.MonkeyPatch.context() as patch:
    if not draw:
      patch.setattr(report, "write", lambda *args, **kwargs: None)
    run_folder.train_and_evaluate(config, str(workdir), stream=io.StringIO())
  return metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def _plain_scalars(logdir):
  """{tag: [(step, value)]} of one folder, from the plain EventAccumulator."""
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return {t: [(e.step, e.value) for e in acc.Scalars(t)]
          for t in acc.Tags()["scalars"]}


def _expected(epochs, final, tags=EPOCH_TAGS):
  """{tag: [(epoch, value)]} that metrics rows (or a member's part) give:
  the run's wall time in the run's own folder only."""
  out = {}
  for key, tag in tags.items():
    points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None
              and not (r.get("partial_steps") and key in tensorboard.SPEED_TAGS)]
    if points:
      out[tag] = points
  last = epochs[-1]["epoch"]
  for key, tag in (tensorboard.final_tags(run=True) if tags is EPOCH_TAGS
                   else tensorboard.final_tags()).items():
    out[tag] = [(last, final[key])]
  return out


def _assert_series(got, expected):
  assert sorted(got) == sorted(expected)
  for tag, points in expected.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    np.testing.assert_allclose([v for _, v in got[tag]],
                               [v for _, v in points], rtol=1e-6, err_msg=tag)


def _members(row):
  return row.get("members") or row.get("replicas")


def _session(mux, run):
  """(hparams of the run's session start, its session end or None)."""
  content = mux.PluginRunToTagToContent("hparams")[run]
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
  end = content.get(hparams_metadata.SESSION_END_INFO_TAG)
  return values, end and hparams_metadata.parse_session_end_info_plugin_data(end)


def _event_files(folder):
  return [os.path.join(d, f) for d, _, files in os.walk(folder)
          for f in files if "tfevents" in f]


def _open_files():
  """The files this process holds open (Linux)."""
  fds = "/proc/self/fd"
  return {os.path.realpath(os.path.join(fds, fd)) for fd in os.listdir(fds)}


def test_a_run_writes_its_rows_figures_and_config(tiny_run):
  """The conftest's one-epoch run, with its report."""
  workdir = tiny_run
  rows = metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  epochs, final = rows[:-1], rows[-1]
  config = record_lib.read_config(workdir)
  assert [r["epoch"] for r in epochs] == [1]
  expected = _expected(epochs, final)
  assert {"loss/val", "accuracy/val", "learning_rate"} <= set(expected)

  mux = tbh.multiplexer(workdir)
  assert list(mux.Runs()) == ["."]
  _assert_series(tbh.scalars(mux, "."), expected)
  _assert_series(_plain_scalars(workdir), expected)

  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  figures = [f for f in report.FILES if f.endswith(".png")]
  assert figures and sorted(acc.Tags()["images"]) == sorted(
      f"figures/{f[:-4]}" for f in figures)
  for name in figures:
    [image] = acc.Images(f"figures/{name[:-4]}")
    assert image.step == 1
    tbh.assert_image_is_file(image, os.path.join(workdir, name))

  values, end = _session(mux, ".")
  assert values["model"] == "mlp" and values["preset"] == "seed"
  assert values["learning_rate"] == pytest.approx(config.learning_rate)
  assert values["mlp_hidden"] == "16" and values["epochs"] == 1
  assert "workdir" not in values and "tensorboard" not in values
  assert end.status == 1  # STATUS_SUCCESS: the run finished.
  assert "tensorflow" not in sys.modules


@pytest.fixture(scope="module")
def two_seeds(prepared, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tb") / "seeds")
  return workdir, _train(prepared, workdir, seed=5, num_seeds=2)


def test_each_seed_is_a_series_of_its_own(two_seeds):
  workdir, rows = two_seeds
  epochs, final = rows[:-1], rows[-1]
  peak = record_lib.read_config(workdir).learning_rate
  # Cosine over 2 epochs: half the peak after the first, 0 after the second.
  assert [r["learning_rate"] for r in epochs] == [
      pytest.approx(peak / 2, rel=1e-6), pytest.approx(0, abs=1e-9)]
  mux = tbh.multiplexer(workdir)
  assert sorted(mux.Runs()) == [".", "seed=5", "seed=6"]
  _assert_series(tbh.scalars(mux, "."), _expected(epochs, final))
  member_tags = tensorboard.epoch_tags()
  for i, run in enumerate(["seed=5", "seed=6"]):
    own = [{"epoch": r["epoch"], "learning_rate": r["learning_rate"],
            **_members(r)[i]} for r in epochs]
    _assert_series(tbh.scalars(mux, run),
                   _expected(own, _members(final)[i], member_tags))
    values, end = _session(mux, run)
    assert (values["seed"], values["num_seeds"]) == (5 + i, 1)
    assert end.status == 1
  assert (tbh.scalars(mux, "seed=5")["loss/train"] !=
          tbh.scalars(mux, "seed=6")["loss/train"])


def test_notensorboard_writes_no_event_file(prepared, tmp_path):
  workdir = str(tmp_path / "quiet")
  rows = _train(prepared, workdir, epochs=1, tensorboard=False)
  assert rows[-1]["test_accuracy"] > 0
  assert _event_files(workdir) == []


def test_a_member_folder_in_the_way_stops_the_events_not_the_run(
    prepared, two_seeds, tmp_path, capsys):
  """A run to resume (here: one that stopped before its end) whose member's
  event folder is a file: one warning, the run goes on to its end, its older
  event files are kept."""
  workdir = str(tmp_path / "seeds")
  shutil.copytree(two_seeds[0], workdir)
  record = record_lib.read_record(workdir)
  del record["finished"]
  files.write_json(os.path.join(workdir, record_lib.CONFIG_FILE), record)
  rows = lh.metrics(workdir)
  files.write_text(os.path.join(workdir, "metrics.jsonl"),
                   "".join(json.dumps(r) + "\n" for r in rows[:-1]))
  assert not record_lib.finished(workdir)
  shutil.rmtree(os.path.join(workdir, "seed=6"))
  with open(os.path.join(workdir, "seed=6"), "w") as f:
    f.write("in the way")
  older = _event_files(workdir)
  assert "test_accuracy" in _train(prepared, workdir, seed=5, num_seeds=2)[-1]
  [warning] = [line for line in capsys.readouterr().err.splitlines()
               if "TensorBoard events" in line]
  assert "seed=6" in warning and "training goes on" in warning, warning
  assert set(older) <= set(_event_files(workdir))


def _fail_report(*args, **kwargs):
  raise RuntimeError("the report failed")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
@pytest.mark.parametrize("way_out", ["report fails", "diverged"])
def test_the_event_files_close_on_every_way_out(prepared, tmp_path,
                                                monkeypatch, way_out):
  workdir = str(tmp_path / "run")
  if way_out == "report fails":
    monkeypatch.setattr(report, "write", _fail_report)
    with pytest.raises(RuntimeError, match="the report failed"):
      _train(prepared, workdir, epochs=1, draw=True)  # The failing report.
  else:  # The loss overflows within a few epochs (see test_divergence.py).
    with pytest.raises(Diverged):
      _train(prepared, workdir, model="linear", batch_size=16,
             optimizer="adam", schedule="warmup_cosine", learning_rate=1e38,
             warmup_epochs=400, epochs=800, label_smoothing=0.1)
  [events] = _event_files(workdir)
  assert os.path.realpath(events) not in _open_files()
  rows = metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  # The epochs before the divergence (whose row is the note, no event).
  epochs = [r for r in rows if r.get("train_loss") is not None]
  assert epochs
  got = tbh.scalars(tbh.multiplexer(workdir), ".")
  assert got["loss/train"] == [
      (r["epoch"], pytest.approx(r["train_loss"], rel=1e-6)) for r in epochs]
  assert ("loss/test" in got) == (way_out == "report fails")


# 540 training examples / 16 = 33 steps per epoch, in 7 chunks of 5.
FLAGS = ("--noreport", "--model=mlp", "--mlp_hidden=16", "--epochs=3", "--batch_size=16",
         "--chunk_steps=5", "--seed=3")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [lh.SIGKILL, lh.SIGTERM],
                         ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_and_resumed_run_is_one_series(prepared, tmp_path, signum,
                                                 caplog):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "run")
  args = [*FLAGS, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}"]
  _, _, err, marker = lh.run_and_signal(args, signum, epoch=2, pause_s=1,
                                        on_marker=lambda: time.sleep(0.6))
  assert marker.startswith("@chunk epoch=2 ")
  # Epoch 1 reached the events within FLUSH_S (the signal came 0.6 s into a
  # pause at the third chunk after it): the resumed run logs it again.
  [stopped] = _event_files(workdir)
  assert [s for s, _ in _plain_scalars(stopped)["loss/train"]] == [1], err

  rc, out, err = lh.run(args)
  assert rc == 0 and "resuming" in out, err
  rows = lh.metrics(workdir)
  epochs, final = rows[:-1], rows[-1]
  assert [r["epoch"] for r in epochs] == [1, 2, 3]
  expected = _expected(epochs, final)
  assert len(_event_files(workdir)) == 1
  with caplog.at_level("INFO", logger="tensorboard"):
    loaded = (tbh.scalars(tbh.multiplexer(workdir), "."),
              _plain_scalars(workdir))
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
  for got in loaded:
    _assert_series(got, expected)
    assert all([s for s, _ in got[t]] == [1, 2, 3]
               for t in expected if "test" not in t and "speed" not in t)
    # An epoch resumed mid-way (SIGTERM's checkpoint) has no speed.
    whole = [r["epoch"] for r in epochs if not r.get("partial_steps")]
    assert whole == ([1, 3] if signum == lh.SIGTERM else [1, 2, 3])
    assert all([s for s, _ in got[t]] == whole
               for t in tensorboard.SPEED_TAGS.values())

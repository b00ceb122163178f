"""TensorBoard events (rundir/tensorboard.py), read back by TensorBoard's own
loaders: the Writer on hand-made rows, then runs end to end."""

import io
import os
import shutil
import time
from unittest import mock

import numpy as np
import pytest
import tensorboardX
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import parallel_worker as pw
import tensorboard_helpers as tbh
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.errors import Diverged
from mnist_jax.results import report
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import tensorboard
from mnist_jax.training import metrics

STEPS = 10  # Steps per epoch of the hand-made rows.
ALL_TAGS = {**tensorboard.epoch_tags(), **tensorboard.SPEED_TAGS}
TRAIN = tensorboard.epoch_tags()[metrics.keys("train")[0]]  # loss/train.


def _values(split, epoch, seed=0, offset=0.0):
  """A distinct value for each registered metric of `split`."""
  return {key: 0.1 * i + 1.0 / epoch + 0.01 * seed + offset
          for i, key in enumerate(metrics.keys(split))}


def _row(epoch, seeds=(), offset=0.0):
  """An epoch row as train_and_evaluate writes it, mean over `seeds` if any."""
  def own(seed):
    return {**_values("train", epoch, seed, offset),
            **_values("val", epoch, seed, offset + 0.05)}
  row = {"epoch": epoch, "step": epoch * STEPS, "learning_rate": 1e-3 / epoch}
  if seeds:
    per = [{"seed": s, **own(s)} for s in seeds]
    row.update({k: float(np.mean([p[k] for p in per])) for k in own(0)})
    row["members"] = per
  else:
    row.update(own(0))
  row.update(epoch_time_s=0.2 + epoch, examples_per_s=6000.0 / epoch)
  return row


def _writer(logdir, config, kept=(), write=None, **kwargs):
  """A Writer as a run opens it, resuming after the epochs metrics.jsonl holds
  (`kept`); given `write`, those rows written and the writer closed."""
  for row in kept:
    metrics_log.MetricsLog(str(logdir)).write(row)
  writer = tensorboard.Writer(str(logdir), config, **kwargs)
  metrics_log.MetricsLog(str(logdir), writer).resume(len(kept))
  for row in write or ():
    writer.write(row)
  if write is not None:
    writer.close()
  return writer


def _config(**overrides):
  return models.get_config("mlp", **{"epochs": 5, "mlp_hidden": (16,), **overrides})


def _assert_series(got, rows, final=None, final_tags=None, member=None):
  """`got` ({tag: [(step, value)]}) is what metrics rows give (an epoch
  resumed mid-way, `partial_steps`, no speed), `final`'s at the last epoch; of
  a `member`, its part of each row."""
  tags = ALL_TAGS
  if member is not None:
    rows = [{"epoch": r["epoch"], **(r.get("members") or r["replicas"])[member]}
            for r in rows]
    tags = tensorboard.epoch_tags()
  expected = {tag: [(r["epoch"], r[key]) for r in rows if r.get(key) is not None
                    and not (r.get("partial_steps") and key in
                             tensorboard.SPEED_TAGS)]
              for key, tag in tags.items()}
  expected = {tag: points for tag, points in expected.items() if points}
  for key, tag in (final_tags or {}).items():
    expected[tag] = [(rows[-1]["epoch"], final[key])]
  assert sorted(got) == sorted(expected)
  for tag, points in expected.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points],
                               rtol=1e-6, err_msg=tag)


def _session(mux, run):
  """(hparams of the run's session start, its session end or None)."""
  content = mux.PluginRunToTagToContent("hparams")[run]
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
  end = content.get(hparams_metadata.SESSION_END_INFO_TAG)
  return values, end and hparams_metadata.parse_session_end_info_plugin_data(end)


def _event_files(folder):
  return sorted(os.path.join(d, f) for d, _, names in os.walk(folder)
                for f in names if "tfevents" in f)


def test_each_row_reaches_the_file_at_once_with_what_it_holds(tmp_path):
  """A live TensorBoard sees each epoch soon after it is logged. The rate is
  the row's own (an older row has none); an epoch resumed mid-way timed only
  its rest: no speed; the final row's wall time is speed/wall_time_s."""
  rows = [dict(_row(1), learning_rate=None), dict(_row(2), partial_steps=3),
          _row(3)]
  final = {**_values("test", 4), "epochs_run": 3, "wall_time_s": 12.5}
  writer = _writer(tmp_path, _config(epochs=3))
  seen = lambda: [s for s, _ in tbh.scalars(tbh.multiplexer(tmp_path),
                                            ".").get(TRAIN, [])]
  for e, row in enumerate(rows, 1):
    writer.write(row)
    deadline = time.monotonic() + 10  # FLUSH_S, on a loaded machine.
    while seen() != list(range(1, e + 1)) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert seen() == list(range(1, e + 1))
  writer.write(final)
  writer.close()
  _assert_series(tbh.scalars(tbh.multiplexer(tmp_path), "."), rows, final,
                 tensorboard.final_tags(run=True))


def test_sweep_members_are_named_by_their_settings_with_their_own_rate(tmp_path):
  """Labels as a sweep gives them; each member's rows carry its rate; an older
  run folder lists them under `replicas`."""
  assert tensorboard.member_name({"mlp_hidden": (64, 32)}) == "mlp_hidden=64,32"
  labels = [{"index": i, "learning_rate": rate, "seed": 1}
            for i, rate in enumerate((1e-3, 3e-3))]
  rows = [_row(e, (1, 2)) for e in (1, 2)]
  for row in rows:
    for member, label in zip(row["members"], labels):
      member["learning_rate"] = label["learning_rate"] / row["epoch"]
  rows[1]["replicas"] = rows[1].pop("members")
  _writer(tmp_path, _config(seed=1, epochs=2), write=rows, members=labels)
  mux = tbh.multiplexer(tmp_path)
  names = ["learning_rate=0.001,seed=1", "learning_rate=0.003,seed=1"]
  assert sorted(mux.Runs()) == [".", *names]
  for i, name in enumerate(names):
    _assert_series(tbh.scalars(mux, name), rows, member=i)
    values, _ = _session(mux, name)
    assert values["learning_rate"] == pytest.approx(labels[i]["learning_rate"])
    assert "index" not in values and values["num_seeds"] == 1


@pytest.mark.parametrize("logged", [4, 2], ids=["past_the_checkpoint",
                                                "events_lost"])
def test_a_resume_continues_one_series_of_the_kept_rows(tmp_path, caplog,
                                                        logged):
  """Resumed after epoch 3, the events written through epoch 4 or only 2:
  each epoch once in every run, one event file per folder, no purge warning."""
  config, members = _config(seed=1, num_seeds=2), [{"seed": 1}, {"seed": 2}]
  first = [_row(e, (1, 2)) for e in (1, 2, 3, 4)]
  _writer(tmp_path, config, write=first[:logged], members=members)
  again = [_row(e, (1, 2), offset=0.5) for e in (4, 5)]  # Not the first 4.
  _writer(tmp_path, config, first[:3], write=again, members=members)
  rows = first[:3] + again
  with caplog.at_level("INFO", logger="tensorboard"):
    mux = tbh.multiplexer(tmp_path)
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
  _assert_series(tbh.scalars(mux, "."), rows)
  for i, seed in enumerate((1, 2)):
    _assert_series(tbh.scalars(mux, f"seed={seed}"), rows, member=i)
  assert len(_event_files(tmp_path)) == 3


@pytest.mark.parametrize("way", ["member_folder_is_a_file", "disk_full"])
def test_a_failed_write_warns_once_and_the_run_goes_on(tmp_path, monkeypatch,
                                                       capsys, way):
  """What was written before stays (and the older event files of a folder
  that cannot be opened on resume)."""
  config, members = _config(num_seeds=2, seed=0), [{"seed": 0}, {"seed": 1}]
  _writer(tmp_path, config, write=[_row(1, (0, 1))], members=members)
  older = _event_files(tmp_path)
  if way == "member_folder_is_a_file":
    shutil.rmtree(tmp_path / "seed=1")
    (tmp_path / "seed=1").write_text("a file where a member folder should go")
  writer = _writer(tmp_path, config, [_row(1, (0, 1))], members=members)
  if way == "disk_full":
    monkeypatch.setattr(tensorboardX.SummaryWriter, "add_scalar", mock.Mock(
        side_effect=OSError(28, "No space left on device")))
  for e in (2, 3):
    writer.write(_row(e, (0, 1)))
  writer.write({**_values("test", 4), "epochs_run": 3})
  writer.close()
  [warning] = [line for line in capsys.readouterr().err.splitlines()
               if "TensorBoard events" in line]
  assert "training goes on" in warning and (
      "seed=1" if way == "member_folder_is_a_file" else
      "No space left on device") in warning, warning
  monkeypatch.undo()
  got = tbh.scalars(tbh.multiplexer(tmp_path), ".")
  assert [s for s, _ in got[TRAIN]] == [1]
  if way == "member_folder_is_a_file":  # The folders it could not open.
    assert set(older) - set(_event_files(tmp_path)) == {
        n for n in older if "seed=1" in n}


def _train(prepared, workdir, model="mlp", **overrides):
  """metrics.jsonl's rows of a tiny seed-preset run (2 epochs, seeds 5, 6)."""
  tiny = dict(pw.TINY.get(model, {}), epochs=2, batch_size=32,
              val_fraction=0.1, schedule="cosine", analyses=False, seed=5,
              num_seeds=2)
  config = models.get_config(model, "seed", workdir=str(workdir),
                             **prepared.settings, **{**tiny, **overrides})
  modes.train_and_evaluate(config, str(workdir), stream=io.StringIO())
  return metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_a_run_writes_its_rows_figures_config_and_each_seeds_series(
    prepared, tmp_path):
  """Each folder's series equal metrics.jsonl, the figures are the report's
  PNGs, each Config an HParams session the end closes."""
  workdir = str(tmp_path / "seeds")
  rows = _train(prepared, workdir)
  epochs, final = rows[:-1], rows[-1]
  mux = tbh.multiplexer(workdir)
  assert sorted(mux.Runs()) == [".", "seed=5", "seed=6"]
  got = tbh.scalars(mux, ".")
  assert {"loss/val", "accuracy/val", "learning_rate"} <= set(got)
  _assert_series(got, epochs, final, tensorboard.final_tags(run=True))
  for i in range(2):
    _assert_series(tbh.scalars(mux, f"seed={5 + i}"), epochs,
                   final["members"][i], tensorboard.final_tags(), member=i)
  assert tbh.scalars(mux, "seed=5")[TRAIN] != tbh.scalars(mux, "seed=6")[TRAIN]

  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  figures = [f for f in report.FILES if f.endswith(".png")]
  assert figures and sorted(acc.Tags()["images"]) == sorted(
      f"figures/{f[:-4]}" for f in figures)
  for name in figures:  # Each the file's bytes.
    [image] = acc.Images(f"figures/{name[:-4]}")
    with open(os.path.join(workdir, name), "rb") as f:
      assert (image.step, image.encoded_image_string) == (2, f.read()), name

  for run, seed, num_seeds in ((".", 5, 2), ("seed=5", 5, 1), ("seed=6", 6, 1)):
    values, end = _session(mux, run)
    assert [values[k] for k in ("seed", "num_seeds", "model", "preset",
                                "mlp_hidden")] == [seed, num_seeds, "mlp",
                                                   "seed", "16"]
    assert values["augment"] is False
    assert not set(tensorboard.NOT_HPARAMS) & set(values)
    assert end.status == 1  # STATUS_SUCCESS: the run finished.


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
@pytest.mark.parametrize("way_out", ["report fails", "diverged"])
def test_the_event_files_close_on_every_way_out(prepared, tmp_path,
                                                monkeypatch, way_out):
  """A diverged run's session stays open (TensorBoard shows it unfinished)."""
  workdir = str(tmp_path / "run")
  if way_out == "report fails":
    monkeypatch.setattr(report, "write", mock.Mock(
        side_effect=RuntimeError("the report failed")))
    with pytest.raises(RuntimeError, match="the report failed"):
      _train(prepared, workdir)
  else:  # The loss overflows within a few epochs (see test_divergence.py).
    with pytest.raises(Diverged):
      _train(prepared, workdir, model="linear", batch_size=16,
             optimizer="adam", schedule="warmup_cosine", learning_rate=1e38,
             warmup_epochs=400, epochs=800, label_smoothing=0.1, num_seeds=1)
  fds = "/proc/self/fd"
  assert not {os.path.realpath(e) for e in _event_files(workdir)} & {
      os.path.realpath(os.path.join(fds, fd)) for fd in os.listdir(fds)}
  rows = metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  # The epochs before the divergence (whose row is the note, no event).
  epochs = [r for r in rows if r.get("train_loss") is not None]
  mux = tbh.multiplexer(workdir)
  _assert_series(tbh.scalars(mux, "."), epochs, rows[-1], (
      tensorboard.final_tags(run=True) if way_out == "report fails" else None))
  assert (_session(mux, ".")[1] is None) == (way_out == "diverged")

"""TensorBoard events, read back with TensorBoard's own loaders.

The rows and tags derive from metrics.py's registry: a new metric needs no
edit here."""

import os
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorboardX
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import tensorboard_helpers as tbh
from mnist_jax import models
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import tensorboard
from mnist_jax.training import metrics

STEPS = 10  # Steps per epoch of the hand-made rows.
ALL_TAGS = {**tensorboard.epoch_tags(), **tensorboard.SPEED_TAGS}


def _values(split, epoch, seed=0, offset=0.0):
  """A distinct value for each registered metric of `split`."""
  return {key: 0.1 * i + 1.0 / epoch + 0.01 * seed + offset
          for i, key in enumerate(metrics.keys(split))}


def _row(epoch, seeds=(), offset=0.0):
  """An epoch row as train_and_evaluate writes it, mean over `seeds` if any."""
  def own(seed):
    return {**_values("train", epoch, seed, offset),
            **_values("val", epoch, seed, offset + 0.05)}
  row = {"epoch": epoch, "step": epoch * STEPS}
  if seeds:
    per = [{"seed": s, **own(s)} for s in seeds]
    row.update({k: float(np.mean([p[k] for p in per])) for k in own(0)})
    row.update({f"{k}_std": 0.01 for k in own(0)})
    row["members"] = per
  else:
    row.update(own(0))
  row.update(epoch_time_s=0.2 + epoch, examples_per_s=6000.0 / epoch,
             elapsed_s=epoch + 1.0)
  return row


def _final(epochs, seeds=()):
  row = {**_values("test", 4), "test_examples": 200, "epochs_run": epochs,
         "steps": epochs * STEPS}
  if seeds:
    row["members"] = [{"seed": s, **_values("test", 4, s)} for s in seeds]
  return row


def _final_series(final, step):
  return {tag: [(step, final[key])] for key, tag in tensorboard.final_tags().items()}


def _labels(seeds):
  return [{"seed": s} for s in seeds]


def _writer(logdir, config, rows=(), resume_after=0, **kwargs):
  """A Writer as a run opens it: metrics.jsonl holds `rows`, the run resumes
  after `resume_after` epochs."""
  os.makedirs(logdir, exist_ok=True)
  for row in rows:
    metrics_log.MetricsLog(str(logdir)).write(row)
  writer = tensorboard.Writer(str(logdir), config, **kwargs)
  metrics_log.MetricsLog(str(logdir), writer).resume(resume_after)
  return writer


def _session_hparams(mux, run):
  content = mux.PluginRunToTagToContent("hparams")[run]
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _expect(rows, tags):
  """{tag: [(epoch, value)]} that `rows` should give."""
  out = {}
  for key, tag in tags.items():
    points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    if points:
      out[tag] = points
  return out


def _assert_series(got, expected):
  assert sorted(got) == sorted(expected)
  for tag, points in expected.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points],
                               rtol=1e-6, err_msg=tag)


def _config(**overrides):
  return models.get_config("mlp", **{"epochs": 5, "mlp_hidden": (16,), **overrides})


def _png(path, size, color, mode="RGB"):
  Image.new(mode, size, color).save(path)
  return str(path)


def _event_files(folder):
  return [f for f in os.listdir(folder) if f.startswith("events.out.tfevents.")]


def test_epoch_rows_final_metrics_and_figures_read_back(tmp_path):
  config = _config(schedule="cosine", epochs=3)
  rows = [dict(_row(e), learning_rate=1e-3 / e) for e in (1, 2, 3)]
  figures = [_png(tmp_path / "learning_curves.png", (40, 30), "red"),
             _png(tmp_path / "mistakes.png", (20, 50), 128, "L")]
  writer = _writer(tmp_path, config)
  for row in rows:
    writer.write(row)
  final = _final(3)
  writer.write(final)
  writer.figures()  # Those of the report's PNG files that exist.
  writer.close()

  mux = tbh.multiplexer(tmp_path)
  assert list(mux.Runs()) == ["."]
  _assert_series(tbh.scalars(mux, "."),
                 {**_expect(rows, ALL_TAGS), **_final_series(final, 3)})

  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()["images"]) == ["figures/learning_curves", "figures/mistakes"]
  for path in figures:
    [image] = acc.Images(f"figures/{os.path.basename(path)[:-4]}")
    assert image.step == 3
    tbh.assert_image_is_file(image, path)
  assert "tensorflow" not in sys.modules and "torch" not in sys.modules


def test_a_partial_epochs_speed_is_not_written_and_the_wall_time_is(tmp_path):
  """The first epoch after a resume mid-epoch timed only its rest: its
  speed/epoch_time_s read as a whole epoch's. The final row's wall time
  (the README's) is speed/wall_time_s."""
  rows = [_row(1), dict(_row(2), partial_steps=3), _row(3)]
  writer = _writer(tmp_path, _config(epochs=3))
  for row in rows + [dict(_final(3), wall_time_s=12.5)]:
    writer.write(row)
  writer.close()
  got = tbh.scalars(tbh.multiplexer(tmp_path), ".")
  for tag in tensorboard.SPEED_TAGS.values():
    assert [s for s, _ in got[tag]] == [1, 3], tag
  assert got[tensorboard.final_tags(run=True)["wall_time_s"]] == [(3, 12.5)]
  train = tensorboard.epoch_tags()[metrics.keys("train")[0]]
  assert [s for s, _ in got[train]] == [1, 2, 3]


def test_the_rate_is_the_rows_own_and_older_rows_without_one_read(tmp_path):
  """The learning rate is the one the run recorded; nothing recomputes it."""
  config = _config(schedule="warmup_cosine", warmup_epochs=1.0, epochs=4)
  writer = _writer(tmp_path, config)
  writer.write(_row(1))  # An older row, without a rate.
  for e in (2, 3):
    writer.write(dict(_row(e), learning_rate=1e-3 * e))
  writer.close()
  got = tbh.scalars(tbh.multiplexer(tmp_path), ".")
  assert got["learning_rate"] == [(2, pytest.approx(2e-3)),
                                  (3, pytest.approx(3e-3))]
  assert [s for s, _ in got[tensorboard.epoch_tags()[metrics.keys("train")[0]]]
          ] == [1, 2, 3]


def test_every_metric_of_the_schema_has_its_tag_in_its_splits_only():
  """A metric declared in metrics.py is a TensorBoard series of its splits."""
  for m in metrics.METRICS:
    for split in metrics.SPLITS:
      tags = tensorboard.final_tags() if split == "test" else tensorboard.epoch_tags()
      key = f"{split}_{m.name}"
      assert tags.get(key) == (f"{m.tag}/{split}" if split in m.splits
                               else None), key
  assert len(tensorboard.epoch_tags()) + len(tensorboard.final_tags()) == 1 + sum(
      len(m.splits) for m in metrics.METRICS)  # And the learning rate.


def test_config_is_an_hparams_session_closed_by_final(tmp_path):
  config = _config(learning_rate=3e-3, workdir=str(tmp_path))
  unfinished = _writer(tmp_path / "stopped", config)
  unfinished.write(_row(1))
  unfinished.close()  # Preempted or diverged: the session stays open.
  writer = _writer(tmp_path / "done", config)
  writer.write(_row(1))
  writer.write(_final(1))
  writer.close()
  mux = tbh.multiplexer(tmp_path)
  content = mux.PluginRunToTagToContent("hparams")
  assert hparams_metadata.SESSION_END_INFO_TAG not in content["stopped"]
  end = hparams_metadata.parse_session_end_info_plugin_data(
      content["done"][hparams_metadata.SESSION_END_INFO_TAG])
  assert end.status == 1  # STATUS_SUCCESS
  for run in ("stopped", "done"):
    values = _session_hparams(mux, run)
    assert values["model"] == "mlp"
    assert values["learning_rate"] == pytest.approx(3e-3)
    assert values["mlp_hidden"] == "16" and values["num_seeds"] == 1
    assert values["augment"] is False
    assert "workdir" not in values and "data_dir" not in values


def test_events_reach_the_file_while_the_run_goes_on(tmp_path):
  """A live TensorBoard sees each epoch soon after it is logged."""
  writer = _writer(tmp_path, _config())
  tag = tensorboard.epoch_tags()[metrics.keys("train")[0]]
  for e in (1, 2):
    writer.write(_row(e))
    deadline = time.monotonic() + 10  # FLUSH_S, on a loaded machine.
    while True:
      seen = tbh.scalars(tbh.multiplexer(tmp_path), ".").get(tag, [])
      if [s for s, _ in seen] == list(range(1, e + 1)) or (
          time.monotonic() > deadline):
        break
      time.sleep(0.05)
    assert [s for s, _ in seen] == list(range(1, e + 1))
  writer.close()


def test_each_member_is_a_run_with_the_same_tags(tmp_path):
  seeds = (4, 5, 6)
  config = _config(seed=4, num_seeds=3)
  rows = [_row(e, seeds) for e in (1, 2)]
  writer = _writer(tmp_path, config, members=_labels(seeds))
  for row in rows:
    writer.write(row)
  final = _final(2, seeds)
  writer.write(final)
  writer.close()

  mux = tbh.multiplexer(tmp_path)
  assert sorted(mux.Runs()) == [".", "seed=4", "seed=5", "seed=6"]
  _assert_series(tbh.scalars(mux, "."),
                 {**_expect(rows, ALL_TAGS), **_final_series(final, 2)})
  for i, seed in enumerate(seeds):
    run = f"seed={seed}"
    own = [{**r["members"][i], "epoch": r["epoch"]} for r in rows]
    _assert_series(tbh.scalars(mux, run),
                   {**_expect(own, tensorboard.epoch_tags()),
                    **_final_series(final["members"][i], 2)})
    values = _session_hparams(mux, run)
    assert (values["seed"], values["num_seeds"]) == (seed, 1)
  assert _session_hparams(mux, ".")["num_seeds"] == 3


def test_sweep_members_are_named_by_their_settings():
  assert (tensorboard.member_name({"learning_rate": 1e-3, "seed": 3})
          == "learning_rate=0.001,seed=3")
  assert tensorboard.member_name({"mlp_hidden": (64, 32)}) == "mlp_hidden=64,32"


def test_sweep_members_take_their_own_learning_rate_and_older_rows_read(tmp_path):
  """Labels as a sweep gives them (index, swept values, seed); the rows of a
  sweep carry each member's rate; a run folder from before the rename to
  `members` lists them under `replicas`."""
  config = _config(seed=1, num_seeds=1, epochs=2)
  labels = [{"index": 0, "learning_rate": 1e-3, "seed": 1},
            {"index": 1, "learning_rate": 3e-3, "seed": 1}]
  rows = [_row(e, (1, 2)) for e in (1, 2)]
  for row in rows:
    for member, label in zip(row["members"], labels):
      member["learning_rate"] = label["learning_rate"] / row["epoch"]
  rows[1]["replicas"] = rows[1].pop("members")
  writer = _writer(tmp_path, config, members=labels)
  for row in rows:
    writer.write(row)
  writer.close()
  mux = tbh.multiplexer(tmp_path)
  assert sorted(mux.Runs()) == [".", "learning_rate=0.001,seed=1",
                                "learning_rate=0.003,seed=1"]
  got = tbh.scalars(mux, "learning_rate=0.003,seed=1")
  assert got["learning_rate"] == [(1, pytest.approx(3e-3)), (2, pytest.approx(1.5e-3))]
  assert all([s for s, _ in got[t]] == [1, 2] for t in tensorboard.epoch_tags().values())
  values = _session_hparams(mux, "learning_rate=0.003,seed=1")
  assert values["learning_rate"] == pytest.approx(3e-3) and "index" not in values


def _load_both(logdir):
  """The scalars of one run as the plain and the plugin loaders give them."""
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  plain = {t: [(e.step, e.value) for e in acc.Scalars(t)]
           for t in acc.Tags()["scalars"]}
  return plain, tbh.scalars(tbh.multiplexer(logdir), ".")


def test_resume_continues_one_series_that_matches_the_kept_rows(tmp_path,
                                                                caplog):
  """Killed in epoch 4 with epoch 4 logged past the checkpoint, resumed at 3:
  each epoch once, in one event file, read back without TensorBoard's purge
  warning."""
  config = _config(epochs=5)
  first = [dict(_row(e), learning_rate=1e-3 / e) for e in (1, 2, 3, 4)]
  writer = _writer(tmp_path, config)
  for row in first:
    metrics_log.MetricsLog(str(tmp_path)).write(row)
    writer.write(row)
  writer.close()  # A kill leaves the same, but for the last FLUSH_S.

  kept = first[:3]  # metrics.jsonl after its resume(3).
  metrics_log.MetricsLog(str(tmp_path)).resume(3)
  again = [dict(_row(e, offset=0.5), learning_rate=2e-3 / e)  # Not the first 4.
           for e in (4, 5)]
  writer = _writer(tmp_path, config, resume_after=3)
  for row in again:
    writer.write(row)
  final = _final(5)
  writer.write(final)
  writer.close()

  assert len(_event_files(tmp_path)) == 1
  expected = {**_expect(kept + again, ALL_TAGS), **_final_series(final, 5)}
  with caplog.at_level("INFO", logger="tensorboard"):
    both = _load_both(tmp_path)
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
  for scalars in both:
    _assert_series(scalars, expected)
    assert all([s for s, _ in scalars[t]] == [1, 2, 3, 4, 5]
               for t in ALL_TAGS.values())


def test_resume_restores_rows_the_events_lost_from_metrics_jsonl(tmp_path):
  """Events that stopped after epoch 2 (a failed write, or a kill within
  FLUSH_S): the kept rows fill in epoch 3 on resume, in each member's run."""
  config = _config(epochs=4, seed=1, num_seeds=2)
  rows = [_row(e, (1, 2)) for e in (1, 2, 3, 4)]
  writer = _writer(tmp_path, config, members=_labels((1, 2)))
  for row in rows[:2]:
    writer.write(row)
  writer.close()
  writer = _writer(tmp_path, config, rows[:3], resume_after=3,
                   members=_labels((1, 2)))
  writer.write(rows[3])
  writer.close()
  mux = tbh.multiplexer(tmp_path)
  for run in (".", "seed=1", "seed=2"):
    assert len(_event_files(tmp_path / run)) == 1
    own = rows if run == "." else [
        {**r["members"][int(run[-1]) - 1], "epoch": r["epoch"]} for r in rows]
    _assert_series(tbh.scalars(mux, run),
                   _expect(own, ALL_TAGS if run == "." else
                           tensorboard.epoch_tags()))


def _warnings(capsys):
  return [line for line in capsys.readouterr().err.splitlines()
          if "TensorBoard events" in line]


def test_a_failed_write_warns_once_and_the_run_goes_on(tmp_path, monkeypatch,
                                                       capsys):
  (tmp_path / "seed=1").write_text("a file where a member folder should go")
  writer = _writer(tmp_path, _config(num_seeds=2, seed=0),
                   members=_labels((0, 1)))
  for e in (1, 2):
    writer.write(_row(e, (0, 1)))
  writer.write(_final(2, (0, 1)))
  writer.close()
  [warning] = _warnings(capsys)
  assert "seed=1" in warning and "training goes on" in warning

  writer = _writer(tmp_path / "ok", _config())
  writer.write(_row(1))
  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(tensorboardX.SummaryWriter, "add_scalar", broken)
  for e in (2, 3):
    writer.write(_row(e))
  writer.write(_final(3))
  writer.close()
  [warning] = _warnings(capsys)
  assert "No space left on device" in warning
  monkeypatch.undo()
  tag = tensorboard.epoch_tags()[metrics.keys("train")[0]]
  got = tbh.scalars(tbh.multiplexer(tmp_path / "ok"), ".")[tag]
  assert [s for s, _ in got] == [1]  # What was written before stays.

"""TensorBoard events, read back with TensorBoard's own loaders."""

import os
import sys

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import tensorboard_helpers as tbh
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import tensorboard
from mnist_jax.training import metrics

STEPS = 10  # Steps per epoch of the hand-made rows.


def _row(epoch, seeds=(), offset=0.0):
  """An epoch row as train_and_evaluate writes it, mean over `seeds` if any."""
  def metrics(seed):
    base = 1.0 / epoch + 0.01 * seed + offset
    return {"train_loss": base, "train_accuracy": 0.5 + 0.01 * epoch - 0.001 * seed,
            "val_loss": base + 0.1, "val_accuracy": 0.45 + 0.01 * epoch,
            "val_ece": 0.05 / epoch + 0.001 * seed}
  row = {"epoch": epoch, "step": epoch * STEPS}
  if seeds:
    per = [{"seed": s, **metrics(s)} for s in seeds]
    row.update({k: float(np.mean([p[k] for p in per])) for k in per[0] if k != "seed"})
    row.update({f"{k}_std": 0.01 for k in per[0] if k != "seed"})
    row["members"] = per
  else:
    row.update(metrics(0))
  row.update(epoch_time_s=0.2 + epoch, examples_per_s=6000.0 / epoch,
             elapsed_s=epoch + 1.0)
  return row


def _final(epochs, seeds=()):
  row = {"test_loss": 0.25, "test_accuracy": 0.93, "test_examples": 200,
         "epochs_run": epochs, "steps": epochs * STEPS}
  if seeds:
    row["members"] = [{"seed": s, "test_loss": 0.2 + 0.01 * s,
                        "test_accuracy": 0.9 + 0.001 * s} for s in seeds]
  return row


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


def _png(path, size, color):
  Image.new("RGB", size, color).save(path)
  return str(path)


def test_epoch_rows_final_metrics_and_figures_read_back(tmp_path):
  config = _config(schedule="cosine", epochs=3)
  rows = [dict(_row(e), learning_rate=1e-3 / e) for e in (1, 2, 3)]
  figures = [_png(tmp_path / "learning_curves.png", (40, 30), "red"),
             _png(tmp_path / "mistakes.png", (20, 50), "blue")]
  writer = tensorboard.Writer(str(tmp_path), config)
  for row in rows:
    writer.epoch(row)
  writer.final(_final(3), figures + [str(tmp_path / "not_drawn.png")])
  writer.close()

  mux = tbh.multiplexer(tmp_path)
  assert list(mux.Runs()) == ["."]
  expected = _expect(rows, {**tensorboard.EPOCH_TAGS,
                            **tensorboard.SPEED_TAGS})
  expected.update({"loss/test": [(3, 0.25)], "accuracy/test": [(3, 0.93)]})
  _assert_series(tbh.scalars(mux, "."), expected)

  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()["images"]) == ["figures/learning_curves", "figures/mistakes"]
  for path, (width, height) in zip(figures, [(40, 30), (20, 50)]):
    name = os.path.splitext(os.path.basename(path))[0]
    [image] = acc.Images(f"figures/{name}")
    assert (image.step, image.width, image.height) == (3, width, height)
    with open(path, "rb") as f:
      assert image.encoded_image_string == f.read()
  assert "tensorflow" not in sys.modules


def test_the_rate_is_the_rows_own_and_older_rows_without_one_read(tmp_path):
  """The learning rate is the one the run recorded; nothing recomputes it."""
  config = _config(schedule="warmup_cosine", warmup_epochs=1.0, epochs=4)
  writer = tensorboard.Writer(str(tmp_path), config)
  writer.epoch(_row(1))  # An older row, without a rate.
  for e in (2, 3):
    writer.epoch(dict(_row(e), learning_rate=1e-3 * e))
  writer.close()
  got = tbh.scalars(tbh.multiplexer(tmp_path), ".")
  assert got["learning_rate"] == [(2, pytest.approx(2e-3)),
                                  (3, pytest.approx(3e-3))]
  assert [s for s, _ in got["loss/train"]] == [1, 2, 3]


def test_every_metric_of_the_schema_has_its_tag():
  """A metric declared in metrics.py is a TensorBoard series of its splits."""
  for m in metrics.METRICS:
    for split in m.splits:
      tags = tensorboard.FINAL_TAGS if split == "test" else tensorboard.EPOCH_TAGS
      assert tags[f"{split}_{m.name}"] == f"{m.tag}/{split}"
  assert tensorboard.EPOCH_TAGS["val_ece"] == "calibration_error/val"
  assert tensorboard.FINAL_TAGS["test_ece"] == "calibration_error/test"
  assert "train_ece" not in tensorboard.EPOCH_TAGS


def test_config_is_an_hparams_session_closed_by_final(tmp_path):
  config = _config(learning_rate=3e-3, workdir=str(tmp_path))
  unfinished = tensorboard.Writer(str(tmp_path / "stopped"), config)
  unfinished.epoch(_row(1))
  unfinished.close()  # Preempted or diverged: the session stays open.
  writer = tensorboard.Writer(str(tmp_path / "done"), config)
  writer.epoch(_row(1))
  writer.final(_final(1))
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
  """A live TensorBoard sees each epoch as soon as it is logged."""
  writer = tensorboard.Writer(str(tmp_path), _config())
  for e in (1, 2):
    writer.epoch(_row(e))
    seen = tbh.scalars(tbh.multiplexer(tmp_path), ".")
    assert [s for s, _ in seen["loss/train"]] == list(range(1, e + 1))
  writer.close()


def test_each_member_is_a_run_with_the_same_tags(tmp_path):
  seeds = (4, 5, 6)
  config = _config(seed=4, num_seeds=3)
  rows = [_row(e, seeds) for e in (1, 2)]
  writer = tensorboard.Writer(str(tmp_path), config)
  for row in rows:
    writer.epoch(row)
  writer.final(_final(2, seeds))
  writer.close()

  mux = tbh.multiplexer(tmp_path)
  assert sorted(mux.Runs()) == [".", "seed=4", "seed=5", "seed=6"]
  mean = tbh.scalars(mux, ".")
  for key, tag in tensorboard.EPOCH_TAGS.items():
    if key != "learning_rate":
      assert [v for _, v in mean[tag]] == pytest.approx([r[key] for r in rows])
  for i, seed in enumerate(seeds):
    run = f"seed={seed}"
    own = [r["members"][i] for r in rows]
    expected = _expect([{**p, "epoch": r["epoch"]} for p, r in zip(own, rows)],
                       tensorboard.EPOCH_TAGS)
    expected["loss/test"] = [(2, 0.2 + 0.01 * seed)]
    expected["accuracy/test"] = [(2, 0.9 + 0.001 * seed)]
    _assert_series(tbh.scalars(mux, run), expected)
    values = _session_hparams(mux, run)
    assert (values["seed"], values["num_seeds"]) == (seed, 1)
  assert _session_hparams(mux, ".")["num_seeds"] == 3
  assert len({tuple(v for _, v in tbh.scalars(mux, f"seed={s}")["loss/train"])
              for s in seeds}) == 3


def test_sweep_members_are_named_by_their_settings():
  assert (tensorboard.member_name({"learning_rate": 1e-3, "seed": 3})
          == "learning_rate=0.001,seed=3")
  assert tensorboard.member_name({"mlp_hidden": (64, 32)}) == "mlp_hidden=64,32"
  config = _config(num_seeds=2, seed=7)
  assert tensorboard.members_of(config) == [{"seed": 7}, {"seed": 8}]
  assert tensorboard.members_of(_config()) == []


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
  writer = tensorboard.Writer(str(tmp_path), config, members=labels)
  for row in rows:
    writer.epoch(row)
  writer.close()
  mux = tbh.multiplexer(tmp_path)
  assert sorted(mux.Runs()) == [".", "learning_rate=0.001,seed=1",
                                "learning_rate=0.003,seed=1"]
  got = tbh.scalars(mux, "learning_rate=0.003,seed=1")
  assert got["learning_rate"] == [(1, pytest.approx(3e-3)), (2, pytest.approx(1.5e-3))]
  assert [s for s, _ in got["loss/train"]] == [1, 2]
  values = _session_hparams(mux, "learning_rate=0.003,seed=1")
  assert values["learning_rate"] == pytest.approx(3e-3) and "index" not in values


def test_a_member_folder_in_the_way_is_refused_before_writing(tmp_path):
  members = [{"seed": 0}, {"seed": 1}]
  tensorboard.check_folders(str(tmp_path), members)  # Nothing there.
  (tmp_path / "seed=0").mkdir()
  tensorboard.check_folders(str(tmp_path), members)  # A folder: fine.
  (tmp_path / "seed=1").write_text("not a folder")
  with pytest.raises(UserError, match=r"seed=1 is a file where TensorBoard "
                     r"events of a member go; .* --notensorboard"):
    tensorboard.check_folders(str(tmp_path), members)
  assert sorted(os.listdir(tmp_path)) == ["seed=0", "seed=1"]
  assert os.listdir(tmp_path / "seed=0") == []


def _load_both(logdir):
  """The scalars of one run as the plain and the plugin loaders give them."""
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  plain = {t: [(e.step, e.value) for e in acc.Scalars(t)]
           for t in acc.Tags()["scalars"]}
  return plain, tbh.scalars(tbh.multiplexer(logdir), ".")


def test_resume_continues_one_series_that_matches_the_kept_rows(tmp_path,
                                                                caplog):
  """Killed in epoch 4 with epoch 4 written past the checkpoint, resumed at 3:
  one event file, read back without TensorBoard's purge warning."""
  config = _config(epochs=5)
  first = [dict(_row(e), learning_rate=1e-3 / e) for e in (1, 2, 3, 4)]
  writer = tensorboard.Writer(str(tmp_path), config)
  for row in first:
    writer.epoch(row)
  writer.close()  # A kill leaves the same: each epoch is flushed as logged.

  kept = first[:3]  # metrics.jsonl after truncate_after(3).
  again = [dict(_row(e, offset=0.5), learning_rate=2e-3 / e)  # Not the first 4.
           for e in (4, 5)]
  writer = tensorboard.Writer(str(tmp_path), config, history=kept)
  for row in again:
    writer.epoch(row)
  writer.final(_final(5))
  writer.close()

  assert len([f for f in os.listdir(tmp_path) if "tfevents" in f]) == 1
  expected = _expect(kept + again, {**tensorboard.EPOCH_TAGS,
                                    **tensorboard.SPEED_TAGS})
  expected.update({"loss/test": [(5, 0.25)], "accuracy/test": [(5, 0.93)]})
  with caplog.at_level("INFO", logger="tensorboard"):
    both = _load_both(tmp_path)
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
  for scalars in both:
    _assert_series(scalars, expected)
    assert all([s for s, _ in scalars[t]] == [1, 2, 3, 4, 5]
               for t in expected if "test" not in t)


def test_resume_restores_rows_a_kill_kept_from_the_events(tmp_path):
  """Events that stopped after epoch 2 (a failed write): the kept rows fill
  in epoch 3 on resume."""
  config = _config(epochs=4, seed=1, num_seeds=2)
  rows = [_row(e, (1, 2)) for e in (1, 2, 3, 4)]
  writer = tensorboard.Writer(str(tmp_path), config)
  for row in rows[:2]:
    writer.epoch(row)
  writer.close()
  writer = tensorboard.Writer(str(tmp_path), config, history=rows[:3])
  writer.epoch(rows[3])
  writer.close()
  mux = tbh.multiplexer(tmp_path)
  for run, key in ((".", "train_loss"), ("seed=2", "train_loss")):
    got = tbh.scalars(mux, run)["loss/train"]
    assert [s for s, _ in got] == [1, 2, 3, 4]
    values = [r[key] if run == "." else r["members"][1][key] for r in rows]
    np.testing.assert_allclose([v for _, v in got], values, rtol=1e-6)


def test_disabled_writer_writes_nothing(tmp_path):
  writer = tensorboard.Writer(str(tmp_path / "run"), _config(), enabled=False)
  writer.epoch(_row(1))
  writer.final(_final(1), [_png(tmp_path / "x.png", (4, 4), "red")])
  writer.close()
  assert not os.path.exists(tmp_path / "run")


def test_a_failed_write_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
  (tmp_path / "seed=1").write_text("a file where a member folder should go")
  warnings = []
  writer = tensorboard.Writer(str(tmp_path), _config(num_seeds=2, seed=0),
                              warn=warnings.append)
  for e in (1, 2):
    writer.epoch(_row(e, (0, 1)))
  writer.final(_final(2, (0, 1)))
  writer.close()
  assert len(warnings) == 1 and "training goes on" in warnings[0]

  warnings.clear()
  writer = tensorboard.Writer(str(tmp_path / "ok"), _config(),
                              warn=warnings.append)
  writer.epoch(_row(1))
  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(tensorboard.EventFile, "flush", broken)
  for e in (2, 3):
    writer.epoch(_row(e))
  writer.final(_final(3))
  writer.close()
  assert len(warnings) == 1 and "No space left on device" in warnings[0]
  monkeypatch.undo()
  got = tbh.scalars(tbh.multiplexer(tmp_path / "ok"), ".")["loss/train"]
  assert [s for s, _ in got][:1] == [1]  # What was written before stays.

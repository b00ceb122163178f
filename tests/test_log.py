"""Every row of a run reaches every writer; a resumed run forgets later epochs."""

import io
import json
import os

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from mnist_jax import models
from mnist_jax.rundir import log as log_lib
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import tensorboard


def _row(epoch):
  return {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch,
          "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
          "epoch_time_s": 1.0, "examples_per_s": 100.0, "elapsed_s": epoch}


class _Recorder:
  def __init__(self):
    self.calls = []

  def resume(self, epoch, keep_final=False):
    self.calls.append(("resume", epoch))

  def epoch(self, row):
    self.calls.append(("epoch", row["epoch"]))

  def diverged(self, row):
    self.calls.append(("diverged", row["step"]))

  def final(self, row):
    self.calls.append(("final", row["test_accuracy"]))

  def figures(self):
    self.calls.append(("figures",))

  def close(self):
    self.calls.append(("close",))


def test_rows_go_to_every_writer_and_epochs_to_the_console(tmp_path):
  console = io.StringIO()
  recorder = _Recorder()
  log = log_lib.RunLog(log_lib.Progress(2, stream=console), [recorder])
  log.open(str(tmp_path), resume_after=0)
  log.epoch(_row(1))
  log.diverged({"epoch": 2, "step": 15, "diverged": True, "message": "m"})
  log.final({"test_accuracy": 0.9})
  log.figures()
  log.close()
  assert recorder.calls == [("resume", 0), ("epoch", 1), ("diverged", 15),
                            ("final", 0.9), ("figures",), ("close",)]
  assert "epoch 1/2 loss 1.0000" in console.getvalue()
  rows = metrics_log.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r.get("epoch") for r in rows] == [1, 2, None]


def test_a_resumed_run_drops_later_epochs_and_the_final_row(tmp_path):
  path = os.path.join(tmp_path, "metrics.jsonl")
  with open(path, "w") as f:
    for row in (_row(1), _row(2), _row(3), {"test_accuracy": 0.9}):
      f.write(json.dumps(row) + "\n")
  log = log_lib.RunLog(log_lib.Progress(3, stream=io.StringIO()))
  log.open(str(tmp_path), resume_after=2)
  assert [r["epoch"] for r in metrics_log.read_metrics(path)] == [1, 2]


def test_a_process_that_writes_no_files_has_no_writer(tmp_path):
  log = log_lib.RunLog(log_lib.Progress(1, stream=io.StringIO()))
  log.open(None)
  log.epoch(_row(1))
  log.final({"test_accuracy": 0.9})
  assert log.writers == [] and os.listdir(tmp_path) == []


def _write_rows(workdir, rows):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _events(workdir):
  acc = event_accumulator.EventAccumulator(str(workdir))
  acc.Reload()
  return acc


def test_tensorboard_continues_the_kept_rows_and_takes_the_figures(tmp_path):
  config = models.get_config("mlp", epochs=3)
  _write_rows(tmp_path, [_row(1), _row(2), _row(3), {"test_accuracy": 0.5}])
  Image.new("L", (8, 6)).save(tmp_path / "mistakes.png")
  log = log_lib.RunLog(log_lib.Progress(3, stream=io.StringIO()))
  log.open(str(tmp_path), resume_after=2, config=config, steps_per_epoch=10)
  assert [type(w) for w in log.writers] == [metrics_log.MetricsLog,
                                            tensorboard.Writer]
  again = dict(_row(3), train_loss=0.25)
  log.epoch(again)
  log.final({"test_accuracy": 0.75, "test_loss": 0.5, "epochs_run": 3})
  log.figures()
  log.close()
  log.close()
  acc = _events(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars("loss/train")] == [
      (1, 1.0), (2, 0.5), (3, 0.25)]
  assert [(e.step, e.value) for e in acc.Scalars("accuracy/test")] == [(3, 0.75)]
  [image] = acc.Images("figures/mistakes")
  assert (image.step, image.width, image.height) == (3, 8, 6)


def test_notensorboard_opens_metrics_jsonl_only(tmp_path):
  config = models.get_config("mlp", tensorboard=False)
  log = log_lib.RunLog(log_lib.Progress(1, stream=io.StringIO()))
  log.open(str(tmp_path), config=config)
  log.epoch(_row(1))
  log.close()
  assert [type(w) for w in log.writers] == [metrics_log.MetricsLog]
  assert os.listdir(tmp_path) == ["metrics.jsonl"]

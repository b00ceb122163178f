"""One writer of a run's rows: metrics.jsonl, then TensorBoard; a resumed run
forgets later epochs (what TensorBoard then shows: test_tensorboard.py)."""

import json
import os

from mnist_jax.rundir import metrics_log


def _row(epoch):
  return {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch,
          "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
          "epoch_time_s": 1.0, "examples_per_s": 100.0, "elapsed_s": epoch}


class _Recorder:
  def __init__(self):
    self.calls = []

  def resume(self, rows):
    self.calls.append(("resume", [r.get("epoch") for r in rows]))

  def write(self, row):
    self.calls.append(("write", row.get("epoch", row.get("test_accuracy"))))


def test_rows_go_to_metrics_jsonl_then_to_the_events_and_resume_drops(
    tmp_path):
  """Each row is written to metrics.jsonl, then to the events; a resumed run
  drops later epochs and the final row (a run being completed keeps it),
  and a damaged line (a write a kill cut short) is skipped and dropped."""
  path = os.path.join(tmp_path, "metrics.jsonl")
  events = _Recorder()
  log = metrics_log.MetricsLog(str(tmp_path), events)
  log.resume(0)
  for row in (_row(1), _row(2), _row(3), {"test_accuracy": 0.9}):
    log.write(row)
  assert events.calls == [("resume", []), ("write", 1), ("write", 2),
                          ("write", 3), ("write", 0.9)]
  rows = metrics_log.read_metrics(path)
  assert [r.get("epoch") for r in rows] == [1, 2, 3, None]
  metrics_log.MetricsLog(str(tmp_path)).resume(3, keep_final=True)
  assert metrics_log.read_metrics(path) == rows
  with open(path, "a") as f:
    f.write('{garbage\n[1]\n{"epoch": 4, "tr')
  events = _Recorder()
  log = metrics_log.MetricsLog(str(tmp_path), events)
  assert [r.get("epoch") for r in log.read()] == [1, 2, 3, None]
  log.resume(2)
  assert events.calls == [("resume", [1, 2])]
  with open(path) as f:
    assert [json.loads(line)["epoch"] for line in f] == [1, 2]

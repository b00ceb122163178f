"""What TensorBoard events cost a run: the writer's calls, timed on their own.

  python experiments/tensorboard_cost.py --run=runs/linear-seed
  python experiments/tensorboard_cost.py --run=runs/linear-seed --members=4

Replays a finished run folder's metrics.jsonl through tensorboard.Writer
into a temporary folder: opening it (`resume()`), each epoch's `write(row)`
(median of --repeats calls, at epochs past the run's own), the final row's and
`figures()` with the folder's PNG figures (copied first), then `close()`,
which waits for tensorboardX's thread to write what the calls queued. With
--members=N each row gets N per-member dicts, as a --num_seeds=N row has.
Compare the epoch median with the run's own `epoch_time_s`. Prints one JSON
line.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from mnist_jax.results import report
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.rundir import tensorboard


def _labels(config, n):
  """The member labels of an n-member run ({"seed": s}), or None for one."""
  return [{"seed": config.seed + i} for i in range(n)] if n > 1 else None


def _with_members(row, config, n):
  """`row` with the `members` list of an n-member run (each member = the mean)."""
  if n <= 1:
    return row
  keys = [k for k in row if k.startswith(("train_", "val_", "test_")) and
          isinstance(row[k], float)] + ["learning_rate"]
  return {**row, "members": [{**label, **{k: row.get(k) for k in keys}}
                             for label in _labels(config, n)]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True, help="a finished run folder")
  parser.add_argument("--members", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=200)
  args = parser.parse_args()

  rows = metrics_log.MetricsLog(args.run).read()
  config = record.read_config(args.run)
  config = config.replace(num_seeds=args.members)
  epochs = [_with_members(r, config, args.members) for r in rows if "train_loss" in r]
  final = _with_members(rows[-1], config, args.members)
  figures = [os.path.join(args.run, f) for f in report.FILES if f.endswith(".png")]

  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    writer = tensorboard.Writer(logdir, config,
                                _labels(config, args.members) or ())
    writer.resume()
    opened = time.perf_counter() - start
    times = []
    for i in range(args.repeats):
      row = dict(epochs[i % len(epochs)], epoch=len(epochs) + i + 1)
      start = time.perf_counter()
      writer.write(row)
      times.append(time.perf_counter() - start)
    for path in figures:
      if os.path.exists(path):
        shutil.copy(path, logdir)
    start = time.perf_counter()
    writer.write(final)
    writer.figures()
    finished = time.perf_counter() - start
    start = time.perf_counter()
    writer.close()
    closed = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(logdir) for f in files
               if f.startswith("events.out.tfevents."))
  print(json.dumps({
      "members": args.members, "open_ms": round(1e3 * opened, 2),
      "epoch_median_ms": round(1e3 * statistics.median(times), 3),
      "epoch_p90_ms": round(1e3 * sorted(times)[int(0.9 * len(times))], 3),
      "final_ms": round(1e3 * finished, 2), "close_ms": round(1e3 * closed, 2),
      "figures": sum(os.path.exists(f) for f in figures),
      "run_epoch_time_s": statistics.median(r["epoch_time_s"] for r in epochs),
      "event_bytes": size}))


if __name__ == "__main__":
  main()

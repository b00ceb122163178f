r"""What TensorBoard events cost a run: the writer's calls, timed on their own.

  python experiments/tensorboard_cost.py --run=runs/linear-seed
  python experiments/tensorboard_cost.py --run=runs/linear-seed --members=4
  # Every run and member count given, kept in a runs folder, and
  # docs/performance.md's TensorBoard table written from them (--check, no
  # --train: say whether it matches them):
  python experiments/tensorboard_cost.py --run=R1,R2 --members=1,8 \
      --train --runs=runs/tensorboard

Replays a finished run folder's metrics.jsonl through tensorboard.Writer
into a temporary folder: opening it (`resume()`), each epoch's `write(row)`
(median of --repeats calls, at epochs past the run's own), the final row's and
`figures()` with the folder's PNG figures (copied first), then `close()`,
which waits for tensorboardX's thread to write what the calls queued. With
--members=N each row gets N per-member dicts, as a --num_seeds=N row has.
Compare the epoch median with the run's own `epoch_time_s`. Prints one JSON
line per run folder and member count.
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
from experiments import speedrun
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


MARKER = "<!-- tensorboard_cost.py: {} -->"


def measure(run: str, members: int, repeats: int) -> dict:
  """Replays `run` with `members` members (module doc): its JSON row."""
  rows = metrics_log.MetricsLog(run).read()
  config = record.read_config(run).replace(num_seeds=members)
  epochs = [_with_members(r, config, members) for r in rows if "train_loss" in r]
  final = _with_members(rows[-1], config, members)
  figures = [os.path.join(run, f) for f in report.FILES if f.endswith(".png")]

  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    writer = tensorboard.Writer(logdir, config, _labels(config, members) or ())
    writer.resume()
    opened = time.perf_counter() - start
    times = []
    for i in range(repeats):
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
  return {
      "run": f"{config.model} ({config.preset})", "members": members,
      "open_ms": round(1e3 * opened, 2),
      "epoch_median_ms": round(1e3 * statistics.median(times), 3),
      "epoch_p90_ms": round(1e3 * sorted(times)[int(0.9 * len(times))], 3),
      "final_ms": round(1e3 * finished, 2), "close_ms": round(1e3 * closed, 2),
      "figures": sum(os.path.exists(f) for f in figures),
      "run_epoch_time_s": statistics.median(r["epoch_time_s"] for r in epochs),
      "event_bytes": size, "repeats": repeats}


def table(rows, host) -> str:
  """The TensorBoard table: a row per run folder and member count."""
  lines = [f"Milliseconds of the writer's calls on {host['host']}, jax "
           f"{host['jax']} (an epoch's: the median of {rows[0]['repeats']}); "
           "its thread writes them to disk meanwhile.", "",
           "| run | members | its epoch | an epoch's events | of the epoch | "
           "the final row and figures | opening the writer |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    share = r["epoch_median_ms"] / (1e3 * r["run_epoch_time_s"])
    lines.append(
        f"| {r['run']} | {r['members']} | {1e3 * r['run_epoch_time_s']:,.0f} | "
        f"{r['epoch_median_ms']:.2f} | {100 * share:.3f}% | "
        f"{r['final_ms']:.0f} ({r['figures']}) | {r['open_ms']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="",
                      help="finished run folders, comma-separated")
  parser.add_argument("--members", default="1",
                      help="member counts, comma-separated")
  parser.add_argument("--repeats", type=int, default=200)
  speedrun.add_table_flags(parser, runs_required=False, data=False)
  args = parser.parse_args(argv)
  if not (args.run or (args.runs and not args.train)):  # Only reads a table.
    parser.error("--run names no run folder")

  def measure_all():
    rows = []
    for run in args.run.split(","):
      for members in args.members.split(","):
        rows.append(measure(run, int(members), args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    return rows

  if not args.runs:
    measure_all()
    return
  rows, host = speedrun.timed(args, "tensorboard.jsonl", measure_all)
  speedrun.write_table(args.doc, table(rows, host), MARKER, "TensorBoard",
                       args.check)


if __name__ == "__main__":
  main()

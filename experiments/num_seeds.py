r"""Wall time of one launch.py run of many members against the same run of one.

Runs `python launch.py ARGS` once as a single run and once with
`--num_seeds=N` (and `--sweep=SPEC`, if given) as fresh processes, alternating
so that load drifts hit both (after one untimed run that prepares the data),
and prints each wall time, the medians and their ratio next to the member
count, the cost of as many separate runs. Run it on an otherwise idle
machine:

  python experiments/num_seeds.py --seeds=4 --repeats=3 \
      -- --model=mlp --epochs=2 --mnist_dir=DIR
  python experiments/num_seeds.py --seeds=1 \
      --sweep=learning_rate=3e-4,1e-3,3e-3,1e-2 --repeats=3 \
      -- --model=mlp --epochs=2 --mnist_dir=DIR

docs/performance.md's members table: every row of ROWS, its single run,
--num_seeds=4 and the 4-point learning-rate sweep alternated --repeats times
(runs.jsonl in --runs, with host.json), then the table from them (--check:
does the doc match them; without --train: from runs timed before):

  python experiments/num_seeds.py --train --runs=runs/members --mnist_dir=DIR
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import speedrun
from mnist_jax import config as config_lib
from mnist_jax import models

# The members table's rows: (label, model, preset); each is run --epochs=2.
ROWS = (("linear (tuned)", "linear", "tuned"),
        ("mlp 512-256 (seed)", "mlp", "seed"),
        ("mlp 1024-1024 (tuned)", "mlp", "tuned"),
        ("cnn (tuned)", "cnn", "tuned"),
        ("rnn (tuned)", "rnn", "tuned"),
        ("lstm (tuned)", "lstm", "tuned"),
        ("gru (tuned)", "gru", "tuned"))
SEEDS = 4
SWEEP = "learning_rate=3e-4,1e-3,3e-3,1e-2"
KINDS = {"one": [], "seeds": [f"--num_seeds={SEEDS}"],
         "sweep": [f"--sweep={SWEEP}"]}
MARKER = "<!-- num_seeds.py: {} -->"


def wall_time(args, extra, workdir: str) -> float:
  command = [sys.executable, os.path.join(ROOT, "launch.py"), *args, *extra,
             f"--workdir={workdir}", "--overwrite"]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def row_flags(model: str, preset: str):
  """A row's launch.py flags; a sweep chooses on validation data, so a
  preset holding out none holds out 10% in all of its row's runs."""
  flags = [f"--model={model}", f"--preset={preset}", "--epochs=2"]
  if not models.get_config(model, preset).val_fraction:
    flags.append("--val_fraction=0.1")
  return flags


def train_table(runs: str, names, repeats: int, data_flags) -> None:
  """Times the kinds of the rows of models `names`, alternated; writes
  runs.jsonl (the other rows as kept before) and host.json."""
  timed = speedrun.kept_timed(runs, "runs.jsonl",
                              [r[0] for r in ROWS if r[1] in names])
  with tempfile.TemporaryDirectory() as tmp:
    t = wall_time(row_flags("linear", "tuned") + data_flags, [],
                  os.path.join(tmp, "warm"))
    print(f"warm-up, untimed (prepares the data once): {t:.1f}s", flush=True)
    for label, model, preset in [r for r in ROWS if r[1] in names]:
      for repeat in range(repeats):
        for kind, extra in KINDS.items():
          t = wall_time(row_flags(model, preset) + data_flags, extra,
                        os.path.join(tmp, kind))
          timed.append({"row": label, "kind": kind, "repeat": repeat,
                        "wall_time_s": round(t, 2)})
          print(f"{label} {' '.join(extra)}: {t:.1f}s", flush=True)
  speedrun.save_timed(runs, "runs.jsonl", timed)


def table(runs: str) -> str:
  """The members table (and the line naming its host) from the runs folder."""
  timed, host = speedrun.load_timed(runs, "runs.jsonl")
  points = len(config_lib.sweep_grid(SWEEP)["learning_rate"])
  lines = [f"Seconds of a whole `launch.py --epochs=2` run on {host['host']}, "
           f"jax {host['jax']}; medians of "
           f"{max(r['repeat'] for r in timed) + 1} alternated runs each.", "",
           f"| model (preset) | one run | {SEEDS} seeds | / one run | "
           f"{points} learning rates | / one run |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for label, model, preset in [r for r in ROWS
                               if any(t["row"] == r[0] for t in timed)]:
    median = {k: statistics.median(r["wall_time_s"] for r in timed
                                   if r["row"] == label and r["kind"] == k)
              for k in KINDS}
    held = " ¹" if "--val_fraction=0.1" in row_flags(model, preset) else ""
    lines.append(f"| {label}{held} | {median['one']:.1f} | "
                 f"{median['seeds']:.1f} | {median['seeds'] / median['one']:.2f}x"
                 f" | {median['sweep']:.1f} | "
                 f"{median['sweep'] / median['one']:.2f}x |")
  lines += ["", "¹ Its preset holds out no validation data, which a sweep "
            "chooses on: all three of its runs add `--val_fraction=0.1`."]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--sweep", default="",
                      help="a --sweep spec for the many-member run")
  parser.add_argument("--repeats", type=int, default=2)
  speedrun.add_table_flags(parser, runs_required=False)  # None: launch_args.
  parser.add_argument("--models", default="all",
                      help="with --train: the rows of these models only (the "
                      "others as kept)")
  parser.add_argument("launch_args", nargs="*")
  args = parser.parse_args(argv)
  if args.runs:
    if args.train:
      names = (list(models.MODELS) if args.models == "all"
               else args.models.split(","))
      train_table(args.runs, names, args.repeats,
                  [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
                   if (v := getattr(args, k))])
    speedrun.write_table(args.doc, table(args.runs), MARKER, "members",
                         args.check)
    return
  points = math.prod(len(v) for v in config_lib.sweep_grid(args.sweep).values())
  members = args.seeds * points
  many = [f"--num_seeds={args.seeds}"] + (
      [f"--sweep={args.sweep}"] if args.sweep else [])
  runs = {"one": ["--num_seeds=1"], "many": many}
  times = {name: [] for name in runs}
  with tempfile.TemporaryDirectory() as tmp:
    # Untimed: a first run prepares the data (with --mnist_dir), once.
    t = wall_time(args.launch_args, runs["one"], os.path.join(tmp, "warm"))
    print(f"warm-up, untimed (prepares the data once): {t:.1f}s", flush=True)
    for _ in range(args.repeats):
      for name, extra in runs.items():
        t = wall_time(args.launch_args, extra, os.path.join(tmp, name))
        times[name].append(t)
        print(f"{' '.join(extra)}: {t:.1f}s", flush=True)
  one, many = statistics.median(times["one"]), statistics.median(times["many"])
  print(f"median wall: 1 member {one:.1f}s, {members} members {many:.1f}s; "
        f"ratio {many / one:.2f} (separate runs: {members}.00)")


if __name__ == "__main__":
  main()

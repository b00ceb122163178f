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

from mnist_jax.training import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def wall_time(args, extra, workdir: str) -> float:
  command = [sys.executable, os.path.join(ROOT, "launch.py"), *args, *extra,
             f"--workdir={workdir}", "--overwrite"]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--sweep", default="",
                      help="a --sweep spec for the many-member run")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("launch_args", nargs="*")
  args = parser.parse_args()
  points = math.prod(len(v) for v in members_lib.parse(args.sweep).values())
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

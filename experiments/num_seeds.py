"""Wall time of one launch.py run with N seeds against the same run with one.

Runs `python launch.py ARGS --num_seeds=N` as fresh processes (alternating, so
load drifts hit both), and prints each wall time, the medians and their ratio
next to N, the cost of N separate runs. Run it on an otherwise idle machine:

  python experiments/num_seeds.py --seeds=4 --repeats=2 \
      -- --model=mlp --epochs=2 --mnist_dir=DIR --data_dir=DIR
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wall_time(args, num_seeds: int, workdir: str) -> float:
  command = [sys.executable, os.path.join(ROOT, "launch.py"), *args,
             f"--num_seeds={num_seeds}", f"--workdir={workdir}", "--overwrite"]
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("launch_args", nargs="*")
  args = parser.parse_args()
  times = {1: [], args.seeds: []}
  with tempfile.TemporaryDirectory() as tmp:
    for _ in range(args.repeats):
      for n in times:
        t = wall_time(args.launch_args, n, os.path.join(tmp, f"seeds{n}"))
        times[n].append(t)
        print(f"num_seeds={n}: {t:.1f}s", flush=True)
  one, many = statistics.median(times[1]), statistics.median(times[args.seeds])
  print(f"median wall: 1 seed {one:.1f}s, {args.seeds} seeds {many:.1f}s; "
        f"ratio {many / one:.2f} (separate runs: {args.seeds}.00)")


if __name__ == "__main__":
  main()

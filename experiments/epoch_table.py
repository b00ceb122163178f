"""docs/performance.md's seed-epoch table, from benchmark.py's and reference_torch.py's runs.

  # Time every seed preset, alternating the layouts and PyTorch --repeats
  # times on one idle host, then rewrite the table from what they printed:
  python experiments/epoch_table.py --train --runs=runs/epochs --mnist_dir=DIR
  # Rewrite it from runs timed before; --check says whether it matches them:
  python experiments/epoch_table.py --runs=runs/epochs [--check]

--train runs, --repeats times in turn: `benchmark.py --model=M --preset=seed
--epochs=3` (the default layout, --parallel=auto), the same with
--parallel=none, and `reference_torch.py --model=M --epochs=3` where PyTorch
is installed (its column is left empty where not). Each keeps its JSON lines
in the runs folder (auto.N.jsonl, none.N.jsonl, torch.N.jsonl) beside
host.json (this host and the releases). Each figure is the median over the
repeats of each run's epoch time (itself the median of the epochs after the
first).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import speedrun
from mnist_jax import files
from mnist_jax import models

KINDS = {  # File prefix -> the command it times (`{m}`: the models).
    "auto": ["benchmark.py", "--model={m}", "--preset=seed", "--epochs=3"],
    "none": ["benchmark.py", "--model={m}", "--preset=seed", "--epochs=3",
             "--parallel=none"],
    "torch": ["reference_torch.py", "--model={m}", "--epochs=3"],
}
MARKER = "<!-- epoch_table.py: {} -->"


def train(runs: str, names, repeats: int, data_flags) -> None:
  """Runs each kind `repeats` times, alternated; writes their JSON lines."""
  os.makedirs(runs, exist_ok=True)
  torch = importlib.util.find_spec("torch") is not None
  import jax
  host = {"host": speedrun.host(), "jax": jax.__version__}
  for repeat in range(repeats):
    for kind, command in KINDS.items():
      if kind == "torch" and not torch:
        continue
      argv = [sys.executable, os.path.join(ROOT, "experiments", command[0]),
              *(a.format(m=",".join(names)) for a in command[1:]), *data_flags]
      print(f"[{repeat + 1}/{repeats}] {' '.join(argv[1:])}", flush=True)
      out = subprocess.run(argv, capture_output=True, text=True, check=False)
      if out.returncode:
        sys.exit(f"error: {' '.join(argv[1:])} failed: "
                 f"{out.stderr.strip().splitlines()[-1:]}")
      with files.atomic(os.path.join(runs, f"{kind}.{repeat}.jsonl")) as f:
        f.write(out.stdout)
      if kind == "torch":
        host["torch"] = json.loads(out.stdout.splitlines()[0])["torch"]
  files.write_json(os.path.join(runs, "host.json"), host)


def _runs(runs: str, kind: str):
  """{model: [its rows, one per repeat]} of one kind."""
  found = {}
  for name in sorted(os.listdir(runs)):
    if name.startswith(f"{kind}.") and name.endswith(".jsonl"):
      with open(os.path.join(runs, name)) as f:
        for line in f:
          if line.strip():
            row = json.loads(line)
            found.setdefault(row["model"], []).append(row)
  return found


def table(runs: str) -> str:
  """The table (and the line naming its host) from the runs folder."""
  path = os.path.join(runs, "host.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: {runs} holds no timed runs; run with --train")
  with open(path) as f:
    host = json.load(f)
  auto, none, torch = (_runs(runs, k) for k in KINDS)
  median = lambda rows, key="epoch_time_s": statistics.median(r[key]
                                                              for r in rows)
  lines = ["| model | default | one device | `--parallel=auto` picks | GFLOP/s "
           "(default) | PyTorch | default / PyTorch |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
  for name in [m for m in models.MODELS if m in auto]:
    ours = median(auto[name])
    picked = auto[name][0]
    layout = ("one device" if picked["parallel"] == "none" else
              f"{picked['parallel']}, {picked['devices']} devices")
    theirs = median(torch[name]) if name in torch else None
    batch = models.get_config(name, "seed").batch_size
    lines.append(
        f"| {name} (batch {batch}) | {ours:#.3g} | "
        f"{median(none[name]):#.3g} | {layout} | "
        f"{median(auto[name], 'gflops'):.0f} | "
        f"{'-' if theirs is None else f'{theirs:#.3g}'} | "
        f"{'-' if theirs is None else f'{ours / theirs:.2f}'} |")
  repeats = len(next(iter(auto.values())))
  releases = ", ".join(f"{k} {host[k]}" for k in ("jax", "torch") if k in host)
  return "\n".join([f"Seconds an epoch on {host['host']}, {releases}; medians "
                    f"of {repeats} alternated runs each.", ""] + lines)


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--runs", required=True, help="the folder of the timed runs")
  p.add_argument("--train", action="store_true", help="time them first")
  p.add_argument("--check", action="store_true",
                 help="say whether the doc matches the runs; write nothing")
  p.add_argument("--models", default="all", help="comma-separated, or all")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--doc", default=speedrun.DOC, help="the file of the table")
  p.add_argument("--mnist_dir", default=None)
  p.add_argument("--data_dir", default=None)
  args = p.parse_args(argv)
  names = list(models.MODELS) if args.models == "all" else args.models.split(",")
  if args.train:
    train(args.runs, names, args.repeats,
          [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
           if (v := getattr(args, k))])
  speedrun.write_table(args.doc, table(args.runs), MARKER, "epoch", args.check)


if __name__ == "__main__":
  main()

r"""docs/performance.md's epoch tables, from benchmark.py's and reference_torch.py's runs.

  # Time every seed preset, alternating the layouts and PyTorch --repeats
  # times on one idle host, then rewrite the table from what they printed:
  python experiments/epoch_table.py --train --runs=runs/epochs --mnist_dir=DIR
  # The tuned CNN with and without BatchNorm, alternated, and its table:
  python experiments/epoch_table.py --table=batchnorm --train \
      --runs=runs/batchnorm --mnist_dir=DIR
  # Rewrite a table from runs timed before; --check says whether it matches:
  python experiments/epoch_table.py [--table=batchnorm] --runs=DIR [--check]

--train runs each command of the table (TABLES) --repeats times in turn. The
seed table's: `benchmark.py --model=M --preset=seed --epochs=3` (the default
layout, --parallel=auto), the same with --parallel=none, and
`reference_torch.py --model=M --epochs=3` where PyTorch is installed (its
column is left empty where not). The batchnorm table's: `benchmark.py
--model=cnn --preset=tuned --epochs=3`, without and with
--set=cnn_batch_norm=true. Each keeps its JSON lines in the runs folder
(KIND.N.jsonl) beside host.json (this host and the releases). Each figure is
the median over the repeats of each run's epoch time (itself the median of
the epochs after the first).
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
TUNED_CNN = ["benchmark.py", "--model=cnn", "--preset=tuned", "--epochs=3"]
BATCHNORM_KINDS = {  # The launch.py flags each adds to `--model=cnn`.
    "plain": (TUNED_CNN, ""),
    "batchnorm": (TUNED_CNN + ["--set=cnn_batch_norm=true"],
                  " --cnn_batch_norm"),
}
MARKER = "<!-- epoch_table.py: {} -->"
BATCHNORM_MARKER = "<!-- epoch_table.py, batchnorm: {} -->"


def train(runs: str, kinds, names, repeats: int, data_flags) -> None:
  """Runs each kind `repeats` times, alternated; writes their JSON lines."""
  os.makedirs(runs, exist_ok=True)
  torch = importlib.util.find_spec("torch") is not None
  import jax
  host = {"host": speedrun.host(), "jax": jax.__version__}
  for repeat in range(repeats):
    for kind, command in kinds.items():
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


def _host(runs: str) -> dict:
  path = os.path.join(runs, "host.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: {runs} holds no timed runs; run with --train")
  with open(path) as f:
    return json.load(f)


def _median(rows, key="epoch_time_s"):
  return statistics.median(r[key] for r in rows)


def table(runs: str) -> str:
  """The seed table (and the line naming its host) from the runs folder."""
  host = _host(runs)
  auto, none, torch = (_runs(runs, k) for k in KINDS)
  median = _median
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


def batchnorm_table(runs: str) -> str:
  """The tuned CNN's epoch with and without BatchNorm, from the runs folder."""
  host = _host(runs)
  timed = {k: _runs(runs, k).get("cnn") for k in BATCHNORM_KINDS}
  if not all(timed.values()):
    raise SystemExit(f"error: {runs} lacks a kind of run; run with --train")
  plain = _median(timed["plain"])
  lines = [f"Seconds an epoch of the tuned CNN (batch "
           f"{timed['plain'][0]['batch_size']}) on {host['host']}, jax "
           f"{host['jax']}; medians of {len(timed['plain'])} alternated runs "
           "each.", "",
           "| command | seconds an epoch | GFLOP/s | / plain CNN |",
           "| --- | ---: | ---: | ---: |"]
  for kind, (_, flags) in BATCHNORM_KINDS.items():
    epoch = _median(timed[kind])
    lines.append(f"| `python launch.py --model=cnn{flags}` | {epoch:#.3g} | "
                 f"{_median(timed[kind], 'gflops'):.0f} | "
                 f"{epoch / plain:.2f} |")
  return "\n".join(lines)


# Table name -> (its commands, its maker, its marker lines).
TABLES = {
    "seed": (KINDS, table, MARKER),
    "batchnorm": ({k: c for k, (c, _) in BATCHNORM_KINDS.items()},
                  batchnorm_table, BATCHNORM_MARKER),
}


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--table", default="seed", choices=sorted(TABLES))
  speedrun.add_table_flags(p)
  p.add_argument("--models", default="all",
                 help="the seed table's: comma-separated, or all")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args(argv)
  names = list(models.MODELS) if args.models == "all" else args.models.split(",")
  kinds, make, marker = TABLES[args.table]
  if args.train:
    train(args.runs, kinds, names, args.repeats,
          [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
           if (v := getattr(args, k))])
  speedrun.write_table(args.doc, make(args.runs), marker,
                       f"{args.table} epoch", args.check)


if __name__ == "__main__":
  main()

r"""docs/performance.md's epoch tables, from benchmark.py's and reference_torch.py's runs.

  # Time every seed preset, alternating the layouts and PyTorch --repeats
  # times on one idle host, then rewrite the table from what they printed:
  python experiments/epoch_table.py --train --runs=runs/epochs --mnist_dir=DIR
  # A table of a few CNN commands side by side (COMPARED: batchnorm, layouts,
  # impls), alternated, then written:
  python experiments/epoch_table.py --table=batchnorm --train \
      --runs=runs/batchnorm --mnist_dir=DIR
  # Rewrite a table from runs timed before; --check says whether it matches:
  python experiments/epoch_table.py [--table=NAME] --runs=DIR [--check]

--train runs each command of the table (TABLES) --repeats times in turn. The
seed table's: `benchmark.py --model=M --preset=seed --epochs=3` (the default
layout, --parallel=auto), the same with --parallel=none, and
`reference_torch.py --model=M --epochs=3` where PyTorch is installed, or by
the Python --torch_python names (its column is left empty where neither). A
compared table's: its benchmark.py commands (batchnorm: the tuned CNN
without and with BatchNorm; layouts: the seed CNN on one device, pmap and
sharded; impls: the CNN's kernel and the BatchNorm CNN's convolutions as
matmuls beside XLA's own layers, in ms a step). Each keeps its JSON lines in
the runs folder (KIND.N.jsonl) beside host.json (this host and the
releases). Each figure is the median over the repeats of each run's epoch
time (itself the median of the epochs after the first); the seed table's
ratio to PyTorch adds, in brackets, its range over the rounds.
"""

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, NamedTuple, Tuple

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
SEED_CNN = ["benchmark.py", "--model=cnn", "--preset=seed", "--epochs=3"]
# A few hundred steps an epoch of the stock layers would take an hour: these
# time 2 epochs of 5% of the training set, and give milliseconds a step.
FEW_STEPS = ["--epochs=2", "--set=val_fraction=0.95"]
SECONDS = ("seconds an epoch", "Seconds an epoch",
           lambda row: row["epoch_time_s"])
MS = ("ms a step", "Milliseconds a step",
      lambda row: 1e3 * row["epoch_time_s"] / row["steps_per_epoch"])


class Compared(NamedTuple):
  """A table of a few commands side by side: what its first line times, its
  unit (column name, first line's words, the figure from a benchmark.py
  row), and its kinds of run (file prefix -> (benchmark.py's arguments, the
  launch.py flags timed)); the first kind is the unit of the ratio column
  (`ratio`)."""
  subject: str
  unit: Tuple[str, str, Callable[[dict], float]]
  kinds: Dict[str, Tuple[List[str], str]]
  ratio: str


COMPARED = {
    "batchnorm": Compared("the tuned CNN", SECONDS, {
        "plain": (TUNED_CNN, "--model=cnn"),
        "batchnorm": (TUNED_CNN + ["--set=cnn_batch_norm=true"],
                      "--model=cnn --cnn_batch_norm"),
    }, "/ plain CNN"),
    "layouts": Compared("the seed CNN in each layout", SECONDS, {
        "none": (SEED_CNN + ["--parallel=none"],
                 "--model=cnn --preset=seed --parallel=none"),
        "pmap": (SEED_CNN + ["--parallel=pmap"],
                 "--model=cnn --preset=seed --parallel=pmap"),
        "sharded": (SEED_CNN + ["--parallel=sharded"],
                    "--model=cnn --preset=seed --parallel=sharded"),
    }, "/ one device"),
    "impls": Compared("the CNN's kernel and XLA's own layers", MS, {
        "kernel": (SEED_CNN[:-1] + FEW_STEPS, "--model=cnn --preset=seed"),
        "stock": (SEED_CNN[:-1] + FEW_STEPS + ["--set=impl=stock"],
                  "--model=cnn --preset=seed --impl=stock"),
        "matmuls": (TUNED_CNN[:-1] + FEW_STEPS + ["--set=cnn_batch_norm=true"],
                    "--model=cnn --cnn_batch_norm"),
        "bn_stock": (TUNED_CNN[:-1] + FEW_STEPS +
                     ["--set=cnn_batch_norm=true", "--set=impl=stock"],
                     "--model=cnn --cnn_batch_norm --impl=stock"),
    }, "/ first row"),
}
MARKER = "<!-- epoch_table.py: {} -->"


def marker(name: str) -> str:
  """A compared table's marker lines in the doc."""
  return f"<!-- epoch_table.py, {name}: {{}} -->"


def train(runs: str, kinds, names, repeats: int, data_flags,
          more=(), torch_python=None) -> None:
  """Runs each kind `repeats` times, alternated (`more`: flags for each
  benchmark.py run; `torch_python`: the Python that runs PyTorch's, this one
  if None); writes their JSON lines."""
  os.makedirs(runs, exist_ok=True)
  torch = bool(torch_python) or importlib.util.find_spec("torch") is not None
  import jax
  host = {"host": speedrun.host(), "jax": jax.__version__}
  for repeat in range(repeats):
    for kind, command in kinds.items():
      if kind == "torch" and not torch:
        continue
      python = torch_python if kind == "torch" and torch_python else (
          sys.executable)
      argv = [python, os.path.join(ROOT, "experiments", command[0]),
              *(a.format(m=",".join(names)) for a in command[1:]), *data_flags,
              *(more if command[0] == "benchmark.py" else ())]
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
        f"{'-' if theirs is None else _ratio(auto[name], torch[name])} |")
  repeats = len(next(iter(auto.values())))
  releases = ", ".join(f"{k} {host[k]}" for k in ("jax", "torch") if k in host)
  spread = (", in brackets the lowest and highest ratio of a run of ours to "
            "PyTorch's of the same round" if repeats > 1 else "")
  return "\n".join([f"Seconds an epoch on {host['host']}, {releases}; medians "
                    f"of {repeats} alternated runs each{spread}.", ""] + lines)


def _ratio(ours, theirs) -> str:
  """The ratio of the medians, and with several rounds its range over the
  rounds (a run of ours over PyTorch's run of the same round): on a shared
  host PyTorch's epoch varies more than the medians show."""
  text = f"{_median(ours) / _median(theirs):.2f}"
  rounds = [a["epoch_time_s"] / b["epoch_time_s"] for a, b in zip(ours, theirs)]
  if len(rounds) < 2:
    return text
  return f"{text} ({min(rounds):.2f}-{max(rounds):.2f})"


def compared_table(name: str, runs: str) -> str:
  """COMPARED[name]'s table from the runs folder: a row per kind of run."""
  compared, host = COMPARED[name], _host(runs)
  timed = {k: _runs(runs, k).get("cnn") for k in compared.kinds}
  if not all(timed.values()):
    raise SystemExit(f"error: {runs} lacks a kind of run; run with --train")
  first = next(iter(timed.values()))
  unit, title, figure = compared.unit
  values = {k: statistics.median(figure(r) for r in rows)
            for k, rows in timed.items()}
  lines = [f"{title} of {compared.subject} (batch "
           f"{first[0]['batch_size']}) on {host['host']}, jax {host['jax']}; "
           f"medians of {len(first)} alternated runs each.", "",
           f"| command | {unit} | GFLOP/s | {compared.ratio} |",
           "| --- | ---: | ---: | ---: |"]
  for kind, (_, flags) in compared.kinds.items():
    lines.append(f"| `python launch.py {flags}` | "
                 f"{f'{values[kind]:#.3g}'.rstrip('.')} | "
                 f"{_median(timed[kind], 'gflops'):.0f} | "
                 f"{values[kind] / next(iter(values.values())):.2f} |")
  return "\n".join(lines)


# Table name -> (its commands, its maker, its marker lines).
TABLES = {
    "seed": (KINDS, table, MARKER),
    **{name: ({k: c for k, (c, _) in compared.kinds.items()},
              functools.partial(compared_table, name), marker(name))
       for name, compared in COMPARED.items()},
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
  p.add_argument("--torch_python", default=None,
                 help="--train: the Python that runs reference_torch.py "
                 "(PyTorch's own virtualenv's); by default this one, where "
                 "PyTorch is installed")
  p.add_argument("benchmark_flags", nargs="*",
                 help="after --: more benchmark.py flags for every run (tests)")
  args = p.parse_args(argv)
  names = list(models.MODELS) if args.models == "all" else args.models.split(",")
  kinds, make, lines = TABLES[args.table]
  if args.train:
    train(args.runs, kinds, names, args.repeats,
          [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
           if (v := getattr(args, k))], args.benchmark_flags,
          args.torch_python)
  speedrun.write_table(args.doc, make(args.runs), lines,
                       f"{args.table} epoch", args.check)


if __name__ == "__main__":
  main()

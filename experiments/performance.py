"""docs/performance.md's timed tables. TABLES: name -> (what writes it, what
measures it here (tables.py --train), what reads its figures from --runs)."""

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host() -> str:
  """This machine and jax's release, as a table names them."""
  import jax
  return f"{record.cpu()}, jax {jax.__version__}"


def table(head: str, align: str, rows) -> List[str]:
  """A doc table's lines: `head`'s cells split at " | ", `align` l or r."""
  line = lambda cells: "|" + "".join(f" {c} |" if c else " |" for c in cells)
  return [line(head.split(" | ")),
          line("---:" if a == "r" else "---" for a in align), *map(line, rows)]


def _run(argv) -> str:
  """stdout of a command that must succeed (else exits naming it)."""
  print(" ".join(argv[1:]), flush=True)
  out = subprocess.run(argv, capture_output=True, text=True, check=False,
                       cwd=ROOT)
  if out.returncode:
    sys.exit(f"error: {' '.join(argv[1:])} failed: "
             f"{out.stderr.strip().splitlines()[-1:]}")
  return out.stdout


def _keep(runs: str, rows, name: str) -> None:
  """Appends raw rows, each with this host, to runs/name.jsonl."""
  os.makedirs(runs, exist_ok=True)
  with open(os.path.join(runs, f"{name}.jsonl"), "a") as f:
    f.writelines(json.dumps({**r, "host": host()}) + "\n" for r in rows)


def run_folders(runs: str) -> List[str]:
  """`runs` if it is a run folder, else the run folders in it (maybe none)."""
  return [runs] if record.is_run(runs) else record.runs_in(runs)


def _kept(runs: str, name: str) -> List[dict]:
  """The rows _keep appended to runs/name.jsonl."""
  rows = metrics_log.read_metrics(os.path.join(runs, f"{name}.jsonl"))
  if not rows:
    raise UserError(f"{runs} holds no measured runs ({name}.jsonl); pass "
                    "--train to measure them")
  return rows


def train_epochs(args) -> None:
  """benchmark.py (also --parallel=none) and reference_torch.py, alternated."""
  torch = args.torch_python or (
      sys.executable if importlib.util.find_spec("torch") else None)
  ours = [sys.executable, "benchmark.py", *args.extra]
  kinds = {"auto": ours, "none": [*ours, "--parallel=none"],
           "torch": [torch, "reference_torch.py"]}
  for repeat in range(args.repeats or 2):
    for kind, (python, script, *more) in kinds.items():
      if python:
        out = _run([python, os.path.join(ROOT, "experiments", script),
                    f"--model={args.models}", "--epochs=3", *args.data, *(
                        ["--preset=seed"] if kind != "torch" else []), *more])
        _keep(args.runs, [{**json.loads(line), "round": repeat, "kind": kind}
                          for line in out.splitlines()], "epochs")


def measure_epochs(runs: str) -> dict:
  """Each model's median epoch, PyTorch's, and their ratio and its range."""
  timed = _kept(runs, "epochs")
  by = lambda kind, name: [r for r in timed
                           if r["kind"] == kind and r["model"] == name]
  median = lambda rs, key="epoch_time_s": statistics.median(r[key] for r in rs)
  rows = []
  for name in [n for n in models.MODELS if by("auto", n)]:
    ours, theirs = by("auto", name), by("torch", name)
    row = {"model": name, "batch_size": ours[0]["batch_size"],
           "default_s": median(ours), "none_s": median(by("none", name)),
           "layout": ("one device" if ours[0]["parallel"] == "none" else
                      f"{ours[0]['parallel']}, {ours[0]['devices']} devices"),
           "gflops": median(ours, "gflops")}
    if theirs:
      rounds = [a["epoch_time_s"] / b["epoch_time_s"]
                for a, b in zip(ours, theirs)]
      row.update(torch_s=median(theirs), ratio=median(ours) / median(theirs),
                 ratio_range=[min(rounds), max(rounds)])
    rows.append(row)
  torch = [r["torch"] for r in timed if r["kind"] == "torch"]
  return {"host": timed[0]["host"], "torch": torch[0] if torch else None,
          "rounds": max(r["round"] for r in timed) + 1, "rows": rows}


def epochs_table(m: dict) -> str:
  e = m["epochs"]
  rows = [[f"{r['model']} (batch {r['batch_size']})", f"{r['default_s']:#.3g}",
           f"{r['none_s']:#.3g}", r["layout"], f"{r['gflops']:.0f}", *(
               ["-", "-"] if "torch_s" not in r else [
                   f"{r['torch_s']:#.3g}", f"{r['ratio']:.2f} ("
                   f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})"])]
          for r in e["rows"]]
  torch = f", torch {e['torch']}" if e["torch"] else ""
  return "\n".join([
      f"Seconds an epoch on {e['host']}{torch}; medians of {e['rounds']} "
      "alternated runs each, in brackets the lowest and highest ratio of a run "
      "of ours to PyTorch's of the same round.", "", *table(
          "model | default | one device | `--parallel=auto` picks | GFLOP/s "
          "(default) | PyTorch | default / PyTorch", "lrrlrrr", rows)])


# (row name, launch.py flags, cold runs timed), each at every seed offset.
SPEEDRUN = (
    ("5 seeds", ["--model=cnn", "--preset=speedrun", "--num_seeds=5"], 3),
    ("1 seed", ["--model=cnn", "--preset=speedrun", "--num_seeds=1"], 3),
    # The best preset at the fewest epochs (of 18, 12, 8, 6) whose 5-seed mean
    # validation accuracy reached 99.55% (--val_fraction=0.1, seeds 300-304).
    ("to 99.5%", ["--model=cnn", "--preset=best", "--epochs=8",
                  "--num_seeds=5"], 1))
ANCHOR = ("| published, not measured here: \"Training a NN to 99% accuracy on "
          "MNIST in 0.76 seconds\" (PyTorch, one epoch) | 1 | 99% | - | 0.76 s "
          "of training | - | - | a laptop's GeForce GTX 1660 Ti GPU |")


def train_speedrun(args) -> None:
  """Each SPEEDRUN command run cold (no cache): medians in speedrun.json."""
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  for name, flags, times in SPEEDRUN:
    for offset in args.offsets.split(","):
      workdir = os.path.join(args.runs, f"{name.replace(' ', '_')}-{offset}")
      command = [*flags, f"--seed={offset}", *args.extra]
      runs = []
      for _ in range(args.repeats or times):
        start, to_result = time.perf_counter(), None
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "launch.py"), *command,
             *args.data, f"--workdir={workdir}", "--overwrite"],
            stdout=subprocess.PIPE, text=True, env=env)
        for line in proc.stdout or ():
          print(line, end="", flush=True)
          if to_result is None and re.search(r"test accuracy [0-9.]+%", line):
            to_result = time.perf_counter() - start
        if proc.wait() or to_result is None:
          sys.exit(f"error: {' '.join(command)} failed (exit "
                   f"{proc.returncode})")
        runs.append([to_result, time.perf_counter() - start])
      files.write_json(os.path.join(workdir, "speedrun.json"), {
          "command": " ".join(["python launch.py", *command]),
          "to_result_s": statistics.median(r for r, _ in runs),
          "to_exit_s": statistics.median(e for _, e in runs),
          "runs_s": runs, "host": host()})


def measure_speedrun(runs: str) -> dict:
  """A row per run folder with a speedrun.json, in SPEEDRUN's order."""
  from mnist_jax.results import analysis
  rows = []
  for name, *_ in SPEEDRUN:
    for folder in sorted(run_folders(runs)):
      if os.path.basename(folder).startswith(name.replace(" ", "_") + "-"):
        with open(os.path.join(folder, "speedrun.json")) as f:
          timed = json.load(f)
        final = metrics_log.final_metrics(folder) or {}
        rows.append({
            "command": timed["command"], "host": timed["host"],
            "seeds": int(re.findall(r"--num_seeds=(\d+)", timed["command"])[0]),
            "mean": final.get("test_accuracy_mean", final["test_accuracy"]),
            "std": final.get("test_accuracy_std"),
            "ensemble": final.get("ensemble_test_accuracy"),
            "to_result_s": timed["to_result_s"],
            "to_exit_s": timed["to_exit_s"],
            # Its report's t-SNE map (the analysis extra) delays the exit.
            "tsne": os.path.exists(os.path.join(folder, analysis.FOLDER,
                                                analysis.TSNE_MAP))})
  return {"rows": rows}


def speedrun_table(m: dict) -> str:
  rows = [[f"`{r['command']}`", str(r["seeds"]), f"{100 * r['mean']:.2f}" + (
      f" ± {100 * r['std']:.2f}" if r.get("std") is not None else "") + "%",
           f"{100 * r['ensemble']:.2f}%" if r.get("ensemble") else "-",
           f"{r['to_result_s']:.1f} s",
           f"{r['to_result_s'] / r['seeds']:.1f} s", f"{r['to_exit_s']:.1f} s"
           + (" (t-SNE map drawn)" if r["tsne"] else ""), r["host"]]
          for r in m["speedrun"]["rows"]]
  return "\n".join(table(
      "command | seeds | test accuracy (mean ± std) | ensemble | launch to "
      "result | per seed | launch to exit | host", "llrrrrrl", rows) + [ANCHOR])


STARTUP_ROWS = (  # Row, the figure's key.
    ("launch to first step, first run (compiles)", "first"),
    ("launch to first step, second run (warm cache)", "warm"),
    ("first run: imports", "imports"),
    ("first run: loading the data", "data"),
    ("first run: the train state", "state"),
    ("of it, the kernel check", "check"),
    ("first run: compiling the train chunk", "compile"),
    ("second run: the kernel check", "warm_check"))


def train_startup(args) -> None:
  from experiments import startup
  _keep(args.runs, list(startup.measure(args.models, "seed", args.repeats or 3,
                                        2, args.data)), "startup")


def measure_startup(runs: str) -> dict:
  """Medians of each model's first and warm run and first run's phases."""
  timed = _kept(runs, "startup")
  out: Dict[str, dict] = {}
  for name in [m for m in models.MODELS if any(r["model"] == m for r in timed)]:
    median = lambda key, run, name=name: statistics.median(
        r[key] for r in timed if r["model"] == name and r["run"] == run)
    marks = ("imported_train", "data_loaded", "state_ready", "compiled")
    out[name] = {"first": median("start_training_s", 1),
                 "warm": median("start_training_s", 2),
                 "check": median("check_s", 1),
                 "warm_check": median("check_s", 2),
                 **{key: median(end, 1) - (median(start, 1) if start else 0)
                    for key, end, start in zip(
                        ("imports", "data", "state", "compile"), marks,
                        (None,) + marks[:-1])}}
  return {"host": timed[0]["host"], "rounds": max(r["round"] for r in timed),
          "models": out}


def startup_table(m: dict) -> str:
  s = m["startup"]
  rows = [[said, *(f"{v[key]:.2f}" if v[key] else "-"
                   for v in s["models"].values())] for said, key in STARTUP_ROWS]
  return "\n".join([
      f"Seconds on {s['host']}, `--preset=seed`; medians of {s['rounds']} "
      "rounds, each with a new, empty compilation cache.", "", *table(
          " | ".join(["", *s["models"]]), "l" + "r" * len(s["models"]), rows)])


# The members table's rows: (label, model, preset); each is run --epochs=2.
MEMBERS = (("linear (tuned)", "linear", "tuned"),
           ("mlp 512-256 (seed)", "mlp", "seed"),
           ("mlp 1024-1024 (tuned)", "mlp", "tuned"),
           *((f"{m} (tuned)", m, "tuned")
             for m in ("cnn", "rnn", "lstm", "gru")))
MEMBER_KINDS = {"one": [], "seeds": ["--num_seeds=4"],
                "sweep": ["--sweep=learning_rate=3e-4,1e-3,3e-3,1e-2"]}


def _member_flags(model: str, preset: str) -> List[str]:
  """A row's flags: 10% held out for a sweep to choose on if none is."""
  held = models.get_config(model, preset).val_fraction
  return [f"--model={model}", f"--preset={preset}", "--epochs=2"] + (
      [] if held else ["--val_fraction=0.1"])


def train_members(args) -> None:
  """Each row's kinds of run alternated (data prepared first): members.jsonl."""
  with tempfile.TemporaryDirectory() as tmp:
    def wall(flags):
      start = time.perf_counter()
      _run([sys.executable, "launch.py", *flags, *args.data, *args.extra,
            f"--workdir={tmp}/run", "--overwrite"])
      return time.perf_counter() - start
    wall(["--model=linear", "--epochs=1"])
    for label, model, preset in MEMBERS:
      if args.models == "all" or model in args.models.split(","):
        for repeat in range(args.repeats or 2):
          _keep(args.runs, [{"row": label, "kind": kind, "round": repeat,
                             "wall_time_s": wall(_member_flags(model, preset)
                                                 + extra)}
                            for kind, extra in MEMBER_KINDS.items()], "members")


def measure_members(runs: str) -> dict:
  timed, rows = _kept(runs, "members"), []
  for label, model, preset in MEMBERS:
    median = {k: statistics.median([r["wall_time_s"] for r in timed
                                    if r["row"] == label and r["kind"] == k])
              for k in MEMBER_KINDS if any(r["row"] == label for r in timed)}
    if median:
      rows.append({"label": label, **median,  # "one", "seeds", "sweep".
                   "seeds_x": median["seeds"] / median["one"],
                   "sweep_x": median["sweep"] / median["one"],
                   "held": "--val_fraction=0.1" in _member_flags(model,
                                                                 preset)})
  return {"host": timed[0]["host"], "rows": rows,
          "rounds": max(r["round"] for r in timed) + 1}


def members_table(m: dict) -> str:
  s = m["members"]
  rows = [[r["label"] + (" ¹" if r["held"] else ""), f"{r['one']:.1f}",
           f"{r['seeds']:.1f}", f"{r['seeds_x']:.2f}x", f"{r['sweep']:.1f}",
           f"{r['sweep_x']:.2f}x"] for r in s["rows"]]
  return "\n".join([
      f"Seconds of a whole `launch.py --epochs=2` run on {s['host']}; medians "
      f"of {s['rounds']} alternated runs each.", "", *table(
          "model (preset) | one run | 4 seeds | / one run | 4 learning rates | "
          "/ one run", "lrrrrr", rows),
      "", "¹ Its preset holds out no validation data, which a sweep chooses "
      "on: all three of its runs add `--val_fraction=0.1`."])


TABLES = {"epochs": (epochs_table, train_epochs, measure_epochs),
          "speedrun": (speedrun_table, train_speedrun, measure_speedrun),
          "startup": (startup_table, train_startup, measure_startup),
          "members": (members_table, train_members, measure_members)}

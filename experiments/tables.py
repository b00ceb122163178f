r"""Writes every table the docs hold, from docs/measurements.json.

  python experiments/tables.py [--check]   # --check: which differ; no writes
  # Measure a table on this host (its runs kept in --runs), keep its figures
  # in docs/measurements.json, then write it; results trains what is missing:
  python experiments/tables.py --table=epochs --train --runs=runs/epochs \
      --mnist_dir=DIR

Each table (TABLES) lies between `<!-- tables.py: NAME -->` and
`<!-- tables.py: end -->` in its doc and names its host and releases. --runs
without --train reads a table's figures again from the runs kept there;
results also draws docs/img/accuracy_vs_time.png, sweep_mlp.png and
analyses.md from its run folders (with --mnist_dir or --data_dir, the photo
montage too).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.training import members as members_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
PERFORMANCE = os.path.join("docs", "performance.md")
MEASUREMENTS = os.path.join("docs", "measurements.json")
END = "<!-- tables.py: end -->"


def replace_block(text: str, name: str, content: str, path: str) -> str:
  """`text` with the lines between `<!-- tables.py: name -->` and END set to
  `content`: the one marker rewrite of every table."""
  pattern = re.compile(rf"(<!-- tables\.py: {re.escape(name)} -->\n).*?"
                       rf"(\n{re.escape(END)})", re.S)
  if len(pattern.findall(text)) != 1:
    raise UserError(f"{path} has no (or more than one) block between "
                    f"`<!-- tables.py: {name} -->` and `{END}`; put the "
                    "markers back around it")
  return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def host() -> str:
  """This machine and jax's release, as a table names them."""
  import jax
  return f"{record.cpu()}, jax {jax.__version__}"


def _pct(fraction: float) -> str:
  return f"{100 * fraction:.2f}%"


def _time(seconds: float) -> str:
  """3.6 s, 78 s, 15.8 min: as the README's table writes times."""
  if seconds < 20:
    return f"{seconds:.1f} s"
  return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def _run(argv, **kwargs) -> str:
  """stdout of a command that must succeed (else exits naming it)."""
  print(" ".join(argv[1:]), flush=True)
  out = subprocess.run(argv, capture_output=True, text=True, check=False,
                       cwd=ROOT, **kwargs)
  if out.returncode:
    sys.exit(f"error: {' '.join(argv[1:])} failed: "
             f"{out.stderr.strip().splitlines()[-1:]}")
  return out.stdout


def _keep(runs: str, rows: List[dict], name: str) -> None:
  """Appends raw rows to runs/name.jsonl."""
  os.makedirs(runs, exist_ok=True)
  with open(os.path.join(runs, f"{name}.jsonl"), "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def _kept(runs: str, name: str) -> List[dict]:
  path = os.path.join(runs, f"{name}.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{runs} holds no measured runs ({name}.jsonl); pass "
                    "--train to measure them")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def dump(measurements: dict) -> str:
  """measurements.json's text: a line per row (lists and objects that hold
  no others on one line)."""
  text = json.dumps(measurements, indent=1, ensure_ascii=False)
  for flat in (r"\[[^{}\[\]]*\]", r"\{[^{}]*\}"):
    text = re.sub(flat, lambda m: " ".join(m.group().split()), text)
  return text + "\n"


# The README's results: a run folder per launch.py command.

# Where the data was read from, and whether it was analysed: not a run's own.
NOT_SETTINGS = ("workdir", "data_dir", "mnist_dir", "analyses")


@dataclasses.dataclass(frozen=True)
class Row:
  """One launch.py command whose run the results show: its run folder's name
  under --runs, flags beyond --model and --preset (Config field, value), and
  the test accuracy (%) the preset must keep, a requirement, not a result."""
  name: str
  model: str
  preset: str = "tuned"
  flags: Tuple[Tuple[str, object], ...] = ()
  bar: Optional[float] = None

  def args(self) -> List[str]:
    preset = [] if self.preset == "tuned" else [f"--preset={self.preset}"]
    return [f"--model={self.model}", *preset,
            *(f"--{k}={v}" for k, v in self.flags)]

  def command(self) -> str:
    return " ".join(["python", "launch.py", *self.args()])

  def settings(self) -> dict:
    overrides = {k: config_lib.sweep_text(v, self.model) if k == "sweep" else v
                 for k, v in self.flags}
    return comparable(models.get_config(self.model, self.preset, **overrides))


def comparable(config) -> dict:
  """A Config's settings that make a run what it is (NOT_SETTINGS aside)."""
  return {k: v for k, v in config.to_dict().items() if k not in NOT_SETTINGS}


ROWS = (
    Row("linear-tuned", "linear", bar=92.0),
    Row("mlp-tuned", "mlp", bar=98.3),
    Row("cnn-tuned", "cnn", bar=99.2),
    Row("rnn-tuned", "rnn", bar=97.5),
    Row("lstm-tuned", "lstm", bar=98.8),
    Row("gru-tuned", "gru", bar=98.8),
    Row("cnn-tuned-5seeds", "cnn", flags=(("num_seeds", 5),)),
    # A fixed 3-epoch schedule chosen in advance; judged by its seeds' mean.
    Row("cnn-fast-5seeds", "cnn", "fast", bar=99.0, flags=(("num_seeds", 5),)),
    *(Row(f"{m}-best", m, "best") for m in models.MODELS),
)
SWEEP = Row("mlp-sweep", "mlp", flags=(
    ("sweep", "learning_rate=3e-4,1e-3,3e-3,1e-2"), ("num_seeds", 2)))
TUNED = tuple(r for r in ROWS if r.preset == "tuned" and not r.flags)
ENSEMBLE = ROWS[len(TUNED)]
SINGLE_MLP = next(r for r in TUNED if r.model == "mlp")


def run_folders(runs: str) -> List[str]:
  """`runs` if it is a run folder, else the run folders in it (maybe none)."""
  return [runs] if record.is_run(runs) else record.runs_in(runs)


def find(rows: Sequence[Row], runs: str):
  """({row: its finished run folder}, {row: its unfinished run folder}); of
  several finished runs of one command, the one finished last."""
  finished: Dict[Row, str] = {}
  unfinished: Dict[Row, str] = {}
  when = lambda f: os.path.getmtime(os.path.join(f, metrics_log.METRICS_FILE))
  wanted = {row: row.settings() for row in rows}
  for folder in run_folders(runs):
    have = comparable(record.read_config(folder))
    for row in [r for r, want in wanted.items() if want == have]:
      if metrics_log.final_metrics(folder) is None:
        unfinished.setdefault(row, folder)
      elif row not in finished or when(folder) > when(finished[row]):
        finished[row] = folder
  return finished, {r: f for r, f in unfinished.items() if r not in finished}


def require(rows: Sequence[Row], runs: str) -> Dict[Row, str]:
  """{row: its finished run folder}; UserError naming the commands without."""
  finished, unfinished = find(rows, runs)
  missing = [r for r in rows if r not in finished]
  if missing:
    what = "; ".join(
        f"`{r.command()}` " + (f"(unfinished in {unfinished[r]})"
                               if r in unfinished else "(no run)")
        for r in missing)
    raise UserError(f"{len(missing)} of {len(rows)} commands have no finished "
                    f"run in {runs}: {what}; pass --train to train them one "
                    "at a time (unfinished ones resume), or --runs=DIR with "
                    "their run folders")
  return finished


def train_missing(rows: Sequence[Row], runs: str, data_flags: Sequence[str],
                  log=print) -> None:
  """Trains each row without a finished run through launch.py, one at a
  time; an unfinished run resumes, a new one goes to runs/<row.name>."""
  finished, unfinished = find(rows, runs)
  todo = [r for r in rows if r not in finished]
  for row in todo:
    folder = os.path.join(runs, row.name)
    if row not in unfinished and os.path.exists(folder):
      raise UserError(f"{folder} holds no run of `{row.command()}` (another "
                      "version's preset, say); move it out of the way, or pass "
                      "another --runs")
  for i, row in enumerate(todo, 1):
    folder = unfinished.get(row, os.path.join(runs, row.name))
    log(f"[{i}/{len(todo)}] {row.command()} --workdir={folder}")
    sys.stdout.flush()
    status = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), *row.args(),
         f"--workdir={folder}", *data_flags], check=False).returncode
    if status:
      raise UserError(f"`{row.command()} --workdir={folder}` stopped with exit "
                      f"status {status} (its output is above); once that is "
                      "dealt with, run this again: finished runs are reused "
                      "and an unfinished one resumes")


def result(folder: str) -> dict:
  """The figures the docs show of one run: its final row's and its host."""
  final = metrics_log.final_metrics(folder) or {}
  env = record.read_record(folder).get("environment", {})
  out = {k: final[k] for k in ("test_accuracy", "ensemble_test_accuracy",
                               "test_accuracy_mean", "test_accuracy_std",
                               "epochs_run") if k in final}
  out["time_s"] = metrics_log.wall_time(final)
  out["host"] = (f"{env.get('cpu', 'a CPU not recorded')}, jax "
                 f"{env.get('packages', {}).get('jax')}, Python "
                 f"{env.get('python')}")
  if "members" in final:
    out["members"] = len(final["members"])
  if "chosen" in final:
    chosen = final["chosen"]
    out["chosen"] = members_lib.values_text(chosen["values"], chosen["seed"])
  return out


def draw_results(root: str, runs: str, data_flags, log=print) -> None:
  """The figures from the results' run folders: accuracy against time, the
  sweep's sweep.png, the analyses page and (with data) the photo montage."""
  from experiments import compare
  from experiments import compare_figures
  folders = require(ROWS + (SWEEP,), runs)
  source = os.path.join(folders[SWEEP], "sweep.png")
  try:
    with open(source, "rb") as g:
      image = g.read()
  except OSError as e:
    raise UserError(f"cannot read {source} ({e.strerror}); rewrite the run's "
                    f"report: python launch.py --mode=report "
                    f"--workdir={folders[SWEEP]}") from None
  img = os.path.join(root, "docs", "img")
  with files.atomic(os.path.join(img, "sweep_mlp.png"), "wb") as f:
    f.write(image)
  tuned = [folders[r] for r in TUNED]
  name = "accuracy_vs_time.png"
  groups = compare.group([s for f in tuned for s in compare.summarize(f)])
  compare_figures.plot(groups, name, os.path.join(img, name))
  log(f"wrote {img}/sweep_mlp.png and accuracy_vs_time.png")
  write_analyses(root, tuned, log)
  if data_flags:
    from experiments import photo_digits
    photo_digits.main([f"--run={folders[ROWS[2]]}", "--num=12", *data_flags,
                       f"--montage={os.path.join(img, 'photo_digits.png')}"])


def write_analyses(root: str, tuned: Sequence[str], log=print) -> None:
  """docs/analyses.md and docs/img/analysis_*.png from the tuned runs (in
  TUNED's order); says which runs hold no analysis instead."""
  from experiments import compare_figures
  missing = [f for f in tuned
             if not os.path.isdir(os.path.join(f, "analysis"))]
  if missing:
    log(f"docs/analyses.md not written: {', '.join(missing)} hold no analysis; "
        "write each: python launch.py --mode=report --workdir=RUN")
    return
  times = [metrics_log.wall_time(metrics_log.final_metrics(f) or {})
           for f in tuned]
  compare_figures.analysis_page(
      tuned, os.path.join(root, "docs", "analyses.md"),
      os.path.join(root, "docs", "img"), [r.model for r in TUNED], times)
  log("wrote docs/analyses.md and docs/img/analysis_*.png")


def _accuracy(r: dict) -> str:
  if "ensemble_test_accuracy" in r:
    return (f"{_pct(r['ensemble_test_accuracy'])} ensemble; members "
            f"{100 * r['test_accuracy_mean']:.2f} ± "
            f"{100 * r['test_accuracy_std']:.2f}%")
  return _pct(r["test_accuracy"])


def results_table(m: dict) -> str:
  """The README's results table, after a line naming its hosts."""
  results = m["results"]
  hosts = list(dict.fromkeys(results[r.name]["host"] for r in ROWS))
  lines = [f"Run on {'; '.join(hosts)}.", "",
           "| model | preset | test accuracy | bar | epochs | wall time | "
           "command |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for row in ROWS:
    r = results[row.name]
    seeds = dict(row.flags).get("num_seeds")
    cells = [row.model, row.preset + (f", {seeds} seeds" if seeds else ""),
             _accuracy(r), f"{row.bar:.1f}%" if row.bar is not None else "",
             str(r["epochs_run"]), _time(r["time_s"]), f"`{row.command()}`"]
    lines.append(" ".join(["|"] + [c + " |" if c else "|" for c in cells]))
  return "\n".join(lines)


def sweep_paragraphs(m: dict) -> str:
  """docs/performance.md's paragraphs on the sweep and the ensemble."""
  sweep, single = m["results"][SWEEP.name], m["results"][SINGLE_MLP.name]
  ensemble = m["results"][ENSEMBLE.name]
  seeds = dict(ENSEMBLE.flags)["num_seeds"]
  texts = [
      f"The README's sweep, `{SWEEP.command()}` ({sweep['members']} members, "
      f"{sweep['epochs_run']} epochs), took {_time(sweep['time_s'])} against "
      f"{_time(single['time_s'])} for the single run `{SINGLE_MLP.command()}` "
      f"of the results table: {sweep['time_s'] / single['time_s']:.1f}x for "
      f"{sweep['members']} members. Its chosen member ({sweep['chosen']}) "
      f"reaches {_pct(sweep['test_accuracy'])} test accuracy; the single run, "
      f"{_pct(single['test_accuracy'])}.",
      f"Ensembles, one program each: the tuned CNN with `--num_seeds={seeds}` "
      f"reaches {_pct(ensemble['ensemble_test_accuracy'])} test accuracy as an "
      f"ensemble (the mean of the {seeds} members' probabilities), against "
      f"{100 * ensemble['test_accuracy_mean']:.2f} ± "
      f"{100 * ensemble['test_accuracy_std']:.2f}% for its single members, "
      f"in {_time(ensemble['time_s'])}."]
  return "\n\n".join(textwrap.fill(t, 89, break_long_words=False,
                                   break_on_hyphens=False) for t in texts)


# The README's models table, from the registry.

def models_table(_=None) -> str:
  """A row per model: each architecture preset's module, "as X" where it is
  the preset X's to its left."""
  lines = ["| `--model` | seed preset | tuned preset (default) | best preset |",
           "| --- | --- | --- | --- |"]
  for name, spec in models.MODELS.items():
    cells, before = [], ("", "")
    for preset in ("seed", "tuned", "best"):
      text = spec.describe(models.get_config(name, preset))
      cells.append(f"as {before[0]}" if text == before[1] else text)
      before = (preset, text)
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# docs/performance.md's timings.


def train_epochs(args) -> None:
  """benchmark.py by default and with --parallel=none, and PyTorch's
  reference_torch.py, alternated --repeats times: KIND.jsonl in --runs."""
  torch = args.torch_python or (
      sys.executable if importlib.util.find_spec("torch") else None)
  kinds = {"auto": [sys.executable, "benchmark.py", *args.extra],
           "none": [sys.executable, "benchmark.py", "--parallel=none",
                    *args.extra],
           "torch": [torch, "reference_torch.py"]}
  for repeat in range(args.repeats or 2):
    for kind, (python, script, *more) in kinds.items():
      if python:
        out = _run([python, os.path.join(ROOT, "experiments", script),
                    f"--model={args.models}", "--epochs=3", *args.data, *(
                        ["--preset=seed"] if kind != "torch" else []), *more])
        _keep(args.runs, [{**json.loads(line), "round": repeat, "kind": kind,
                           "host": host()} for line in out.splitlines()],
              "epochs")


def measure_epochs(runs: str) -> dict:
  """The seed table's figures: each model's medians, PyTorch's, and the
  ratio of ours to PyTorch's with its range over the rounds."""
  timed = _kept(runs, "epochs")
  by = lambda kind, name: [r for r in timed
                           if r["kind"] == kind and r["model"] == name]
  rows = []
  for name in [n for n in models.MODELS if by("auto", n)]:
    ours, theirs = by("auto", name), by("torch", name)
    median = lambda rs, key="epoch_time_s": statistics.median(
        r[key] for r in rs)
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
  lines = [f"Seconds an epoch on {e['host']}" + (
      f", torch {e['torch']}" if e["torch"] else "") +
           f"; medians of {e['rounds']} alternated runs each, in brackets the "
           "lowest and highest ratio of a run of ours to PyTorch's of the same "
           "round.", "",
           "| model | default | one device | `--parallel=auto` picks | GFLOP/s "
           "(default) | PyTorch | default / PyTorch |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
  for r in e["rows"]:
    theirs = ["-", "-"] if "torch_s" not in r else [
        f"{r['torch_s']:#.3g}", f"{r['ratio']:.2f} ({r['ratio_range'][0]:.2f}-"
        f"{r['ratio_range'][1]:.2f})"]
    lines.append(f"| {r['model']} (batch {r['batch_size']}) | "
                 f"{r['default_s']:#.3g} | {r['none_s']:#.3g} | "
                 f"{r['layout']} | "
                 f"{r['gflops']:.0f} | " + " | ".join(theirs) + " |")
  return "\n".join(lines)


# (row name, launch.py flags, cold runs timed: their medians are kept); each
# is run at every seed offset.
SPEEDRUN = (
    ("5 seeds", ["--model=cnn", "--preset=speedrun", "--num_seeds=5"], 3),
    ("1 seed", ["--model=cnn", "--preset=speedrun", "--num_seeds=1"], 3),
    # The best preset at the fewest epochs (of 18, 12, 8, 6) whose 5-seed mean
    # validation accuracy reached 99.55% (--val_fraction=0.1, seeds 300-304).
    ("to 99.5%", ["--model=cnn", "--preset=best", "--epochs=8",
                  "--num_seeds=5"], 1),
)
ANCHOR = ("| published, not measured here: \"Training a NN to 99% accuracy on "
          "MNIST in 0.76 seconds\" (PyTorch, one epoch) | 1 | 99% | - | 0.76 s "
          "of training | - | - | a laptop's GeForce GTX 1660 Ti GPU |")


def train_speedrun(args) -> None:
  """Each SPEEDRUN command as a new user's first run (no compilation cache)
  into RUNS/NAME-OFFSET, timed from its start to the result line and to its
  exit; their medians in its speedrun.json."""
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
  lines = ["| command | seeds | test accuracy (mean ± std) | ensemble | launch "
           "to result | per seed | launch to exit | host |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
  for r in m["speedrun"]["rows"]:
    spread = f" ± {100 * r['std']:.2f}" if r.get("std") is not None else ""
    exit_s = f"{r['to_exit_s']:.1f} s" + (" (t-SNE map drawn)" if r["tsne"]
                                          else "")
    lines.append(" | ".join([
        f"| `{r['command']}`", str(r["seeds"]),
        f"{100 * r['mean']:.2f}{spread}%",
        _pct(r["ensemble"]) if r.get("ensemble") else "-",
        f"{r['to_result_s']:.1f} s", f"{r['to_result_s'] / r['seeds']:.1f} s",
        exit_s, r["host"]]) + " |")
  return "\n".join(lines + [ANCHOR])


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
  _keep(args.runs, [{**r, "host": host()} for r in startup.measure(
      list(models.MODELS) if args.models == "all" else args.models.split(","),
      "seed", args.repeats or 3, 2, args.data)], "startup")


def measure_startup(runs: str) -> dict:
  """Medians over the rounds of each model's first and warm run, and of the
  first run's phases (each from the mark before it)."""
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
  lines = [f"Seconds on {s['host']}, `--preset=seed`; medians of {s['rounds']} "
           "rounds, each with a new, empty compilation cache.", "",
           "| | " + " | ".join(s["models"]) + " |",
           "| --- |" + " ---: |" * len(s["models"])]
  for said, key in STARTUP_ROWS:
    lines.append(f"| {said} | " + " | ".join(
        f"{v[key]:.2f}" if v[key] else "-" for v in s["models"].values())
                 + " |")
  return "\n".join(lines)


# The members table's rows: (label, model, preset); each is run --epochs=2.
MEMBERS = (("linear (tuned)", "linear", "tuned"),
           ("mlp 512-256 (seed)", "mlp", "seed"),
           ("mlp 1024-1024 (tuned)", "mlp", "tuned"),
           *((f"{m} (tuned)", m, "tuned")
             for m in ("cnn", "rnn", "lstm", "gru")))
MEMBER_KINDS = {"one": [], "seeds": ["--num_seeds=4"],
                "sweep": ["--sweep=learning_rate=3e-4,1e-3,3e-3,1e-2"]}


def _member_flags(model: str, preset: str) -> List[str]:
  """A row's flags; a sweep chooses on validation data, so a preset holding
  out none holds out 10% in all three of its row's runs."""
  held = models.get_config(model, preset).val_fraction
  return [f"--model={model}", f"--preset={preset}", "--epochs=2"] + (
      [] if held else ["--val_fraction=0.1"])


def train_members(args) -> None:
  """Each row's three kinds of run as fresh processes, alternated, after an
  untimed run that prepares the data: members.jsonl in --runs."""
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
                             "host": host(), "wall_time_s": wall(
                                 _member_flags(model, preset) + extra)}
                            for kind, extra in MEMBER_KINDS.items()], "members")


def measure_members(runs: str) -> dict:
  timed, rows = _kept(runs, "members"), []
  for label, model, preset in MEMBERS:
    median = {k: statistics.median([r["wall_time_s"] for r in timed
                                    if r["row"] == label and r["kind"] == k])
              for k in MEMBER_KINDS if any(r["row"] == label for r in timed)}
    if median:
      rows.append({"label": label, "one": median["one"],
                   "seeds": median["seeds"], "sweep": median["sweep"],
                   "seeds_x": median["seeds"] / median["one"],
                   "sweep_x": median["sweep"] / median["one"],
                   "held": "--val_fraction=0.1" in _member_flags(model,
                                                                 preset)})
  return {"host": timed[0]["host"], "rows": rows,
          "rounds": max(r["round"] for r in timed) + 1}


def members_table(m: dict) -> str:
  s = m["members"]
  lines = [f"Seconds of a whole `launch.py --epochs=2` run on {s['host']}; "
           f"medians of {s['rounds']} alternated runs each.", "",
           "| model (preset) | one run | 4 seeds | / one run | "
           "4 learning rates | / one run |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in s["rows"]:
    held = " ¹" if r["held"] else ""
    lines.append(f"| {r['label']}{held} | {r['one']:.1f} | "
                 f"{r['seeds']:.1f} | {r['seeds_x']:.2f}x | {r['sweep']:.1f} | "
                 f"{r['sweep_x']:.2f}x |")
  return "\n".join(lines + [
      "", "¹ Its preset holds out no validation data, which a sweep chooses "
      "on: all three of its runs add `--val_fraction=0.1`."])


# Table name -> (its doc, what writes it from the measurements, what measures
# it (--train), what reads its figures from --runs).
TABLES: Dict[str, Tuple[str, Callable[[dict], str], Optional[Callable],
                        Optional[Callable[[str], dict]]]] = {
    "results": (README, results_table, None, lambda runs: {
        r.name: result(f) for r, f in require(ROWS + (SWEEP,), runs).items()}),
    "models": (README, models_table, None, None),
    "epochs": (PERFORMANCE, epochs_table, train_epochs, measure_epochs),
    "speedrun": (PERFORMANCE, speedrun_table, train_speedrun, measure_speedrun),
    "startup": (PERFORMANCE, startup_table, train_startup, measure_startup),
    "members": (PERFORMANCE, members_table, train_members, measure_members),
    "sweep": (PERFORMANCE, sweep_paragraphs, None, None),
}


def texts(root: str, measurements: dict) -> Dict[str, str]:
  """{doc path: its text with every table written from `measurements`}."""
  out = {}
  for doc in dict.fromkeys(doc for doc, *_ in TABLES.values()):
    path = os.path.join(root, doc)
    with open(path, encoding="utf-8") as f:
      out[path] = f.read()
  for name, (doc, write, *_) in TABLES.items():
    path = os.path.join(root, doc)
    out[path] = replace_block(out[path], name, write(measurements), path)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--table", choices=sorted(TABLES), help="the one measured")
  p.add_argument("--runs", help="the folder of its runs (or run folders)")
  p.add_argument("--train", action="store_true", help="measure it first")
  p.add_argument("--check", action="store_true", help="write nothing")
  p.add_argument("--root", default=ROOT, help="the checkout to rewrite")
  p.add_argument("--mnist_dir")
  p.add_argument("--data_dir")
  p.add_argument("--models", default="all", help="epochs, startup, members")
  p.add_argument("--repeats", type=int, help="alternated rounds (epochs, "
                 "members: 2), rounds of a new compilation cache (startup: 3), "
                 "cold runs of each command (speedrun: SPEEDRUN's)")
  p.add_argument("--offsets", default="5000,7000",
                 help="speedrun: the seeds of its runs (none was chosen on)")
  p.add_argument("--torch_python", help="epochs: the Python that runs "
                 "reference_torch.py (default: this one, if it has PyTorch)")
  p.add_argument("extra", nargs="*", help="after --: more benchmark.py or "
                 "launch.py flags for every run (tests)")
  args = p.parse_args(argv)
  args.data = [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
               if (v := getattr(args, k))]
  if (args.train or args.runs) and not (args.table and args.runs):
    p.error("--train and --runs take --table=NAME and --runs=DIR")
  path = os.path.join(args.root, MEASUREMENTS)
  with open(path, encoding="utf-8") as f:
    measurements = json.load(f)
  if args.table and args.runs:
    _, _, train, measure = TABLES[args.table]
    if measure is None:
      p.error(f"--table={args.table} is written from the registry or other "
              "tables' measurements: nothing to measure")
    if args.train and args.table == "results":
      train_missing(ROWS + (SWEEP,), args.runs, args.data)
    elif args.train and train:
      train(args)
    measurements[args.table] = measure(args.runs)
  new = texts(args.root, measurements)  # Markers checked before any write.
  if args.table == "results" and args.runs and not args.check:
    draw_results(args.root, args.runs, args.data)
  if args.check:
    stale = []
    for doc, text in new.items():
      with open(doc, encoding="utf-8") as f:
        stale += [doc] if f.read() != text else []
    print("out of date: " + ", ".join(stale) if stale else
          "every table matches the measurements")
    return 1 if stale else 0
  files.write_text(path, dump(measurements))
  for doc, text in new.items():
    files.write_text(doc, text)
  print(f"wrote {', '.join(new)} and {path}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

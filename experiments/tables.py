r"""Writes every table the docs hold, from docs/measurements.json.

  python experiments/tables.py [--check]   # --check: which differ; no writes
  # Measure a table here (its runs kept in --runs), keep its figures in
  # docs/measurements.json, then write it (results, best: train those missing):
  python experiments/tables.py --table=epochs --train --runs=runs/epochs \
      --mnist_dir=DIR

Each table (TABLES) lies between `<!-- tables.py: NAME -->` and
`<!-- tables.py: end -->` in its doc, naming its host and releases. --runs
alone reads a table's figures again from the runs kept there; results also
draws docs/img/accuracy_vs_time.png, sweep_mlp.png and docs/analyses.md (with
--mnist_dir or --data_dir, the photo montage too) from its run folders.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.training import members as members_lib

from experiments import performance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
PERFORMANCE = os.path.join("docs", "performance.md")
MEASUREMENTS = os.path.join("docs", "measurements.json")
END = "<!-- tables.py: end -->"


def replace_block(text: str, name: str, content: str, path: str) -> str:
  """`text` with `content` between `name`'s markers: every table's rewrite."""
  pattern = re.compile(rf"(<!-- tables\.py: {re.escape(name)} -->\n).*?"
                       rf"(\n{re.escape(END)})", re.S)
  if len(pattern.findall(text)) != 1:
    raise UserError(f"{path} has no (or more than one) block between "
                    f"`<!-- tables.py: {name} -->` and `{END}`; put the "
                    "markers back around it")
  return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def parser(doc: str) -> argparse.ArgumentParser:
  """A script's flags (its docstring around them) with launch.py's data's."""
  p = argparse.ArgumentParser(
      description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mnist_dir", help="the folder of MNIST's four IDX files")
  p.add_argument("--data_dir", help="where the data is prepared (tfds's)")
  return p


def script(main: Callable[[], Optional[int]]) -> None:
  """Runs a script's main: exits with its status, a UserError as one line."""
  try:
    sys.exit(main())
  except UserError as e:
    sys.exit(f"error: {e}")


def _pct(fraction: float) -> str:
  return f"{100 * fraction:.2f}%"


def _time(seconds: float) -> str:
  """3.6 s, 78 s, 15.8 min: as the README's table writes times."""
  if seconds < 20:
    return f"{seconds:.1f} s"
  return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def dump(measurements: dict) -> str:
  """measurements.json's text, innermost lists and objects on one line."""
  text = json.dumps(measurements, indent=1, ensure_ascii=False)
  for flat in (r"\[[^{}\[\]]*\]", r"\{[^{}]*\}"):
    text = re.sub(flat, lambda m: " ".join(m.group().split()), text)
  return text + "\n"


# Where the data was read from, and whether it was analysed: not a run's own.
NOT_SETTINGS = ("workdir", "data_dir", "mnist_dir", "analyses")


@dataclasses.dataclass(frozen=True)
class Row:
  """A command's row: its run folder, flags, the % its preset must keep."""
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
    return comparable(models.get_config(self.model, self.preset, **{
        k: config_lib.sweep_text(v, self.model) if k == "sweep" else v
        for k, v in self.flags}))


def comparable(config) -> dict:
  """A Config's settings that make a run what it is (NOT_SETTINGS aside)."""
  return {k: v for k, v in config.to_dict().items() if k not in NOT_SETTINGS}


# The README's results: a run folder per launch.py command.
ROWS = (
    *(Row(f"{m}-tuned", m, bar=bar) for m, bar in (
        ("linear", 92.0), ("mlp", 98.3), ("cnn", 99.2), ("rnn", 97.5),
        ("lstm", 98.8), ("gru", 98.8))),
    Row("cnn-tuned-5seeds", "cnn", flags=(("num_seeds", 5),)),
    # A fixed 3-epoch schedule chosen in advance; judged by its seeds' mean.
    Row("cnn-fast-5seeds", "cnn", "fast", bar=99.0, flags=(("num_seeds", 5),)))
# The best presets, judged by seeds 0 to N-1's mean (chosen on seed 100's).
BEST = tuple(Row(f"{m}-best", m, "best",
                 flags=(("num_seeds", 5 if m == "cnn" else 3),))
             for m in models.MODELS)
SWEEP = Row("mlp-sweep", "mlp", flags=(
    ("sweep", "learning_rate=3e-4,1e-3,3e-3,1e-2"), ("num_seeds", 2)))
TUNED = tuple(r for r in ROWS if r.preset == "tuned" and not r.flags)
ENSEMBLE = ROWS[len(TUNED)]
SINGLE_MLP = next(r for r in TUNED if r.model == "mlp")


def find(rows: Sequence[Row], runs: str):
  """({row: its run finished last}, {row: its unfinished run folder})."""
  finished: Dict[Row, str] = {}
  unfinished: Dict[Row, str] = {}
  when = lambda f: os.path.getmtime(os.path.join(f, metrics_log.METRICS_FILE))
  wanted = {row: row.settings() for row in rows}
  for folder in performance.run_folders(runs):
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
  """Trains each row unfinished through launch.py (resumed, or in runs/NAME)."""
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
    seeds = [m.get("test_accuracy") for m in final["members"]]
    if None not in seeds and not any(m.get("values") for m in final["members"]):
      out["seeds"] = seeds  # Seeds alone, each with its test accuracy.
  if chosen := final.get("chosen"):
    out["chosen"] = members_lib.values_text(chosen["values"], chosen["seed"])
  return out


def draw_results(root: str, runs: str, data_flags, log=print) -> None:
  """The results' figures, docs/analyses.md and (with data) photo montage."""
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
  missing = [f for f in tuned if not os.path.isdir(os.path.join(f, "analysis"))]
  if missing:  # docs/analyses.md from the tuned runs, in TUNED's order.
    log(f"docs/analyses.md not written: {', '.join(missing)} hold no analysis; "
        "write each: python launch.py --mode=report --workdir=RUN")
  else:
    compare_figures.analysis_page(
        tuned, os.path.join(root, "docs", "analyses.md"), img,
        [r.model for r in TUNED],
        [metrics_log.wall_time(metrics_log.final_metrics(f) or {})
         for f in tuned])
    log("wrote docs/analyses.md and docs/img/analysis_*.png")
  if data_flags:
    from experiments import photo_digits
    photo_digits.main([f"--run={folders[ROWS[2]]}", "--num=12", *data_flags,
                       f"--montage={os.path.join(img, 'photo_digits.png')}"])


def _spread(r: dict) -> str:  # Its members' test accuracy, mean ± std.
  return (f"{100 * r['test_accuracy_mean']:.2f} ± "
          f"{100 * r['test_accuracy_std']:.2f}%")


def _runs_table(figures: dict, rows: Sequence[Row], head: str, align: str,
                cells: Callable[[Row, dict], list]) -> str:
  hosts = dict.fromkeys(figures[r.name]["host"] for r in rows)
  return "\n".join([f"Run on {'; '.join(hosts)}.", "", *performance.table(
      head, align, [cells(r, figures[r.name]) for r in rows])])


def results_table(m: dict) -> str:
  def cells(row: Row, r: dict) -> list:
    seeds = dict(row.flags).get("num_seeds")
    return [row.model, row.preset + (f", {seeds} seeds" if seeds else ""),
            f"{_pct(r['ensemble_test_accuracy'])} ensemble; members "
            f"{_spread(r)}" if "ensemble_test_accuracy" in r else
            _pct(r["test_accuracy"]),
            f"{row.bar:.1f}%" if row.bar is not None else "",
            str(r["epochs_run"]), _time(r["time_s"]), f"`{row.command()}`"]
  return _runs_table(m["results"], ROWS, "model | preset | test accuracy | "
                     "bar | epochs | wall time | command", "l" * 7, cells)


def best_table(m: dict) -> str:
  return _runs_table(m["best"], BEST, "model | seeds | test accuracy, mean ± "
                     "std | lowest, highest | ensemble | epochs | wall time "
                     "(per seed) | command", "lrlllrll", lambda row, r: [
                         row.model, str(len(r["seeds"])), _spread(r),
                         f"{_pct(min(r['seeds']))}, {_pct(max(r['seeds']))}",
                         _pct(r["ensemble_test_accuracy"]),
                         str(r["epochs_run"]), f"{_time(r['time_s'])} "
                         f"({_time(r['time_s'] / len(r['seeds']))})",
                         f"`{row.command()}`"])


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
      f"{_spread(ensemble)} for its single members, in "
      f"{_time(ensemble['time_s'])}."]
  return "\n\n".join(textwrap.fill(t, 89, break_long_words=False,
                                   break_on_hyphens=False) for t in texts)


def models_table(_=None) -> str:
  """Each preset's module, a row per model ("as X": preset X's to its left)."""
  rows = []
  for name, spec in models.MODELS.items():
    cells, before = [f"`{name}`"], ("", "")
    for preset in ("seed", "tuned", "best"):
      text = spec.describe(models.get_config(name, preset))
      cells.append(f"as {before[0]}" if text == before[1] else text)
      before = (preset, text)
    rows.append(cells)
  return "\n".join(performance.table("`--model` | seed preset | tuned preset "
                                     "(default) | best preset", "llll", rows))


def of_runs(rows: Sequence[Row]) -> Tuple[Callable, Callable[[str], dict]]:
  """(--train's train_missing of `rows`, their figures from their runs)."""
  return (lambda args: train_missing(rows, args.runs, args.data),
          lambda runs: {r.name: result(f)
                        for r, f in require(rows, runs).items()})


# Name -> (its doc, its writer, what measures it (--train), what reads --runs).
TABLES: Dict[str, Tuple[str, Callable[[dict], str], Optional[Callable],
                        Optional[Callable[[str], dict]]]] = {
    "results": (README, results_table, *of_runs(ROWS + (SWEEP,))),
    "best": (README, best_table, *of_runs(BEST)),
    "models": (README, models_table, None, None),
    **{name: (PERFORMANCE, *timed)
       for name, timed in performance.TABLES.items()},
    "sweep": (PERFORMANCE, sweep_paragraphs, None, None),
}


def texts(root: str, measurements: dict) -> Dict[str, List[str]]:
  """{doc path: [its text, that with every table written]}."""
  out: Dict[str, List[str]] = {}
  for name, (doc, write, *_) in TABLES.items():
    path = os.path.join(root, doc)
    if path not in out:
      with open(path, encoding="utf-8") as f:
        out[path] = [f.read()] * 2
    out[path][1] = replace_block(out[path][1], name, write(measurements), path)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = parser(__doc__)
  p.add_argument("--table", choices=sorted(TABLES), help="the one measured")
  p.add_argument("--runs", help="the folder of its runs (or run folders)")
  p.add_argument("--train", action="store_true", help="measure it first")
  p.add_argument("--check", action="store_true", help="write nothing")
  p.add_argument("--root", default=ROOT, help="the checkout to rewrite")
  p.add_argument("--models", default="all", help="epochs, startup, members")
  p.add_argument("--repeats", type=int, help="rounds (epochs, members: 2; "
                 "startup: 3) or cold runs a command (speedrun: SPEEDRUN's)")
  p.add_argument("--offsets", default="5000,7000", help="speedrun: seeds")
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
    if args.train and train:
      train(args)
    measurements[args.table] = measure(args.runs)
  new = texts(args.root, measurements)  # Markers checked before any write.
  if args.table == "results" and args.runs and not args.check:
    draw_results(args.root, args.runs, args.data)
  if args.check:
    stale = [doc for doc, (old, text) in new.items() if old != text]
    print("out of date: " + ", ".join(stale) if stale else
          "every table matches the measurements")
    return 1 if stale else 0
  files.write_text(path, dump(measurements))
  for doc, (_, text) in new.items():
    files.write_text(doc, text)
  print(f"wrote {', '.join(new)} and {path}")
  return 0


if __name__ == "__main__":
  script(main)

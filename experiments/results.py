"""Writes the README's results table, and what docs show from its runs, from runs.

  # Train what is missing (one run at a time; finished runs are reused), then
  # rewrite everything below:
  python experiments/results.py --train --runs=runs/results --mnist_dir=DIR
  # Rewrite from runs trained before (a folder of run folders):
  python experiments/results.py --runs=runs/results
  # Say which runs are missing and whether README.md and docs/performance.md
  # match them; write nothing:
  python experiments/results.py --runs=runs/results --check

Each result is the run of one launch.py command, declared once below in ROWS
(the README's results table) and SWEEP (the README's sweep figure). A run
folder is a command's run when its config.json holds the command's settings
(where the data was read from aside). Without a finished run for every
command nothing is written: the error names the missing commands.

Writes, each between the marker lines `<!-- results.py: NAME -->` and
`<!-- results.py: end -->`: README.md's `table` and `analyses` (its headline
figure); docs/performance.md's `fast`, `ensemble` and `sweep` paragraphs. And
two figures: docs/img/accuracy_vs_time.png (the tuned runs, as compare.py
draws them) and docs/img/sweep_mlp.png (the sweep run's own sweep.png). And
docs/analyses.md with docs/img/analysis_*.png: what the six tuned models
learned, side by side, from their run folders' analysis/ (a run's report
writes it; `launch.py --mode=report --workdir=RUN` writes it again).

Times are a run's wall time, `wall_time_s` as the README defines it (the
data's preparation apart).
"""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.results import analysis
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.training import members as members_lib
from experiments import compare
# pylint: enable=g-import-not-at-top,wrong-import-position

# Where the data was read from (and whether it was analysed) does not change a run.
NOT_SETTINGS = ("workdir", "data_dir", "mnist_dir", "analyses")
END = "<!-- results.py: end -->"


@dataclasses.dataclass(frozen=True)
class Row:
  """One launch.py command whose run the results show.

  name: its run folder's name under --runs. flags: launch.py flags beyond
  --model and --preset, as (Config field, value) pairs. bar: the test
  accuracy (%) the preset must keep, a requirement rather than a result.
  """
  name: str
  model: str
  preset: str = "tuned"
  flags: Tuple[Tuple[str, object], ...] = ()
  bar: Optional[float] = None

  def args(self) -> List[str]:
    preset = [] if self.preset == "tuned" else [f"--preset={self.preset}"]
    return ([f"--model={self.model}"] + preset +
            [f"--{k}={v}" for k, v in self.flags])

  def command(self) -> str:
    return " ".join(["python", "launch.py", *self.args()])

  def config(self):
    """The Config launch.py makes of the command."""
    overrides = {k: config_lib.sweep_text(v, self.model) if k == "sweep" else v
                 for k, v in self.flags}
    return models.get_config(self.model, self.preset, **overrides)

  def settings(self) -> dict:
    return comparable(self.config())


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
    Row("linear-best", "linear", "best"),
    Row("mlp-best", "mlp", "best"),
    Row("cnn-best", "cnn", "best"),
    Row("rnn-best", "rnn", "best"),
    Row("lstm-best", "lstm", "best"),
    Row("gru-best", "gru", "best"),
)
SWEEP = Row("mlp-sweep", "mlp", flags=(
    ("sweep", "learning_rate=3e-4,1e-3,3e-3,1e-2"), ("num_seeds", 2)))
TUNED = tuple(r for r in ROWS if r.preset == "tuned" and not r.flags)
FAST = next(r for r in ROWS if r.preset == "fast")
ENSEMBLE = next(r for r in ROWS if dict(r.flags).get("num_seeds", 1) > 1
                and r.preset == "tuned")
SINGLE_MLP = next(r for r in TUNED if r.model == "mlp")

README = "README.md"
PERFORMANCE = os.path.join("docs", "performance.md")
ACCURACY_VS_TIME = os.path.join("docs", "img", "accuracy_vs_time.png")
ANALYSES = os.path.join("docs", "analyses.md")  # Its figures: docs/img/.
HEADLINE = ("![Test accuracy of the six tuned models under rotation, shift, "
            "scaling, noise, occlusion and stroke thickness]"
            "(docs/img/analysis_robustness.png)\n\nWhat each tuned model "
            "learned, side by side: how far it must read, what breaks it, "
            "where it looks, how sure it is ([docs/analyses.md]"
            "(docs/analyses.md)).")
SWEEP_FIGURE = os.path.join("docs", "img", "sweep_mlp.png")


# Finding each command's run.


def find(rows: Sequence[Row], runs: str) -> Tuple[Dict[Row, str], Dict[Row, str]]:
  """({row: its finished run folder}, {row: its unfinished run folder}).

  Run folders are `runs` and the run folders in it. Of several finished runs
  of one command, the one finished last is taken.
  """
  finished, unfinished = {}, {}
  wanted = {row: row.settings() for row in rows}
  for folder in run_folders(runs):
    have = comparable(record.read_config(folder))
    for row, want in wanted.items():
      if have != want:
        continue
      if metrics_log.final_metrics(folder) is None:
        unfinished.setdefault(row, folder)
      elif row not in finished or _finished_at(folder) > _finished_at(
          finished[row]):
        finished[row] = folder
  return finished, {r: f for r, f in unfinished.items() if r not in finished}


def run_folders(runs: str) -> List[str]:
  """`runs` if it is a run folder, else the run folders in it (maybe none)."""
  if os.path.exists(os.path.join(runs, record.CONFIG_FILE)):
    return [runs]
  if not os.path.isdir(runs):
    return []
  return sorted(os.path.join(runs, d) for d in os.listdir(runs) if os.path.exists(
      os.path.join(runs, d, record.CONFIG_FILE)))


def _finished_at(folder: str) -> float:
  return os.path.getmtime(os.path.join(folder, metrics_log.METRICS_FILE))


def require(rows: Sequence[Row], runs: str) -> Dict[Row, dict]:
  """{row: its run's final metrics row, plus `run` and `time_s`}.

  Raises:
    UserError: some command has no finished run in `runs`.
  """
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
  return {r: _result(finished[r]) for r in rows}


def _result(folder: str) -> dict:
  final = dict(metrics_log.final_metrics(folder))
  final["run"] = folder
  final["time_s"] = metrics_log.wall_time(final)
  return final


# Training the missing runs.


def train_missing(rows: Sequence[Row], runs: str, data_flags: Sequence[str],
                  log=print) -> None:
  """Trains each row without a finished run through launch.py, one at a time.

  An unfinished run of the command resumes where it stopped; a new one goes to
  `runs/<row.name>`.

  Raises:
    UserError: a launch.py run failed (its own error is printed above), or
      `runs/<row.name>` holds something else.
  """
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
    command = [sys.executable, os.path.join(ROOT, "launch.py"), *row.args(),
               f"--workdir={folder}", *data_flags]
    log(f"[{i}/{len(todo)}] {row.command()} --workdir={folder}")
    sys.stdout.flush()
    status = subprocess.run(command, check=False).returncode
    if status:
      raise UserError(f"`{row.command()} --workdir={folder}` stopped with exit "
                      f"status {status} (its output is above); once that is "
                      "dealt with, run this again: finished runs are reused "
                      "and an unfinished one resumes")


# What is written.


def _time(seconds: float) -> str:
  """3.6 s, 78 s, 15.8 min: as the README's table writes times."""
  if seconds < 20:
    return f"{seconds:.1f} s"
  if seconds < 600:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.1f} min"


def _pct(fraction: float) -> str:
  return f"{100 * fraction:.2f}%"


def _accuracy(final: dict) -> str:
  if "ensemble_test_accuracy" in final:
    return (f"{_pct(final['ensemble_test_accuracy'])} ensemble; members "
            f"{100 * final['test_accuracy_mean']:.2f} ± "
            f"{100 * final['test_accuracy_std']:.2f}%")
  return _pct(final["test_accuracy"])


def _preset(row: Row) -> str:
  seeds = dict(row.flags).get("num_seeds", 1)
  return row.preset + (f", {seeds} seeds" if seeds > 1 else "")


TABLE_HEADER = ("| model | preset | test accuracy | bar | epochs | wall time | "
                "command |\n| --- | --- | --- | --- | --- | --- | --- |")


def hosts(results: Dict[Row, dict]) -> str:
  """Where the runs ran, from their config.json: CPU, cores and releases."""
  seen = []
  for final in results.values():
    env = record.read_record(final["run"]).get("environment", {})
    where = (f"{env.get('cpu', 'a CPU not recorded')}, jax "
             f"{env.get('packages', {}).get('jax')}, Python {env.get('python')}")
    if where not in seen:
      seen.append(where)
  return "; ".join(seen)


def table(results: Dict[Row, dict]) -> str:
  """The README's results table, a line per row of ROWS, after a line
  naming the host and releases of its runs."""
  lines = [f"Run on {hosts(results)}.", "", TABLE_HEADER]
  for row in ROWS:
    final = results[row]
    cells = [row.model, _preset(row), _accuracy(final),
             f"{row.bar:.1f}%" if row.bar is not None else "",
             str(final["epochs_run"]), _time(final["time_s"]),
             f"`{row.command()}`"]
    lines.append(" ".join(["|"] + [c + " |" if c else "|" for c in cells]))
  return "\n".join(lines)


def fast_paragraph(final: dict) -> str:
  return (f"{100 * final['test_accuracy_mean']:.2f} ± "
          f"{100 * final['test_accuracy_std']:.2f}% mean test accuracy over "
          f"{len(final['members'])} seeds after {final['epochs_run']} epochs, "
          f"trained as one program in {_time(final['time_s'])} (wall time "
          "less loading the data; compilation included).")


def ensemble_paragraph(final: dict) -> str:
  seeds = len(final["members"])
  return (f"Ensembles, one program each: the tuned CNN with `--num_seeds={seeds}` "
          f"reaches {_pct(final['ensemble_test_accuracy'])} test accuracy as an "
          f"ensemble (the mean of the {seeds} members' probabilities), against "
          f"{100 * final['test_accuracy_mean']:.2f} ± "
          f"{100 * final['test_accuracy_std']:.2f}% for its single members, "
          f"in {_time(final['time_s'])}.")


def sweep_paragraph(sweep: dict, single: dict) -> str:
  chosen = sweep["chosen"]
  label = members_lib.values_text(chosen["values"], chosen["seed"])
  members = len(sweep["members"])
  return (f"The README's sweep, `{SWEEP.command()}` ({members} members, "
          f"{sweep['epochs_run']} epochs), took {_time(sweep['time_s'])} against "
          f"{_time(single['time_s'])} for the single run `{SINGLE_MLP.command()}` "
          f"of the results table: {sweep['time_s'] / single['time_s']:.1f}x for "
          f"{members} members. Its chosen member "
          f"({label}) reaches "
          f"{_pct(sweep['test_accuracy'])} test accuracy; the single run, "
          f"{_pct(single['test_accuracy'])}.")


def replace_block(text: str, name: str, content: str, path: str) -> str:
  """`text` with the lines between `<!-- results.py: name -->` and END replaced."""
  pattern = re.compile(rf"(<!-- results\.py: {re.escape(name)} -->\n).*?"
                       rf"(\n{re.escape(END)})", re.S)
  if len(pattern.findall(text)) != 1:
    raise UserError(f"{path} has no (or more than one) block between "
                    f"`<!-- results.py: {name} -->` and `{END}`; put the markers "
                    "back around it")
  return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def texts(root: str, results: Dict[Row, dict]) -> Dict[str, str]:
  """{file path: its new text} for README.md and docs/performance.md."""
  out = {}
  path = os.path.join(root, README)
  with open(path, encoding="utf-8") as f:
    text = replace_block(f.read(), "table", table(results), path)
    out[path] = replace_block(text, "analyses", HEADLINE, path)
  path = os.path.join(root, PERFORMANCE)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  for name, paragraph in (
      ("fast", fast_paragraph(results[FAST])),
      ("ensemble", ensemble_paragraph(results[ENSEMBLE])),
      ("sweep", sweep_paragraph(results[SWEEP], results[SINGLE_MLP]))):
    content = textwrap.fill(paragraph, 89, break_long_words=False,
                            break_on_hyphens=False)
    text = replace_block(text, name, content, path)
  out[path] = text
  return out


def write(root: str, results: Dict[Row, dict], log=print) -> None:
  """Rewrites the marked blocks and the two figures from `results`; reads
  and checks everything first."""
  source = os.path.join(results[SWEEP]["run"], "sweep.png")
  try:
    with open(source, "rb") as f:
      image = f.read()
  except OSError as e:
    raise UserError(f"cannot read {source} ({e.strerror}); rewrite the run's "
                    f"report: python launch.py --mode=report "
                    f"--workdir={results[SWEEP]['run']}") from None
  new = texts(root, results)
  for path, text in new.items():
    files.write_text(path, text)
    log(f"wrote {path}")
  summaries = [compare.summarize(results[r]["run"]) for r in TUNED]
  path = os.path.join(root, ACCURACY_VS_TIME)
  compare.plot_accuracy_time(compare.group(summaries), path)
  log(f"wrote {path}")
  path = os.path.join(root, SWEEP_FIGURE)
  with files.atomic(path, "wb") as f:
    f.write(image)
  log(f"wrote {path} (from {source})")
  write_analyses(root, results, log)


def unanalysed(results: Dict[Row, dict]) -> List[str]:
  """The tuned runs without an analysis/ (a run written without it)."""
  return [results[r]["run"] for r in TUNED if not os.path.exists(os.path.join(
      results[r]["run"], analysis.FOLDER, analysis.SUMMARY))]


def write_analyses(root: str, results: Dict[Row, dict], log=print) -> None:
  """docs/analyses.md and docs/img/analysis_*.png from the tuned runs'
  analyses; says which runs lack one instead (and writes nothing)."""
  missing = unanalysed(results)
  if missing:
    log(f"{ANALYSES} not written: {', '.join(missing)} hold no analysis; "
        "write each: python launch.py --mode=report --workdir=RUN")
    return
  path = compare.analysis_page(
      [results[r]["run"] for r in TUNED], os.path.join(root, ANALYSES),
      os.path.join(root, "docs", "img"), [r.model for r in TUNED],
      [results[r]["time_s"] for r in TUNED])
  log(f"wrote {path} and its figures docs/img/analysis_*.png")


def check(root: str, runs: str, log=print) -> bool:
  """Says what is missing or out of date, writing nothing; True if neither."""
  rows = ROWS + (SWEEP,)
  finished, unfinished = find(rows, runs)
  for row in rows:
    state = (f"finished in {finished[row]}" if row in finished else
             f"unfinished in {unfinished[row]}" if row in unfinished else
             "no run")
    log(f"{row.command()}: {state}")
  if len(finished) < len(rows):
    return False
  results = {r: _result(f) for r, f in finished.items()}
  stale = []
  for path, text in texts(root, results).items():
    with open(path, encoding="utf-8") as f:
      if f.read() != text:
        stale.append(path)
  missing = unanalysed(results)
  if missing:
    log(f"without analysis (for {ANALYSES}): {', '.join(missing)}")
  log("out of date: " + ", ".join(stale) if stale else
      "README.md and docs/performance.md match the runs")
  return not stale


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  data_flags = [f"--{k}={getattr(args, k)}" for k in ("data_dir", "mnist_dir")
                if getattr(args, k)]
  if data_flags and not args.train:
    raise UserError("--data_dir and --mnist_dir are for --train: the runs "
                    "already hold their results")
  if args.check:
    return 0 if check(args.root, args.runs) else 1
  rows = ROWS + (SWEEP,)
  if args.train:
    train_missing(rows, args.runs, data_flags)
  write(args.root, require(rows, args.runs))
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default=os.path.join("runs", "results"),
                      help="the folder of run folders (default: %(default)s)")
  parser.add_argument("--train", action="store_true",
                      help="first train the commands without a finished run")
  parser.add_argument("--check", action="store_true",
                      help="say what is missing or out of date; write nothing")
  parser.add_argument("--data_dir", help="--train: launch.py's --data_dir")
  parser.add_argument("--mnist_dir", help="--train: launch.py's --mnist_dir")
  parser.add_argument("--root", default=ROOT,
                      help="the checkout whose README.md and docs/ are "
                      "rewritten (default: this one)")
  return parser


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

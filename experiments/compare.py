r"""Compares finished runs (or trains them first): tables, plots, analyses.

  # Compare run folders (a folder of run folders works too):
  python experiments/compare.py runs/linear runs/cnn runs/gru --out=comparison
  # Train each model (and seed) first, then compare; finished runs are reused:
  python experiments/compare.py --train=linear,mlp,cnn,rnn,lstm,gru \
      --seeds=0,1,2 --runs_root=runs/compare --out=comparison
  # Train several values of settings a --sweep cannot vary (one run each):
  python experiments/compare.py --train=mlp --vary=mlp_hidden=256/512,256 \
      --vary=dropout=0/0.2 --out=comparison

Writes OUT/comparison.md and OUT/comparison.csv (one row per configuration:
mean and sample standard deviation (n-1, as report.md) over its seeds),
OUT/runs.csv (one row per run and seed), and OUT/accuracy.png,
OUT/accuracy_vs_time.png, OUT/learning_curves.png, and OUT/analysis.md with
OUT/analysis_*.png: what each model learned, side by side (one run folder
per configuration, its chosen member; a folder without analysis/ gets it
written first), with a summary table (parameters, train time, test accuracy,
calibration error before and after temperature scaling, accuracy at 20
degrees and at noise 0.3, rows read to reach 99% of the final accuracy);
--no-analyses skips it. Every member of a --num_seeds or --sweep run counts
as the run of its own configuration and seed; they trained together, in one
program, whose time comparison.md's table shows once with its members (no ±),
while runs.csv, the means and the time figure charge each its share (the
run's times divided by its members). A model is counted once: a run folder
and a member of another run with the same settings and seed are one run (the
run folder is kept), and comparison.md says which was left out. A diverged
run or member (a metrics row that says so, or a test or last training loss
that is not finite) is named in comparison.md and runs.csv and left out of
the table, means and plots. A folder not compared (no config.json, one that
is not valid JSON, no final test metrics: unfinished, or diverged) is named
with why in comparison.md and runs.csv (its `skipped` column) and a line on
stderr; the others are compared, and with none left the command exits 1.
Times are a run's wall time (`wall_time_s`, as the README defines it: the
data's preparation apart); epoch times and examples/s are medians over the
epochs timed whole. Configurations of one model are ordered by the values
that tell them apart, numbers as numbers.
"""

import argparse
import itertools
import json
import math
import os
import re
import sys
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.data import pipeline
from mnist_jax.results import analysis
from mnist_jax.results import analysis_plots
from mnist_jax.results import plots
from mnist_jax.results.plots import MARKERS, plt
from matplotlib import ticker
from mnist_jax.results import run as results_run
from mnist_jax import files
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics
from mnist_jax import modes as run_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# Settings that do not change what is trained: runs differing only in these
# (and the seed) are repeats of one configuration.
NOT_CONFIGURATION = ("seed", "workdir", "data_dir", "mnist_dir", "chunk_steps",
                     "num_seeds", "sweep", "analyses")
# What a comparison writes into --out (the analyses unless --no-analyses;
# analysis_reading.png where a run reads row by row, a recurrent model).
TABLES = ("comparison.md", "comparison.csv", "runs.csv")
PLOTS = ("accuracy.png", "accuracy_vs_time.png", "learning_curves.png")
ANALYSIS_PAGE = "analysis.md"
# analysis.md's figures: (title, file, draw, a key the runs it shows hold).
ANALYSIS_FIGURES = (
    ("How far it must read", "analysis_reading.png", analysis_plots.reading,
     "reading_accuracy"),
    ("What breaks it", "analysis_robustness.png", analysis_plots.robustness,
     None),
    ("How sure it is", "analysis_reliability.png", analysis_plots.reliability,
     None),
    ("What it learned (PCA)", "analysis_pca.png", analysis_plots.maps, None),
    ("Where it looks", "analysis_attributions.png",
     lambda results, path: compare_attributions(results, path), None),
)


def find_runs(paths: Sequence[str], skipped: list) -> List[str]:
  """Run folders among `paths` (each one, or a folder of them), each once;
  a path that holds none goes into `skipped` as (path, what, what to do)."""
  unique = {}  # Real path: the first path given to it.
  for path in paths:
    subs, problem = _runs_in(path)
    if problem:
      skipped.append((path, *problem))
    for sub in subs:
      unique.setdefault(os.path.realpath(sub), sub)
  return list(unique.values())


def _is_run(path: str) -> bool:
  """A run folder: its config.json, or its metrics.jsonl (config.json lost)."""
  return any(os.path.isfile(os.path.join(path, name))
             for name in (record.CONFIG_FILE, metrics_log.METRICS_FILE))


def _runs_in(path: str) -> Tuple[List[str], Optional[Tuple[str, str]]]:
  """([path] if a run folder, else the run folders in it; (what is wrong,
  what to do) where there are none)."""
  if not os.path.isdir(path):
    return [], ("does not exist", "pass run folders written by launch.py")
  if _is_run(path):
    return [path], None
  try:
    subs = sorted(filter(_is_run, (os.path.join(path, d)
                                   for d in os.listdir(path))))
  except OSError as e:
    return [], (f"cannot be read ({e.strerror or e})",
                "give read access to it, or compare other folders")
  return subs, None if subs else (
      "is neither a run folder nor a folder of run folders (no config.json)",
      "pass run folders")


def config_problem(run_dir: str) -> Optional[Tuple[str, str]]:
  """(what keeps `run_dir`'s settings from being read, what to do), in
  compare.py's terms; None where they read."""
  try:
    record.read_config(run_dir)
    return None
  except UserError:
    pass
  name = record.CONFIG_FILE
  path = os.path.join(run_dir, name)
  fix = "restore it from a copy, or compare other run folders"
  if not os.path.exists(path):
    return f"has no {name}, so its settings are unknown", fix
  try:
    with open(path, encoding="utf-8") as f:
      json.load(f)
  except OSError as e:
    return f"has a {name} that cannot be read ({e.strerror or e})", (
        "give read access to it, or compare other run folders")
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    at = f" at line {e.lineno}" if hasattr(e, "lineno") else ""
    return f"has a {name} that is not valid JSON{at}", fix
  return f"has a {name} with no settings this mnist_jax can use", fix


def summarize(run_dir: str) -> Optional[dict]:
  """Headline numbers and learning curve of a finished run (None if unfinished)."""
  config = record.read_config(run_dir)
  rows = metrics_log.MetricsLog(run_dir).read()
  final = metrics_log.final_metrics(run_dir)
  if final is None:
    return None
  epochs = [r for r in rows if "epoch" in r and "train_loss" in r]
  return {  # member, program_members: of a program's members, set later.
      "run": run_dir,
      "config": config,
      "model": config.model,
      "preset": config.preset,
      "seed": config.seed,
      "parameters": final.get("num_params"),
      **_tested(final),
      "epochs": final.get("epochs_run", len(epochs)),
      "wall_time_s": metrics_log.wall_time(final),
      # None: written before it was recorded (the wall time holds it).
      "data_time_s": final.get("data_ready_s", final.get("data_time_s")),
      "compile_time_s": final.get("compile_time_s"),
      "curve": epochs,
      "epoch_time_s": metrics_log.median_speed(epochs, "epoch_time_s"),
      "examples_per_s": metrics_log.median_speed(epochs, "examples_per_s"),
      "member": None,
      "program_members": 1,
      "last_row": rows[-1],
      "diverged": diverged(rows[-1], final, epochs),
  }


def _tested(final: dict) -> dict:
  """A final row's (or a member entry's) test metrics, `test_<name>` of each
  test metric of metrics.METRICS it holds (None where it has none)."""
  return {key: final.get(key) for key in metrics.keys("test")}


def _finite(value) -> bool:
  """A number that is neither NaN nor infinite (JSON's null is not)."""
  return isinstance(value, (int, float)) and math.isfinite(value)


def diverged(last: dict, final: dict, curve: Sequence[dict]) -> Optional[str]:
  """Why a run or member counts as diverged, in a few words (None: it does
  not): `last`, the run's last metrics row, or `final`, its final row or a
  member's entry in it, says so, or its test loss or last training loss is
  not finite (null)."""
  if last.get("diverged"):
    return f"diverged at epoch {last.get('epoch', '?')}"
  if final.get("diverged"):
    return "diverged"
  if not _finite(final.get("test_loss")):
    return "test loss not finite"
  if curve and not _finite(curve[-1].get("train_loss")):
    return f"training loss not finite at epoch {curve[-1].get('epoch', '?')}"
  return None


def share(summary: dict, members: int) -> dict:
  """`summary` as one of `members` members' share: times / members,
  examples/s times members."""
  out = dict(summary, program_members=members,
             examples_per_s=summary["examples_per_s"] and
             summary["examples_per_s"] * members)
  for key in ("wall_time_s", "compile_time_s", "epoch_time_s", "data_time_s"):
    if out.get(key) is not None:
      out[key] = out[key] / members
  return out


def split_members(summary: dict) -> List[dict]:
  """A run's summary as one per member: its Config, test metrics, curve,
  whether it diverged, and its `share` of the program's times. One member:
  [summary]."""
  final = metrics_log.final_metrics(summary["run"])
  entries = final and (final.get("members") or final.get("replicas"))
  if not entries:
    return [summary]
  configs = [m.config for m in members_lib.from_config(summary["config"])]
  out = []
  for i, entry in enumerate(entries):
    curve = members_lib.member_rows(
        [{**r, "members": r.get("members") or r["replicas"]}
         for r in summary["curve"]], i)
    out.append({**share(summary, len(entries)), "config": configs[i],
                "seed": entry["seed"], "member": i,
                **_tested(entry), "curve": curve,
                "diverged": diverged(summary["last_row"], entry, curve)})
  return out


def where(summary: dict) -> str:
  """`RUN`, or `member I of RUN` for a member of a program."""
  if summary.get("member") is None:
    return summary["run"]
  return f"member {summary['member']} of {summary['run']}"


def deduplicate(
    summaries: Sequence[dict],
) -> Tuple[List[dict], List[Tuple[dict, dict]]]:
  """(the summaries with each configuration and seed once, [(left out, kept)]):
  a standalone run is kept before a member (its times are its own), else
  the first given."""
  kept: Dict[tuple, dict] = {}
  dropped = []
  for s in summaries:
    key = (_key(s["config"]), s["seed"])
    first = kept.setdefault(key, s)
    if first is s:
      continue
    if first.get("member") is not None and s.get("member") is None:
      kept[key], s = s, first  # The standalone run's own times win.
    dropped.append((s, kept[key]))
  return list(kept.values()), dropped


def sort_key(value) -> tuple:
  """Orders values of any type: None, numbers (and numeric text), tuples
  element-wise, other text."""
  if value is None:
    return (0,)
  if isinstance(value, (tuple, list)):
    return (2, tuple(sort_key(v) for v in value))
  try:
    return (1, float(value))
  except (TypeError, ValueError):
    return (3, str(value))


def _key(config) -> tuple:
  return tuple(sorted((k, str(v)) for k, v in config.to_dict().items()
                      if k not in NOT_CONFIGURATION))


def group(summaries: Sequence[dict]) -> List[dict]:
  """Runs of one configuration (all but the seed equal) as one group each."""
  groups: Dict[tuple, List[dict]] = {}
  for s in summaries:
    groups.setdefault(_key(s["config"]), []).append(s)
  out = []
  for runs in groups.values():
    runs.sort(key=lambda s: s["seed"])
    first = runs[0]
    out.append(
        {
            "model": first["model"],
            "preset": first["preset"],
            "runs": runs,
            "config": first["config"],
            "seeds": [s["seed"] for s in runs],
            "parameters": first["parameters"],
            "curves": [s["curve"] for s in runs],
            **{
                k: [s[k] for s in runs]
                for k in (*metrics.keys("test"), "epochs", "wall_time_s",
                          "epoch_time_s", "examples_per_s")
            },
            "no_data_time": [
                s["run"] for s in runs if s["data_time_s"] is None
            ],
            "program_members": [s.get("program_members", 1) for s in runs],
        }
    )
  _label(out)
  names = list(models.MODELS)
  out.sort(key=lambda g: (names.index(g["model"]) if g["model"] in names
                          else len(names), g["order"]))
  return out


def _label(groups: List[dict]) -> None:
  """Names each group by its model and what tells same-model groups apart;
  `order`: those values' sort_key (presets in the registry's order)."""
  by_model: Dict[str, List[dict]] = {}
  for g in groups:
    by_model.setdefault(g["model"], []).append(g)
  for same in by_model.values():
    if len(same) == 1:
      same[0]["label"], same[0]["order"] = same[0]["model"], ()
      continue
    presets = list(models.get(same[0]["model"]).presets)
    dicts = [g["config"].to_dict() for g in same]
    differ = [k for k in dicts[0] if k not in NOT_CONFIGURATION
              and len({str(d[k]) for d in dicts}) > 1]
    for g, d in zip(same, dicts):
      parts = [f"{k}={d[k]}" if k != "preset" else d[k] for k in differ[:3]]
      g["label"] = f"{g['model']} ({', '.join(parts)})"
      g["order"] = tuple(
          sort_key(presets.index(d[k]) if k == "preset" and d[k] in presets
                   else d[k]) for k in differ)


def _mean_std(values) -> tuple:
  """(mean, sample standard deviation (ddof=1, as report.md; 0 for one))."""
  a = np.asarray([v for v in values if v is not None], np.float64)
  if not len(a):  # No epoch timed whole (each resumed mid-way).
    return float("nan"), 0.0
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _pm(values, scale=1.0, digits=2) -> str:
  mean, std = _mean_std(values)
  text = f"{scale * mean:.{digits}f}"
  return text + (f" ± {scale * std:.{digits}f}" if len(values) > 1 else "")


def _span(values) -> str:
  return (str(min(values)) if min(values) == max(values)
          else f"{min(values)}-{max(values)}")


def _time_cell(runs: Sequence[dict], key: str, digits: int) -> str:
  """A group's `key` time in the table: its own runs' mean ± std, then once
  each program whose members it holds, the program's whole time with its
  members (no ±: the members' shares are one measurement)."""
  members = lambda s: s.get("program_members", 1)
  own = [s[key] for s in runs if members(s) == 1]
  programs = {s["run"]: (s[key] * members(s), members(s))
              for s in runs if members(s) > 1}
  return "; ".join(([_pm(own, digits=digits)] if own else []) + [
      f"{t:.{digits}f} ({m} members, one program)"
      for t, m in programs.values()])


def config_columns() -> List[str]:
  """comparison.csv's columns, a configuration a row: each test metric's
  mean and std (metrics.METRICS)."""
  return ["model", "preset", "label", "runs", "seeds", "parameters",
          *(f"{k}_{s}" for k in metrics.keys("test") for s in ("mean", "std")),
          "epochs", "wall_time_s_mean", "wall_time_s_std", "epoch_time_s_mean",
          "examples_per_s_mean"]


def run_columns() -> List[Tuple[str, str]]:
  """runs.csv's columns: a run's value, formatted after a colon (None: "")."""
  return [c.partition(":")[::2] for c in (
      "model preset label seed run member program_members parameters".split()
      + [f"{k}:.6f" for k in metrics.keys("test")] +
      "epochs wall_time_s:.2f data_time_s:.2f compile_time_s:.2f "
      "epoch_time_s:.3f examples_per_s:.0f diverged skipped".split())]


def _config_row(g: dict) -> list:
  """comparison.csv's row of a group; no wall_time_s_std where members of a
  program share its time."""
  m = {k: _mean_std(g[k]) for k in (*metrics.keys("test"), "wall_time_s",
                                    "epoch_time_s", "examples_per_s")}
  shared = any(n > 1 for n in g.get("program_members", ()))
  return [g["model"], g["preset"], g["label"], len(g["runs"]),
          " ".join(map(str, g["seeds"])), g["parameters"],
          *(f"{v:.6f}" for k in metrics.keys("test") for v in m[k]),
          _span(g["epochs"]), f"{m['wall_time_s'][0]:.2f}",
          "" if shared else f"{m['wall_time_s'][1]:.2f}",
          f"{m['epoch_time_s'][0]:.3f}",
          f"{m['examples_per_s'][0]:.0f}"]


def _run_row(s: dict, label: str) -> list:
  """runs.csv's row of a run (or member)."""
  s = {**s, "label": label, "program_members": s.get("program_members", 1),
       "compile_time_s": s.get("compile_time_s") or 0}
  return ["" if s.get(c) is None else format(s[c], f)
          for c, f in run_columns()]


def _metric_cell(metric, values) -> str:
  """A test metric's mean (± std over several seeds), as the report shows
  it."""
  mean, std = _mean_std(values)
  return metric.text(mean) + (f" ± {metric.text(std)}" if len(values) > 1
                              else "")


def _notes(groups: Sequence[dict], dropped: Sequence[Tuple[dict, dict]],
           gone: Sequence[dict]) -> List[str]:
  """comparison.md's paragraphs on shared programs, diverged runs, runs
  counted once and runs without a data loading time."""
  lines = []
  shared = sorted({(s["run"], s["program_members"]) for g in groups
                   for s in g["runs"] if s.get("program_members", 1) > 1})
  if shared:
    lines += ["The members of a --num_seeds or --sweep run trained together, "
              "in one program: the table gives that program's time once, "
              "\"T (N members, one program)\", with no ± (one measurement); "
              "runs.csv, comparison.csv's means (its wall_time_s_std left "
              "empty) and the time figure charge each member its share, the "
              "program's times divided by its members (examples/s "
              "multiplied): " + ", ".join(
                  f"{run} ({m} members)" for run, m in shared) + ".", ""]
  if gone:
    lines += ["Diverged, left out of the table, means and plots (runs.csv "
              "lists them, its diverged column says why): " + "; ".join(
                  f"{where(s)} ({s['diverged']})" for s in gone) + ".", ""]
  if dropped:
    lines += ["Counted once (the same settings and seed): " + "; ".join(
        f"{where(left)} left out for {where(kept)}"
        for left, kept in dropped) + ".", ""]
  older = [run for g in groups for run in g["no_data_time"]]
  if older:
    lines += [f"{len(older)} run(s) predate the record of data loading time; "
              "their time includes it: " + ", ".join(older), ""]
  return lines


def write_tables(groups: Sequence[dict], out: str,
                 dropped: Sequence[Tuple[dict, dict]] = (),
                 gone: Sequence[dict] = (), skipped: Sequence[tuple] = ()
                 ) -> None:
  """comparison.csv, runs.csv and comparison.md; `dropped`: deduplicate's
  runs left out, `gone`: the diverged runs, `skipped`: read_runs' folders
  not compared, each named in comparison.md and runs.csv."""
  files.write_csv(os.path.join(out, "comparison.csv"),
                  [config_columns()] + [_config_row(g) for g in groups])
  files.write_csv(os.path.join(out, "runs.csv"), [[c for c, _ in run_columns()]]
                  + [_run_row(s, g["label"]) for g in groups for s in g["runs"]]
                  + [_run_row(s, s["model"]) for s in gone]
                  + [_run_row({"run": folder, "skipped": what}, "")
                     for folder, what, _ in skipped])
  lines = ["# Model comparison", "",
           "Mean ± sample standard deviation (n-1, as report.md) over seeds "
           "where a configuration has several runs. Time is a run's wall "
           "time (`wall_time_s`, as the README defines it: compilation and "
           "evaluation in it, the data's preparation and the report not). "
           "Epoch time and examples/s are medians over the epochs timed "
           "whole (not one resumed mid-way). Accuracy axes start a whole "
           "point below the lowest run and end at 100%.", "",
           *_notes(groups, dropped, gone)]
  if skipped:
    lines += ["Not compared: " + "; ".join(
        f"{folder} ({what})" for folder, what, _ in skipped) + ".", ""]
  tested = metrics.of("test")
  lines += files.table(
      ["model", "preset", "runs", "parameters",
       *(f"test {m.label}" for m in tested), "epochs", "time s",
       "epoch time s", "examples/s"],
      [(g["label"], g["preset"], len(g["runs"]), f"{g['parameters']:,}",
        *(_metric_cell(m, g[f"test_{m.name}"]) for m in tested),
        _span(g["epochs"]), _time_cell(g["runs"], "wall_time_s", 1),
        _time_cell(g["runs"], "epoch_time_s", 2),
        f"{_mean_std(g['examples_per_s'])[0]:,.0f}") for g in groups],
      "ll" + "r" * (6 + len(tested)))
  lines += [
      "",
      "![test accuracy per model](accuracy.png)",
      "",
      "![accuracy against run time](accuracy_vs_time.png)",
      "",
      "![learning curves](learning_curves.png)",
      "",
      "Runs: [runs.csv](runs.csv); table: [comparison.csv](comparison.csv).",
      "",
  ]
  files.write_text(os.path.join(out, "comparison.md"), "\n".join(lines))


def compare(paths: Sequence[str], out: str, log=print,
            analyses: bool = False, warn=None) -> List[dict]:
  """Reads finished runs under `paths`, writes the tables and plots to `out`
  (with `analyses`, analysis.md too); returns the groups. A folder not
  compared is named with why in the tables and a line to `warn` (default:
  stderr); a diverged run is named, out of the means and plots."""
  warn = warn or (lambda line: print(line, file=sys.stderr))
  summaries, skipped = read_runs(paths)
  gone = [s for s in summaries if s["diverged"]]
  summaries = [s for s in summaries if not s["diverged"]]
  if not summaries:
    raise UserError(nothing_to_compare(skipped, gone))
  for folder, what, fix in skipped:
    warn(f"skipping {folder}: it {what}; {fix}")
  summaries, dropped = deduplicate(summaries)
  _log_left_out(gone, dropped, log)
  groups = group(summaries)
  os.makedirs(out, exist_ok=True)
  write_tables(groups, out, dropped, gone, skipped)
  for name, draw in zip(PLOTS, (plot_accuracy, plot_accuracy_time,
                                plot_curves)):
    draw(groups, os.path.join(out, name))
  if analyses:
    write_analyses(groups, out)
  log(f"compared {len(summaries)} runs in {len(groups)} configurations"
      f"{f' ({len(dropped)} counted once)' if dropped else ''}; "
      f"table and plots in {out}/comparison.md")
  return groups


def read_runs(paths: Sequence[str]) -> Tuple[List[dict], list]:
  """(the finished runs' summaries, a member each; [(folder, what keeps it
  out, what to do)]: unreadable, unfinished or diverged before its end)."""
  skipped, summaries = [], []
  for run in find_runs(paths, skipped):
    problem, s = config_problem(run), None
    try:
      s = None if problem else summarize(run)
    except KeyError as e:  # A final row another program wrote, or edited.
      problem = (f"has a final metrics row without {e.args[0]}",
                 "compare run folders launch.py wrote")
    if s is None and not problem:
      state, last = record.status(run)
      problem = (("diverged " + record.diverged_at(last), "lower its "
                  "--learning_rate or set --grad_clip and train it again")
                 if state == "diverged" else
                 ("is unfinished", "its launch.py command resumes it"))
      problem = (f"has no final test metrics: it {problem[0]}", problem[1])
    if problem:
      skipped.append((run, *problem))
    else:
      summaries.extend(split_members(s))
  return summaries, skipped


def nothing_to_compare(skipped: Sequence[Tuple[str, str, str]],
                       gone: Sequence[dict] = ()) -> str:
  """The one line that says no run is left to compare: why each folder
  given was skipped (`skipped`, read_runs') or each run diverged."""
  if not skipped and not gone:
    return ("none of the runs has finished; train them first "
            "(python launch.py --model=NAME --workdir=DIR)")
  if len(skipped) == 1 and not gone:
    folder, what, fix = skipped[0]
    return f"{folder} {what}; {fix}"
  return "no run to compare: " + "; ".join(
      [f"{folder} {what} ({fix})" for folder, what, fix in skipped] +
      [f"{where(s)} {s['diverged']}" for s in gone])


def _log_left_out(gone: Sequence[dict], dropped: Sequence[Tuple[dict, dict]],
                  log) -> None:
  """Says which runs diverged and which were counted once."""
  for s in gone:
    log(f"{where(s)} {s['diverged']}: named in comparison.md, left out of "
        "the means and plots")
  for left, kept in dropped:
    log(f"counting one run once: {where(left)} has the settings and seed of "
        f"{where(kept)}; left out for it")


def write_analyses(groups: Sequence[dict], out: str) -> None:
  """OUT/analysis.md: each group's first run whose folder's analysis is of
  it (a folder trained before the analyses gets them written now)."""
  shown = {}
  for g in groups:
    for s in g["runs"]:
      final = metrics_log.final_metrics(s["run"])
      chosen = (final.get("chosen") or {}).get("index")
      if s["run"] not in shown and s.get("member") in (None, chosen):
        shown[s["run"]] = (g["label"], s["wall_time_s"])
        break
  labels, train_s = zip(*shown.values())
  for folder in shown:
    if not os.path.exists(os.path.join(folder, analysis.FOLDER,
                                       analysis.SUMMARY)):
      run = results_run.load_run(folder)
      data = pipeline.load(run.config)
      analysis.write(folder, run, data.test, data.val, data.class_names,
                     maps=False)
  analysis_page(list(shown), os.path.join(out, ANALYSIS_PAGE), labels=labels,
                train_s=train_s)


def parse_vary(specs: Sequence[str]) -> Dict[str, list]:
  """`--vary` specs NAME=V1/V2/... as {Config field: [values]}, typed as
  its flag (`mlp_hidden=256/512,256`: (256,) and (512, 256))."""
  grid = {}
  for spec in specs:
    name, _, listed = (t.strip() for t in spec.partition("="))
    if (
        name in ("model", "seed", "preset")
        or name not in config_lib.SETTINGS
    ):
      raise UserError(
          f"--vary={spec}: vary a Config field other than model, preset and "
          "seed (--train, --preset and --seeds choose those), e.g. "
          "--vary=mlp_hidden=256/512")
    texts = [t.strip() for t in listed.split("/") if t.strip()]
    if not texts or name in grid:
      raise UserError(f"--vary={spec}: give each name once, as NAME=V1/V2/...")
    grid[name] = [_typed(name, t) for t in texts]
  return grid


def _typed(name: str, text: str):
  try:
    return config_lib.parse(name, text)  # As its flag reads it.
  except UserError as e:
    raise UserError(
        f"--vary={name}: {text!r} is not a value of {name} ({e})") from None


def train_runs(model_names: Sequence[str], seeds: Sequence[int], runs_root: str,
               preset: str = "tuned", log=print, stream=None,
               vary: Optional[Dict[str, list]] = None,
               **overrides) -> List[str]:
  """Trains each model, `vary` combination and seed into runs_root; reuses
  finished runs. Folders are named MODEL[-NAME=VALUE...]-seedN."""
  process.setup_process()
  vary = vary or {}
  combos = [dict(zip(vary, c)) for c in itertools.product(*vary.values())]
  folders = []
  for name, values, seed in itertools.product(model_names, combos, seeds):
    folder = os.path.join(runs_root, "-".join([name] + [
        f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in values.items()] + [f"seed{seed}"]))
    config = models.get_config(name, preset, seed=seed, workdir=folder,
                               **{**overrides, **values})
    if os.path.isdir(folder) and record.finished(folder) and not (
        resume.config_differences(record.read_config(folder), config)):
      log(f"{folder}: finished before, reused")
    else:
      log(f"training {os.path.basename(folder)} in {folder}")
      run_lib.train_and_evaluate(config, folder, stream=stream)
    folders.append(folder)
  return folders


def accuracy_floor(values) -> float:
  """Where an accuracy axis (to 100%) starts: a whole percent, a point below
  the lowest value, so close runs never fill the whole height."""
  return max(0.0, float(np.floor(min(values))) - 1.0)


def fit_title(fig, title) -> None:
  """Wraps a title (a Text artist) into lines that lie within `fig`."""
  text = title.get_text().replace("\n", " ")
  chars = len(text)
  while chars > 20:
    fig.draw_without_rendering()
    box = title.get_window_extent()
    if box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1:
      break
    chars = int(chars * 0.9)
    title.set_text("\n".join(textwrap.wrap(
        text, chars, break_on_hyphens=False, break_long_words=False)))


def _std(values: np.ndarray) -> Optional[float]:
  """_mean_std's std, None for one value (no whisker)."""
  return _mean_std(values)[1] if len(values) > 1 else None


def _several(groups: Sequence[dict]) -> bool:
  """Whether some configuration has several runs (seeds) to summarise."""
  return any(len(g["test_accuracy"]) > 1 for g in groups)


def accuracy_figure(groups: Sequence[dict]):
  """Test accuracy per configuration: mean bar, std whisker, one dot per seed."""
  n = len(groups)
  fig, ax = plt.subplots(figsize=(8, 0.55 * n + 1.6), layout="constrained")
  low = accuracy_floor([100 * a for g in groups for a in g["test_accuracy"]])
  for i, (g, color) in enumerate(zip(groups, plots.palette(n))):
    acc = 100 * np.asarray(g["test_accuracy"])
    std = _std(acc)
    ax.barh(i, acc.mean() - low, left=low, color=color, alpha=0.75, xerr=std,
            capsize=4)
    ax.plot(acc, [i] * len(acc), "k.", ms=6)
    spread = f" ± {std:.2f}" if std is not None else ""
    end = max(acc.max(), acc.mean() + (std or 0.0))
    room = 100 - end > 0.3 * (
        100 - low
    )  # Beside the bar if it fits, else in it.
    ax.text((end if room else low) + 0.015 * (100 - low), i,
            f"{acc.mean():.2f}%{spread} (n={len(acc)})", va="center",
            ha="left", fontsize=9)
  ax.set_xlim(low, 100)
  ax.set_yticks(range(n), group_labels(groups))
  ax.invert_yaxis()
  ax.set_xlabel(f"Test accuracy (%; axis from {low:g}, a point below the "
                "lowest run)")
  how = (" (bar: mean over seeds, whisker: std, dots: each run)"
         if _several(groups) else "")
  fit_title(fig, ax.set_title(f"Test accuracy per configuration{how}",
                              fontsize=10))
  ax.grid(axis="x", alpha=0.3)
  return fig


def plot_accuracy(groups: Sequence[dict], path: str) -> str:
  return plots.save(accuracy_figure(groups), path)


def accuracy_time_figure(groups: Sequence[dict]):
  """Test accuracy against run time less data loading, a point per group."""
  labels = group_labels(groups)
  longest = max(map(len, labels))  # The legend goes beside.
  fig, ax = plt.subplots(figsize=(min(6.5 + 0.06 * longest, 12), 4.8),
                         layout="constrained")
  every_acc, every_time = [], []
  for i, (g, color, label) in enumerate(zip(groups, plots.palette(len(groups)),
                                            labels)):
    acc = 100 * np.asarray(g["test_accuracy"])
    # Older runs have no time less data loading: their wall time.
    t = np.asarray(g["wall_time_s"], np.float64)
    every_acc += list(acc)
    every_time += list(t)
    marker = MARKERS[i % len(MARKERS)]
    if len(acc) > 1:
      ax.plot(t, acc, marker, color=color, alpha=0.35, ms=4, ls="none")
    xerr = _std(t)
    if xerr is not None and t.mean() - xerr <= 0:  # No time at or below 0
      xerr = [[t.mean() - t.min()], [xerr]]  # (nor a log axis's -inf).
    ax.errorbar(t.mean(), acc.mean(), xerr=xerr, yerr=_std(acc),
                fmt=marker, color=color, ms=8, capsize=3, label=label,
                clip_on=False)
  log = max(every_time) > 10 * min(every_time)
  if log:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    plots.plain_ticks(ax.xaxis)
  ax.set_ylim(accuracy_floor(every_acc), 100)
  shared = any(m > 1 for g in groups for m in g.get("program_members", ()))
  ax.set_xlabel("Run time less data loading (s" + (", log scale" if log else "")
                + "; compilation, evaluation and report included)"
                + ("\nA member of a --num_seeds or --sweep run: its share, "
                   "the run's time / its members" if shared else ""))
  ax.set_ylabel(f"Test accuracy (%; from {accuracy_floor(every_acc):g})")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1),
            borderaxespad=0)
  how = " (mean ± std over seeds)" if _several(groups) else ""
  fit_title(fig, ax.set_title(f"Test accuracy against run time{how}"))
  return fig


def plot_accuracy_time(groups: Sequence[dict], path: str) -> str:
  return plots.save(accuracy_time_figure(groups), path)


CURVE_PANELS = (("train_loss", "Train loss (cross entropy)", 1.0),
                ("val_loss", "Validation loss", 1.0),
                ("train_accuracy", "Train accuracy (%)", 100.0),
                ("val_accuracy", "Validation accuracy (%)", 100.0))


def _mean_curves(groups: Sequence[dict], key: str, scale: float):
  """[(group index, epochs, [seeds, epochs] values)] of the groups with `key`."""
  out = []
  for i, g in enumerate(groups):
    curves = [[(r["epoch"], scale * r[key]) for r in rows
               if r.get(key) is not None] for rows in g["curves"]]
    curves = [c for c in curves if c]
    if curves:
      length = min(len(c) for c in curves)
      out.append((i, [e for e, _ in curves[0][:length]],
                  np.array([[v for _, v in c[:length]] for c in curves])))
  return out


def curves_figure(groups: Sequence[dict]):
  """Learning curves overlaid: mean line, shaded min-max over seeds; a panel
  per metric some run has (no validation panels when no run holds one out)."""
  panels = [(p, _mean_curves(groups, p[0], p[2])) for p in CURVE_PANELS]
  panels = [(p, lines) for p, lines in panels if lines]
  cols = 2 if len(panels) == 4 else len(panels)
  rows = (len(panels) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows),
                           squeeze=False, layout="constrained")
  colors, labels = plots.palette(len(groups)), group_labels(groups)
  epochs = [r["epoch"] for g in groups for rows_ in g["curves"] for r in rows_]
  for ax, ((key, label, _), lines) in zip(axes.flat, panels):
    for i, x, y in lines:
      ax.plot(x, y.mean(axis=0), "-", marker=MARKERS[i % len(MARKERS)], ms=3,
              color=colors[i], label=labels[i], clip_on=False)
      if len(y) > 1:
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=colors[i],
                        alpha=0.2)
    ax.set(xlabel="Epoch", ylabel=label, title=label)
    plots.epoch_axis(ax, epochs)
    values = [v for _, _, y in lines for v in y.flat]
    if "loss" in key and max(values) > 10 * min(values) > 0:
      ax.set_yscale("log")
      ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
      plots.plain_ticks(ax.yaxis)
    elif "loss" in key:
      ax.set_ylim(bottom=0)
    else:
      ax.set_ylim(accuracy_floor(values), 100)
    ax.grid(alpha=0.3, which="both")
  legend = {}  # Each group once, in the groups' order.
  for ax in axes.flat:
    for handle, text in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(text, handle)
  fig.legend(list(legend.values()), list(legend), loc="outside lower center",
             ncols=min(len(legend), 3), fontsize=8)
  seeds = "mean over seeds; band: min to max; " if _several(groups) else ""
  fit_title(fig, fig.suptitle(f"Learning curves ({seeds}accuracy axes from a "
                              "point below the lowest value)"))
  return fig


def plot_curves(groups: Sequence[dict], path: str) -> str:
  return plots.save(curves_figure(groups), path)


def run_label(label: str, model: str, preset: str) -> str:
  """`label` ("model", "model (what differs)", maybe then " [folder]") with
  the preset named first where it is not."""
  match = re.fullmatch(rf"{re.escape(model)}(?: \((.*)\))?( \[[^]]*\])?",
                       label)
  if not match:
    return label
  parts = match[1].split(", ") if match[1] else []
  parts = parts if preset in parts else [preset, *parts]
  return f"{model} ({', '.join(parts)}){match[2] or ''}"


def group_labels(groups: Sequence[dict]) -> List[str]:
  """The groups' names in figures: model and preset, what else tells them
  apart, and the first run's folder where that leaves two alike."""
  names = [run_label(g["label"], g["model"], g["preset"])
           if "model" in g else g["label"] for g in groups]
  folder = lambda g: os.path.basename(os.path.normpath(g["runs"][0]["run"]))
  return [name + (f" [{folder(g)}]" if names.count(name) > 1 and g.get("runs")
                  else "") for name, g in zip(names, groups)]


def compare_attributions(results: Sequence[dict], path: str) -> str:
  """The same test digits' integrated gradients, a row per run."""
  n = min(r["grid"] for r in results)
  said = lambda r, j: r["predicted"][r["shown"][j]]
  images = [*results[0]["images"][:n],
            *(m for r in results for m in analysis_plots.diverging(r["ig"][:n]))]
  titles = [f"#{results[0]['shown'][j]}" for j in range(n)] + [
      f"pred {r['names'][said(r, j)]}" for r in results for j in range(n)]
  red = {(i + 1) * n + j for i, r in enumerate(results) for j in range(n)
         if said(r, j) != r["labels"][r["shown"][j]]}
  return plots.image_grid(
      images, titles, red, path, n, ["test image"] + [r["label"] for r in
                                                      results],
      "Where each looks: integrated gradients of the same test images to "
      "each model's predicted class (red for, blue against; each map to its "
      "own largest |value|; wrong: framed in red)", fontsize=9)


def analysis_figures(results: Sequence[dict], out: str) -> List[tuple]:
  """The comparison's figures, written into `out`: [(title, file name)];
  each run's label names its preset."""
  results = [{**r, "label": run_label(r["label"], r["model"],
                                            r["preset"])} for r in results]
  shown = [(title, name, draw, [r for r in results if key is None or key in r])
           for title, name, draw, key in ANALYSIS_FIGURES]
  return [(title, name) for title, name, draw, which in shown
          if which and draw(which, os.path.join(out, name))]


def load_analysis(workdir: str) -> Dict[str, object]:
  """A run folder's analysis, as analysis.analyse returned it (less the
  features)."""
  with open(os.path.join(workdir, analysis.FOLDER, analysis.SUMMARY)) as f, \
      np.load(os.path.join(workdir, analysis.FOLDER, analysis.ARRAYS)) as a:
    return {**json.load(f), **a}


def analysis_page(folders: Sequence[str], page: str,
                  figures: Optional[str] = None,
                  labels: Optional[Sequence[str]] = None,
                  train_s: Optional[Sequence[Optional[float]]] = None) -> str:
  """Writes `page` (markdown) and its figures into `figures` (default: its
  folder): the runs' analyses (written) side by side. train_s: each run's
  training time. Returns `page`."""
  results = [load_analysis(folder) for folder in folders]
  names = list(labels or [f"{r['model']} ({r['preset']})" for r in results])
  for r, name, folder in zip(results, names, folders):
    r["label"] = name + (f" [{os.path.basename(os.path.normpath(folder))}]"
                         if names.count(name) > 1 else "")
  figures = figures or os.path.dirname(page) or "."
  os.makedirs(figures, exist_ok=True)
  rows = []  # analysis.md's table: report.md's, with the train time.
  for r, t in zip(results, train_s or [None] * len(results)):
    first, *rest = analysis.cells(analysis.summary(r))
    rows.append([first, ("train time", "n/a" if t is None else f"{t:.1f} s"),
                 *rest])
  link = os.path.relpath(figures, os.path.dirname(page) or ".")
  lines = [
      "# What each model learned",
      "",
      *files.table(
          ["model", *(k for k, _ in rows[0])],
          [
              [r["label"], *(v for _, v in cells)]
              for r, cells in zip(results, rows)
          ],
          "l" + "r" * len(rows[0]),
      ),
      "",
      analysis.NOTES + " Train time: the run's wall time less loading its data "
      "(a member's share of its program's).",
      "",
      *analysis.figure_lines(
          [
              (title, name if link == "." else f"{link}/{name}")
              for title, name in analysis_figures(results, figures)
          ],
          "##",
      ),
  ]
  files.write_text(page, "\n".join(lines))
  return page


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = _parser().parse_args(argv)
  paths = list(args.runs)
  if args.train:
    overrides = {k: getattr(args, k) for k in ("epochs", "data_dir", "mnist_dir")
                 if getattr(args, k) is not None}
    paths += train_runs(args.train, args.seeds, args.runs_root,
                                    args.preset,
                                    vary=parse_vary(args.vary),
                                    **overrides)
  elif args.vary:
    raise UserError("--vary needs --train=MODEL: it trains a run per value")
  if not paths:
    raise UserError("pass run folders to compare, or --train=MODEL[,MODEL...]")
  compare(paths, args.out, analyses=args.analyses)


def _names(text: str) -> List[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="*",
                      help="run folders, or folders of run folders")
  parser.add_argument("--out", default="comparison",
                      help="folder for the table and plots")
  parser.add_argument("--analyses", action=argparse.BooleanOptionalAction,
                      default=True, help="write OUT/analysis.md, the runs' "
                      "analyses side by side (--no-analyses: not)")
  parser.add_argument("--train", type=_names, default=[],
                      help="models to train first (e.g. linear,cnn,gru)")
  parser.add_argument("--seeds", type=lambda t: [int(s) for s in _names(t)],
                      default=[0], help="--train: seeds of each model (0,1,2)")
  parser.add_argument(
      "--vary", action="append", default=[],
      help="--train: a setting to train several values of, NAME=V1/V2/... "
      "(e.g. mlp_hidden=256/512,256); repeat for a grid")
  parser.add_argument("--runs_root", default=os.path.join("runs", "compare"),
                      help="--train: where the run folders go (MODEL-seedN)")
  parser.add_argument("--preset", default="tuned",
                      help="--train: preset of every model")
  parser.add_argument("--epochs", type=int, default=None,
                      help="--train: epochs (default: the preset's)")
  parser.add_argument("--data_dir", default=None, help="--train: tfds data dir")
  parser.add_argument("--mnist_dir", default=None,
                      help="--train: folder with the IDX files")
  return parser


if __name__ == "__main__":
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

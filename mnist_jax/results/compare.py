"""Compares finished runs (or trains them first): one table and three plots.

`compare(paths, out)` reads the finished runs under `paths` and writes the
tables (comparison.md, comparison.csv, runs.csv) and the plots into `out`.
Runs that differ only in their seed are one configuration, given as mean and
sample standard deviation (ddof=1, as report.md and metrics.jsonl give it);
every member of a --num_seeds or --sweep run counts as the run of its own
configuration and seed, and times leave out loading the data.

Honest numbers. The M members of one program trained together in its time:
each is charged its share, the program's times / M (examples/s times M), so
an M-member program is neither counted M times over nor as free. A model is
counted once: a standalone run and a member of another run with the same
settings and seed are one run (the standalone one is kept: its times are its
own), and the tables say which was left out.

`train_runs` trains each model, `--vary` combination and seed first, reusing
finished runs. experiments/compare.py is its command line, whose --help says
what each file holds.
"""

import csv
import itertools
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.results import plots
from mnist_jax.rundir import files
from mnist_jax.rundir import folder as folder_lib
from mnist_jax.training import devices
from mnist_jax.training import members as members_lib
from mnist_jax.rundir import run as run_lib

# Settings that do not change what is trained: runs differing only in these
# (and the seed) are repeats of one configuration. A run of several members
# counts as one run per member, each with its own configuration (its swept
# values) and seed, so members are grouped with single runs of the same
# settings and their seeds give the error bars.
NOT_CONFIGURATION = ("seed", "workdir", "data_dir", "mnist_dir", "chunk_steps",
                     "num_seeds", "sweep")
PLOTS = ("accuracy.png", "accuracy_vs_time.png", "learning_curves.png")


def find_runs(paths: Sequence[str]) -> List[str]:
  """Run folders among `paths`: each path is a run folder or holds run
  folders; a folder reached twice (given, and inside another given one)
  comes once."""
  found = []
  for path in paths:
    if os.path.exists(os.path.join(path, folder_lib.CONFIG_FILE)):
      found.append(path)
    elif os.path.isdir(path):
      subs = sorted(os.path.join(path, d) for d in os.listdir(path)
                    if os.path.exists(os.path.join(path, d, folder_lib.CONFIG_FILE)))
      if not subs:
        raise UserError(f"{path} is neither a run folder nor a folder of run "
                        "folders (no config.json); pass run folders")
      found.extend(subs)
    else:
      raise UserError(f"{path} does not exist; pass run folders written by "
                      "launch.py")
  seen, unique = set(), []
  for path in found:
    if os.path.realpath(path) not in seen:
      seen.add(os.path.realpath(path))
      unique.append(path)
  return unique


def summarize(run_dir: str) -> Optional[dict]:
  """Headline numbers and learning curve of a finished run (None if unfinished)."""
  config = folder_lib.read_config(run_dir)
  rows = list(folder_lib.read_metrics(
      os.path.join(run_dir, folder_lib.METRICS_FILE)))
  final = folder_lib.final_metrics(run_dir)
  if final is None:
    return None
  epochs = [r for r in rows if "epoch" in r and "train_loss" in r]
  data_time = final.get("data_time_s")  # None: written before it was recorded.
  return {
      "run": run_dir, "config": config, "model": config.model,
      "preset": config.preset, "seed": config.seed,
      "parameters": final.get("num_params"),
      "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
      "epochs": final.get("epochs_run", len(epochs)),
      "wall_time_s": final["wall_time_s"], "data_time_s": data_time,
      "train_time_s": final["wall_time_s"] - (data_time or 0.0),
      "compile_time_s": final.get("compile_time_s"),
      "epoch_time_s": statistics.median(r["epoch_time_s"] for r in epochs),
      "examples_per_s": statistics.median(r["examples_per_s"] for r in epochs),
      "curve": epochs,
      # A standalone run; a member of a program: its index and their count.
      "member": None, "program_members": 1,
  }


TIMES = ("wall_time_s", "train_time_s", "compile_time_s", "epoch_time_s")


def share(summary: dict, members: int) -> dict:
  """`summary`'s times as one of `members` members' share of them: the
  times / members, examples/s times members."""
  out = dict(summary, program_members=members)
  for key in TIMES:
    if out.get(key) is not None:
      out[key] = out[key] / members
  if out.get("data_time_s") is not None:
    out["data_time_s"] = out["data_time_s"] / members
  out["examples_per_s"] = summary["examples_per_s"] * members
  return out


def split_members(summary: dict) -> List[dict]:
  """A run's summary as one summary per member (members.py), each the run of
  its own configuration and seed.

  Each member takes its Config (the swept values applied), test metrics and
  learning curve from metrics.jsonl, and its share of the program's times
  (`share`: the M members trained together, in one program's time). A
  member that diverged has no result, as a diverged single run has none, but
  it had its share of the time. One member: [summary].
  """
  final = folder_lib.final_metrics(summary["run"])
  entries = final and (final.get("members") or final.get("replicas"))
  if not entries:
    return [summary]
  configs = [m.config for m in members_lib.from_config(summary["config"])]
  out = []
  for i, entry in enumerate(entries):
    if entry.get("diverged"):
      continue
    curve = members_lib.member_rows(
        [{**r, "members": r.get("members") or r["replicas"]}
         for r in summary["curve"]], i)
    out.append({**share(summary, len(entries)), "config": configs[i],
                "seed": entry["seed"], "member": i,
                "test_accuracy": entry["test_accuracy"],
                "test_loss": entry["test_loss"], "curve": curve})
  return out


def where(summary: dict) -> str:
  """`RUN`, or `member I of RUN` for a member of a program."""
  if summary.get("member") is None:
    return summary["run"]
  return f"member {summary['member']} of {summary['run']}"


def deduplicate(summaries: Sequence[dict]) -> Tuple[List[dict], List[Tuple[dict, dict]]]:
  """(the summaries with each model once, [(left out, the one kept)]).

  One model is one configuration and seed (all settings equal but where it
  was written and how many trained with it): a standalone run folder and a
  member of another run with the same settings and seed, or two copies of
  a run. The standalone run is kept before a member (its times are its own),
  else the first given.
  """
  kept: Dict[tuple, dict] = {}
  order: List[tuple] = []
  dropped = []
  for s in summaries:
    key = (_key(s["config"]), s["seed"])
    if key not in kept:
      kept[key] = s
      order.append(key)
      continue
    first = kept[key]
    if first.get("member") is not None and s.get("member") is None:
      kept[key], s = s, first  # The standalone run's own times win.
    dropped.append((s, kept[key]))
  return [kept[k] for k in order], dropped


def sort_key(value) -> tuple:
  """Orders setting values of any type: numbers (and numeric text) by value,
  then tuples element by element, then other text; None first."""
  if value is None:
    return (0,)
  if isinstance(value, (bool, int, float)):
    return (1, float(value))
  if isinstance(value, (tuple, list)):
    return (2, tuple(sort_key(v) for v in value))
  try:
    return (1, float(value))
  except (TypeError, ValueError):
    return (3, str(value))


def _key(config) -> tuple:
  d = config.to_dict()
  return tuple(sorted((k, str(v)) for k, v in d.items()
                      if k not in NOT_CONFIGURATION))


def _model_order(name: str) -> int:
  names = list(models.MODELS)
  return names.index(name) if name in names else len(names)


def group(summaries: Sequence[dict]) -> List[dict]:
  """Runs of one configuration (all but the seed equal) as one group each."""
  groups: Dict[tuple, List[dict]] = {}
  for s in summaries:
    groups.setdefault(_key(s["config"]), []).append(s)
  out = []
  for runs in groups.values():
    runs.sort(key=lambda s: s["seed"])
    first = runs[0]
    out.append({
        "model": first["model"], "preset": first["preset"], "runs": runs,
        "config": first["config"], "seeds": [s["seed"] for s in runs],
        "parameters": first["parameters"],
        "test_accuracy": [s["test_accuracy"] for s in runs],
        "test_loss": [s["test_loss"] for s in runs],
        "epochs": [s["epochs"] for s in runs],
        "wall_time_s": [s["wall_time_s"] for s in runs],
        "train_time_s": [s["train_time_s"] for s in runs],
        "no_data_time": [s["run"] for s in runs if s["data_time_s"] is None],
        "epoch_time_s": [s["epoch_time_s"] for s in runs],
        "examples_per_s": [s["examples_per_s"] for s in runs],
        # How many members shared the program of each run (1: standalone).
        "program_members": [s.get("program_members", 1) for s in runs],
        "curves": [s["curve"] for s in runs]})
  _label(out)
  out.sort(key=lambda g: (_model_order(g["model"]), g["order"]))
  return out


def _label(groups: List[dict]) -> None:
  """Names each group by its model, plus whatever tells same-model groups
  apart, and gives it its place among them (`order`: those values' sort_key,
  presets in the registry's order)."""
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
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _pm(values, scale=1.0, digits=2) -> str:
  mean, std = _mean_std(values)
  text = f"{scale * mean:.{digits}f}"
  return text + (f" ± {scale * std:.{digits}f}" if len(values) > 1 else "")


def _span(values) -> str:
  return (str(min(values)) if min(values) == max(values)
          else f"{min(values)}-{max(values)}")


def write_tables(groups: Sequence[dict], out: str,
                 dropped: Sequence[Tuple[dict, dict]] = ()) -> None:
  """comparison.csv, runs.csv and comparison.md; `dropped`: deduplicate's
  runs left out, named in comparison.md."""
  header = ["model", "preset", "label", "runs", "seeds", "parameters",
            "test_accuracy_mean", "test_accuracy_std", "test_loss_mean",
            "epochs", "train_time_s_mean", "train_time_s_std",
            "wall_time_s_mean", "epoch_time_s_mean", "examples_per_s_mean"]
  rows = [header]
  for g in groups:
    acc, acc_std = _mean_std(g["test_accuracy"])
    time, time_std = _mean_std(g["train_time_s"])
    rows.append([g["model"], g["preset"], g["label"], len(g["runs"]),
                 " ".join(map(str, g["seeds"])), g["parameters"], f"{acc:.6f}",
                 f"{acc_std:.6f}", f"{_mean_std(g['test_loss'])[0]:.6f}",
                 _span(g["epochs"]), f"{time:.2f}", f"{time_std:.2f}",
                 f"{_mean_std(g['wall_time_s'])[0]:.2f}",
                 f"{_mean_std(g['epoch_time_s'])[0]:.3f}",
                 f"{_mean_std(g['examples_per_s'])[0]:.0f}"])
  _write_csv(os.path.join(out, "comparison.csv"), rows)
  run_rows = [["model", "preset", "label", "seed", "run", "member",
               "program_members", "parameters",
               "test_accuracy", "test_loss", "epochs", "train_time_s",
               "wall_time_s", "data_time_s", "compile_time_s", "epoch_time_s",
               "examples_per_s"]]
  for g in groups:
    for s in g["runs"]:
      run_rows.append([s["model"], s["preset"], g["label"], s["seed"], s["run"],
                       "" if s.get("member") is None else s["member"],
                       s.get("program_members", 1),
                       s["parameters"], f"{s['test_accuracy']:.6f}",
                       f"{s['test_loss']:.6f}", s["epochs"],
                       f"{s['train_time_s']:.2f}", f"{s['wall_time_s']:.2f}",
                       "" if s["data_time_s"] is None
                       else f"{s['data_time_s']:.2f}",
                       f"{s['compile_time_s'] or 0:.2f}",
                       f"{s['epoch_time_s']:.3f}", f"{s['examples_per_s']:.0f}"])
  _write_csv(os.path.join(out, "runs.csv"), run_rows)

  lines = ["# Model comparison", "",
           "Mean ± sample standard deviation (n-1, as report.md) over seeds "
           "where a configuration has several runs. Time is a run's wall "
           "time less loading its data (and preparing it, the first time): "
           "compilation, evaluation and the report are in it. Epoch time and "
           "examples/s are medians over epochs. Accuracy axes start a whole "
           "point below the lowest run and end at 100%.", ""]
  shared = sorted({(s["run"], s["program_members"]) for g in groups
                   for s in g["runs"] if s.get("program_members", 1) > 1})
  if shared:
    lines += ["The members of a --num_seeds or --sweep run trained together, "
              "in one program: each is charged its share, the program's times "
              "divided by its members (examples/s multiplied): " + ", ".join(
                  f"{run} ({m} members)" for run, m in shared) + ".", ""]
  if dropped:
    lines += ["Counted once (the same settings and seed): " + "; ".join(
        f"{where(gone)} left out for {where(kept)}" for gone, kept in dropped)
              + ".", ""]
  older = [run for g in groups for run in g["no_data_time"]]
  if older:
    lines += [f"{len(older)} run(s) predate the record of data loading time; "
              "their time includes it: " + ", ".join(older), ""]
  lines += ["| model | preset | runs | parameters | test accuracy % | epochs | "
           "time s | epoch time s | examples/s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for g in groups:
    lines.append(
        f"| {g['label']} | {g['preset']} | {len(g['runs'])} | "
        f"{g['parameters']:,} | {_pm(g['test_accuracy'], 100)} | "
        f"{_span(g['epochs'])} | {_pm(g['train_time_s'], digits=1)} | "
        f"{_pm(g['epoch_time_s'], digits=2)} | "
        f"{_mean_std(g['examples_per_s'])[0]:,.0f} |")
  lines += ["", "![test accuracy per model](accuracy.png)", "",
            "![accuracy against run time](accuracy_vs_time.png)", "",
            "![learning curves](learning_curves.png)", "",
            "Runs: [runs.csv](runs.csv); table: [comparison.csv](comparison.csv).",
            ""]
  files.write_text(os.path.join(out, "comparison.md"), "\n".join(lines))


def _write_csv(path: str, rows) -> None:
  with files.atomic(path) as f:
    csv.writer(f, lineterminator="\n").writerows(rows)


def compare(paths: Sequence[str], out: str, log=print) -> List[dict]:
  """Reads finished runs under `paths`, writes the table and plots to `out`."""
  summaries = []
  for run in find_runs(paths):
    s = summarize(run)
    if s is None:
      log(f"skipping {run}: it has no final test metrics (unfinished run)")
    else:
      summaries.extend(split_members(s))
  if not summaries:
    raise UserError("none of the runs has finished; train them first "
                    "(python launch.py --model=NAME --workdir=DIR)")
  summaries, dropped = deduplicate(summaries)
  for gone, kept in dropped:
    log(f"counting one run once: {where(gone)} has the settings and seed of "
        f"{where(kept)}; left out for it")
  groups = group(summaries)
  os.makedirs(out, exist_ok=True)
  write_tables(groups, out, dropped)
  plots.compare_accuracy(groups, os.path.join(out, "accuracy.png"))
  plots.compare_accuracy_time(groups, os.path.join(out, "accuracy_vs_time.png"))
  plots.compare_curves(groups, os.path.join(out, "learning_curves.png"))
  log(f"compared {len(summaries)} runs in {len(groups)} configurations"
      f"{f' ({len(dropped)} counted once)' if dropped else ''}; "
      f"table and plots in {out}/comparison.md")
  return groups


def parse_vary(specs: Sequence[str]) -> Dict[str, list]:
  """`--vary` specs, each NAME=V1/V2/..., as {Config field: [values]}.

  Values are typed as the field's flag is: `mlp_hidden=256/512,256` gives
  (256,) and (512, 256).
  """
  grid = {}
  for spec in specs:
    name, _, listed = (t.strip() for t in spec.partition("="))
    if name in ("model", "seed", "preset") or (
        name not in config_lib.flag_names()):
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
  kind = config_lib.field_type(name)
  try:
    if kind is tuple:
      return tuple(int(v) for v in text.split(","))
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    return kind(text)
  except ValueError:
    raise UserError(f"--vary={name}: {text!r} is not a value of {name}"
                    ) from None


def _folder_name(model: str, values: Dict, seed: int) -> str:
  parts = [model] + [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                     for k, v in values.items()] + [f"seed{seed}"]
  return "-".join(parts)


def train_runs(model_names: Sequence[str], seeds: Sequence[int], runs_root: str,
               preset: str = "tuned", log=print, stream=None,
               vary: Optional[Dict[str, list]] = None,
               **overrides) -> List[str]:
  """Trains each model, `vary` combination and seed into runs_root; reuses
  finished runs. Folders are named MODEL[-NAME=VALUE...]-seedN."""
  devices.setup_process()
  vary = vary or {}
  combos = [dict(zip(vary, c)) for c in itertools.product(*vary.values())]
  folders = []
  for name in model_names:
    for values in combos:
      for seed in seeds:
        folder = os.path.join(runs_root, _folder_name(name, values, seed))
        config = models.get_config(name, preset, seed=seed, workdir=folder,
                                   **{**overrides, **values})
        done = os.path.isdir(folder) and folder_lib.finished(folder)
        if done and not folder_lib.config_differences(
            folder_lib.read_config(folder), config):
          log(f"{folder}: finished before, reused")
        else:
          log(f"training {os.path.basename(folder)} in {folder}")
          run_lib.train_and_evaluate(config, folder, stream=stream)
        folders.append(folder)
  return folders

r"""Compares finished runs (or trains them first): tables, figures, analyses.

  # Run folders (a folder of run folders works too):
  python experiments/compare.py runs/linear runs/cnn runs/gru --out=comparison
  # Train each model and seed first (finished runs are reused), then compare:
  python experiments/compare.py --train=linear,mlp,cnn,rnn,lstm,gru --seeds=0,1,2
  # Train values of settings a --sweep cannot vary (a run each):
  python experiments/compare.py --train=mlp --vary=mlp_hidden=256/512,256 \
      --vary=dropout=0/0.2 --out=comparison

Writes into OUT comparison.md and .csv (a row per configuration of settings and
code, labelled by what differs from its preset: test metrics' mean and sample
std over seeds), runs.csv (a row per run or member), accuracy.png,
accuracy_vs_time.png, learning_curves.png and analysis.md (--no-analyses: not).
Runs diverged or not compared are named with why; with none left it exits 1.
"""

import argparse
import itertools
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnist_jax import config as config_lib
from mnist_jax import files
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.errors import UserError
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import process
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics

from experiments import compare_figures as figures
from experiments.tables import NOT_SETTINGS, parser, script

# Runs whose settings differ only in these are repeats of one configuration.
NOT_CONFIGURATION = (*NOT_SETTINGS, "seed", "chunk_steps", "num_seeds", "sweep")
TIMES = ("wall_time_s", "epoch_time_s", "examples_per_s")


def _runs_in(path: str) -> Tuple[List[str], Optional[Tuple[str, str]]]:
  """([path] or the run folders in it, (what is wrong, what to do) or None)."""
  is_run = lambda p: record.is_run(p) or os.path.isfile(
      os.path.join(p, metrics_log.METRICS_FILE))
  if not os.path.isdir(path):
    return [], ("does not exist", "pass run folders written by launch.py")
  try:
    runs = [path] if is_run(path) else sorted(
        e.path for e in os.scandir(path) if is_run(e.path))
  except OSError as e:
    return [], (f"cannot be read ({e.strerror or e})",
                "give read access to it, or compare other folders")
  return runs, None if runs else (
      "is neither a run folder nor a folder of run folders (no config.json)",
      "pass run folders")


def _left_out(run_dir: str, error: Optional[Exception]) -> Tuple[str, str]:
  """(why `run_dir` is not compared, what to do)."""
  name, fix = record.CONFIG_FILE, "restore it from a copy, or compare others"
  if isinstance(error, KeyError):  # A final row another program wrote.
    return (f"has a final metrics row without {error.args[0]}",
            "compare run folders launch.py wrote")
  try:
    with open(os.path.join(run_dir, name), encoding="utf-8") as f:
      json.load(f)
  except FileNotFoundError:
    return f"has no {name}, so its settings are unknown", fix
  except OSError as e:
    return f"has a {name} that cannot be read ({e.strerror or e})", (
        "give read access to it, or compare other run folders")
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    return (f"has a {name} that is not valid JSON"
            f"{f' at line {e.lineno}' if hasattr(e, 'lineno') else ''}", fix)
  if error:  # read_config's UserError.
    return f"has a {name} with no settings this mnist_jax can use", fix
  state, last = record.status(run_dir)
  report = f"python launch.py --mode=report --workdir={run_dir}"
  return {"finished": ("finished, but metrics.jsonl lost its final row (a "
                       "write cut short)", f"{report} writes it again"),
          "diverged": ("diverged " + record.diverged_at(last), "lower its "
                       "--learning_rate or set --grad_clip and train it again"),
          "unfinished": ("is unfinished", f"{report} completes a run trained "
                         "to its end; else its training command (config.json's "
                         "\"repeat\") resumes it")}[state]


def diverged(last: dict, final: dict, curve: Sequence[dict]) -> Optional[str]:
  """Why a run or member counts as diverged, in a few words, or None."""
  finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
  if last.get("diverged") or final.get("diverged"):
    return "diverged" + (f" at epoch {last.get('epoch', '?')}"
                         if last.get("diverged") else "")
  if not finite(final.get("test_loss")):
    return "test loss not finite"
  if curve and not finite(curve[-1].get("train_loss")):
    return f"training loss not finite at epoch {curve[-1].get('epoch', '?')}"
  return None


def summarize(run_dir: str) -> List[dict]:
  """A summary per member of a finished run; [] if it has no final row."""
  config, rows = record.read_config(run_dir), metrics_log.MetricsLog(
      run_dir).read()
  final = metrics_log.final_row(rows)
  if final is None:
    return []
  # "replicas": older runs' name for the members.
  entries: list = final.get("members") or final.get("replicas") or []
  if entries:
    rows = [{**r, "members": r.get("members") or r.get("replicas")}
            for r in rows]
  members = members_lib.from_config(config) if entries else [None]
  n, chosen = len(members), (final.get("chosen") or {}).get("index")
  out, code = [], record.trained_code(run_dir)
  for m in members:
    own = members_lib.member_rows(rows, m.index) if m else rows
    end, curve = metrics_log.final_row(own) or {}, metrics_log.epoch_rows(own)
    times = {"wall_time_s": metrics_log.wall_time(end),
             "data_time_s": end.get("data_ready_s"),
             "compile_time_s": end.get("compile_time_s"),
             **{k: metrics_log.median_speed(curve, k) for k in TIMES[1:]}}
    out.append({
        "run": run_dir, "code": code, "model": config.model,
        "preset": config.preset, "config": m.config if m else config,
        "seed": m.seed if m else config.seed,
        "member": m.index if m else None, "program_members": n,
        "where": f"member {m.index} of {run_dir}" if m else run_dir,
        "analysed": m is None or m.index == chosen,  # Its analysis/'s.
        "parameters": end.get("num_params"), "curve": curve,
        "epochs": end.get("epochs_run", len(curve)),
        **{k: (entries[m.index] if m else end).get(k)
           for k in metrics.keys("test")},  # A member's own, None if none.
        **{k: v if v is None else v * n if k == "examples_per_s" else v / n
           for k, v in times.items()},  # A member's share of the program's.
        "diverged": diverged(rows[-1], end, curve)})
  return out


def read_runs(paths: Sequence[str]) -> Tuple[List[dict], list]:
  """(the finished runs' summaries, [(folder, why left out, what to do)])."""
  summaries: List[dict] = []
  skipped, seen = [], set()
  for path in paths:
    runs, problem = _runs_in(path)
    skipped += [(path, *problem)] if problem else []
    for run in [r for r in runs if os.path.realpath(r) not in seen]:
      seen.add(os.path.realpath(run))
      try:
        found, error = summarize(run), None
      except (UserError, KeyError) as e:  # KeyError: another program's row.
        found, error = [], e
      summaries += found
      skipped += [] if found else [(run, *_left_out(run, error))]
  return summaries, skipped


def sort_key(value) -> tuple:
  """Orders None, numbers (and numeric text), tuples, then other text."""
  if isinstance(value, (tuple, list)):
    return (2, tuple(map(sort_key, value)))
  try:
    return (0,) if value is None else (1, float(value))
  except (TypeError, ValueError):
    return (3, str(value))


def _label(groups: List[dict]) -> None:
  """Each group's label: its title and what tells groups of one title apart."""
  by_title: Dict[str, List[dict]] = {}
  for g in groups:  # Its seeds' title: the preset's seed.
    preset = models.get_config(g["model"], g["preset"])
    by_title.setdefault(run_lib.title(g["config"].replace(
        seed=preset.seed, num_seeds=preset.num_seeds, sweep=preset.sweep)),
                        []).append(g)
  text = config_lib.value_text
  for title, same in by_title.items():
    base = next((g for g in same if not g["code"].get("dirty")), same[0])
    settings = [g["config"].to_dict() for g in same]
    apart = [k for k in settings[0] if k not in NOT_CONFIGURATION and
             len({text(d[k]) for d in settings}) > 1]
    for g, d in zip(same, settings):
      then, now = (x["code"].get("files") or {} for x in (base, g))
      edited = sorted(f for f in {*then, *now} if then.get(f) != now.get(f))
      parts = [f"--{k}={text(d[k])}" for k in apart] + (
          [f"code edited: {', '.join(edited)}"] if edited and g is not base
          else [])
      g["label"] = title[:-1] + "".join(f", {p}" for p in parts) + ")"


def group(summaries: Sequence[dict]) -> List[dict]:
  """A group per configuration, a run a seed (others `dropped`), sorted."""
  known: Dict[tuple, List] = {}
  for s in summaries:  # Its key: its settings and its core files' hashes.
    code = s["code"].get("files")
    s["key"] = (tuple(sorted((k, str(v)) for k, v in s["config"].to_dict(
    ).items() if k not in NOT_CONFIGURATION)), tuple(sorted(
        code.items())) if isinstance(code, dict) else None)
    known.setdefault(s["key"][0], []).append(s["key"][1])
  found: Dict[tuple, Dict[int, List[dict]]] = {}
  for s in summaries:  # An older run's code: most runs of its settings'.
    codes = [k for k in known[s["key"][0]] if k is not None]
    if s["key"][1] is None and codes:
      s["key"] = (s["key"][0], max(codes, key=codes.count))
    found.setdefault(s["key"], {}).setdefault(s["seed"], []).append(s)
  out = []
  for seeds in found.values():
    kept = [(next((s for s in same if s["member"] is None), same[0]), same)
            for _, same in sorted(seeds.items())]
    runs = [k for k, _ in kept]
    out.append({**{k: runs[0][k] for k in ("model", "preset", "config", "code",
                                           "parameters")},
                "runs": runs, "seeds": [s["seed"] for s in runs],
                "curves": [s["curve"] for s in runs],
                "dropped": [(s, k) for k, same in kept for s in same
                            if s is not k],
                **{k: [s[k] for s in runs] for k in (
                    *metrics.keys("test"), "epochs", *TIMES,
                    "program_members")}})
  _label(out)
  names = list(models.MODELS)
  return sorted(out, key=lambda g: (
      names.index(g["model"]) if g["model"] in names else len(names),
      sorted((k, sort_key(v)) for k, v in g["config"].to_dict().items()
             if k not in NOT_CONFIGURATION), g["label"]))


def _mean_std(values) -> tuple:
  """(mean, sample standard deviation (ddof=1, as report.md; 0 for one))."""
  a = np.asarray([v for v in values if v is not None], np.float64)
  if not len(a):  # No epoch timed whole (each resumed mid-way).
    return float("nan"), 0.0
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _time_cell(runs: Sequence[dict], key: str, digits: int) -> str:
  """Its own runs' mean ± std, then each program of members once (no ±)."""
  own = [s[key] for s in runs if s["program_members"] == 1]
  programs = {s["run"]: (s[key] * s["program_members"], s["program_members"])
              for s in runs if s["program_members"] > 1}
  mean, std = _mean_std(own)
  return "; ".join(([f"{mean:.{digits}f}" + (
      f" ± {std:.{digits}f}" if len(own) > 1 else "")] if own else []) + [
          f"{t:.{digits}f} ({m} members, one program)"
          for t, m in programs.values()])


def _notes(groups, dropped, gone, skipped) -> List[str]:
  """comparison.md's paragraphs above its table."""
  notes = [f"The configurations differ in {what}: " + ", ".join(
      f"{g['label']} {n}" for g, n in zip(groups, counts)) + "."
           for what, counts in (
               ("epochs", [g["config"].epochs for g in groups]),
               ("seeds", [len(g["seeds"]) for g in groups]))
           if len(set(counts)) > 1]
  single = [g["label"] for g in groups if len(g["runs"]) == 1]
  spread = [f"{100 * _mean_std(g['test_accuracy'])[1]:.2f}" for g in groups
            if len(g["runs"]) > 1]
  if len(groups) > 1 and single:
    notes.append(f"One seed each: {', '.join(single)} (a ranking of these "
                 "rests on one seed). " + (
        f"The seed-to-seed spread of the others is {', '.join(spread)} "
        "points of test accuracy (standard deviation): a smaller difference "
        "is no ranking." if spread else "With no configuration of several "
        "seeds, the spread is unknown: train more (--seeds=0,1,2) before "
        "ranking."))
  shared = sorted({(s["run"], s["program_members"]) for g in groups
                   for s in g["runs"] if s["program_members"] > 1})
  for text, items, sep in (
      ("The members of a --num_seeds or --sweep run trained together, in "
       "one program: the table gives its time once, \"T (N members, one "
       "program)\", with no ±; runs.csv, comparison.csv's means and the "
       "time figure charge each member its share",
       [f"{run} ({m} members)" for run, m in shared], ", "),
      ("Diverged, left out of the table, means and plots (runs.csv says "
       "why)", [f"{s['where']} ({s['diverged']})" for s in gone], "; "),
      ("Counted once (the same configuration and seed)",
       [f"{a['where']} left out for {b['where']}" for a, b in dropped], "; "),
      ("Not compared", [f"{f} ({what}; {fix})" for f, what, fix in skipped],
       "; ")):
    notes += [f"{text}: {sep.join(items)}."] if items else []
  return [line for n in notes for line in (n, "")]


def write_tables(groups, out, dropped=(), gone=(), skipped=()) -> None:
  """comparison.csv, runs.csv and comparison.md."""
  test, tested = metrics.keys("test"), metrics.of("test")
  span = lambda v: str(min(v)) if min(v) == max(v) else f"{min(v)}-{max(v)}"
  stats = [{k: _mean_std(g[k]) for k in (*test, *TIMES)} for g in groups]
  files.write_csv(os.path.join(out, "comparison.csv"), [
      ["model", "preset", "label", "runs", "seeds", "parameters",
       *(f"{k}_{s}" for k in test for s in ("mean", "std")), "epochs",
       "wall_time_s_mean", "wall_time_s_std", "epoch_time_s_mean",
       "examples_per_s_mean"],
      *([g["model"], g["preset"], g["label"], len(g["runs"]),
         " ".join(map(str, g["seeds"])), g["parameters"],
         *(f"{v:.6f}" for k in test for v in st[k]), span(g["epochs"]),
         f"{st['wall_time_s'][0]:.2f}", "" if max(g["program_members"]) > 1
         else f"{st['wall_time_s'][1]:.2f}", f"{st['epoch_time_s'][0]:.3f}",
         f"{st['examples_per_s'][0]:.0f}"] for g, st in zip(groups, stats))])
  columns = [c.partition(":")[::2] for c in (
      "model preset label seed run member program_members parameters".split()
      + [f"{k}:.6f" for k in test] + "epochs wall_time_s:.2f data_time_s:.2f "
      "compile_time_s:.2f epoch_time_s:.3f examples_per_s:.0f diverged "
      "skipped".split())]

  def row(s: dict, label: str) -> list:
    s = {**s, "label": label, "compile_time_s": s.get("compile_time_s") or 0}
    return ["" if s.get(c) is None else format(s[c], f) for c, f in columns]

  files.write_csv(os.path.join(out, "runs.csv"), [
      [c for c, _ in columns],
      *(row(s, g["label"]) for g in groups for s in g["runs"]),
      *(row(s, s["model"]) for s in gone),
      *(row({"run": f, "skipped": what}, "") for f, what, _ in skipped)])
  cell = lambda m, v: m.text(_mean_std(v)[0]) + (
      f" ± {m.text(_mean_std(v)[1])}" if len(v) > 1 else "")
  files.write_text(os.path.join(out, "comparison.md"), "\n".join([
      "# Model comparison", "",
      "Mean ± sample standard deviation (n-1, as report.md) over seeds where "
      "a configuration has several runs. Time is a run's wall time "
      "(`wall_time_s`, as the README defines it: from the data ready to the "
      "test metrics, compilation and evaluation in it, the data's "
      "preparation and the report not). Epoch time and examples/s are "
      "medians over the epochs timed whole.", "",
      *_notes(groups, dropped, gone, skipped),
      *files.table(
          ["model", "preset", "runs", "parameters",
           *(f"test {m.label}" for m in tested), "epochs", "time s",
           "epoch time s", "examples/s"],
          [(g["label"], g["preset"], len(g["runs"]), f"{g['parameters']:,}",
            *(cell(m, g[f"test_{m.name}"]) for m in tested),
            span(g["epochs"]), _time_cell(g["runs"], "wall_time_s", 1),
            _time_cell(g["runs"], "epoch_time_s", 2),
            f"{st['examples_per_s'][0]:,.0f}") for g, st in zip(groups, stats)],
          "ll" + "r" * (6 + len(tested))), "",
      *(f"![{name[:-4]}]({name})\n" for name in figures.PLOTS),
      "Runs: [runs.csv](runs.csv); table: [comparison.csv](comparison.csv).",
      ""]))


def compare(paths, out: str, log=print, analyses: bool = False,
            warn=None) -> List[dict]:
  """Writes the tables and figures of the runs in `paths` into `out`."""
  summaries, skipped = read_runs(paths)
  gone = [s for s in summaries if s["diverged"]]
  groups = group([s for s in summaries if not s["diverged"]])
  dropped = [pair for g in groups for pair in g["dropped"]]
  if not groups:
    why = [f"{f} {what} ({fix})" for f, what, fix in skipped] + [
        f"{s['where']} {s['diverged']}" for s in gone]
    raise UserError(
        "{} {}; {}".format(*skipped[0]) if len(why) == 1 and skipped else
        "no run to compare: " + "; ".join(why) if why else "none of the runs "
        "has finished; train them first (python launch.py --model=NAME "
        "--workdir=DIR)")
  for folder, what, fix in skipped:
    (warn or (lambda line: print(line, file=sys.stderr)))(
        f"skipping {folder}: it {what}; {fix}")
  for s in gone:
    log(f"{s['where']} {s['diverged']}: named in comparison.md, left out of "
        "the means and plots")
  for left, s in dropped:
    log(f"counting one run once: {left['where']} has the configuration and "
        f"seed of {s['where']}; left out for it")
  os.makedirs(out, exist_ok=True)
  write_tables(groups, out, dropped, gone, skipped)
  for name in figures.PLOTS:
    figures.plot(groups, name, os.path.join(out, name))
  if analyses:
    figures.write_analyses(groups, out)
  log(f"compared {sum(len(g['runs']) for g in groups)} runs in "
      f"{len(groups)} configurations"
      f"{f' ({len(dropped)} counted once)' if dropped else ''}; "
      f"table and plots in {out}/comparison.md")
  return groups


def parse_vary(specs: Sequence[str]) -> Dict[str, list]:
  """--vary's NAME=V1/V2/... as {setting: [values]}, each read as its flag
  reads it (`mlp_hidden=256/512,256`: (256,) and (512, 256))."""
  grid: Dict[str, list] = {}
  for spec in specs:
    name, _, listed = (t.strip() for t in spec.partition("="))
    if name in ("model", "seed", "preset") or name not in config_lib.SETTINGS:
      raise UserError(
          f"--vary={spec}: vary a setting other than model, preset and seed "
          "(--train, --preset and --seeds choose those), e.g. "
          "--vary=mlp_hidden=256/512")
    texts = [t.strip() for t in listed.split("/") if t.strip()]
    if not texts or name in grid:
      raise UserError(f"--vary={spec}: give each name once, as NAME=V1/V2/...")
    grid[name] = []
    for text in texts:
      try:
        grid[name].append(config_lib.parse(name, text))  # As its flag reads.
      except UserError as e:
        raise UserError(f"--vary={name}: {text!r} is not a value of {name} "
                        f"({e})") from None
  return grid


def train_runs(names, seeds, runs_root: str, preset: str = "tuned", log=print,
               stream=None, vary=None, **overrides) -> List[str]:
  """Trains each model, `vary` combination and seed into runs_root (folders
  MODEL[-NAME=VALUE...]-seedN), reusing finished runs: --train, --vary."""
  process.setup_process()
  vary, folders = vary or {}, []
  for name, values, seed in itertools.product(
      names, [dict(zip(vary, c)) for c in itertools.product(*vary.values())],
      seeds):
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
      modes.train_and_evaluate(config, folder, stream=stream)
    folders.append(folder)
  return folders


def main(argv: Optional[Sequence[str]] = None) -> None:
  names = lambda text: [t.strip() for t in text.split(",") if t.strip()]
  p = parser(__doc__)
  p.add_argument("runs", nargs="*", help="run folders, or folders of them")
  p.add_argument("--out", default="comparison", help="the tables' folder")
  p.add_argument("--analyses", action=argparse.BooleanOptionalAction,
                 default=True, help="write OUT/analysis.md (and its figures)")
  p.add_argument("--train", type=names, default=[],
                 help="models to train first (e.g. linear,cnn,gru)")
  p.add_argument("--seeds", type=lambda t: [int(s) for s in names(t)],
                 default=[0], help="--train: each model's seeds (0,1,2)")
  p.add_argument("--vary", action="append", default=[], help="--train: "
                 "values of a setting, NAME=V1/V2/...; repeat for a grid")
  p.add_argument("--runs_root", default=os.path.join("runs", "compare"),
                 help="--train: where the run folders go (MODEL-seedN)")
  p.add_argument("--preset", default="tuned", help="--train: every model's")
  p.add_argument("--epochs", type=int, help="--train: the preset's by default")
  args = p.parse_args(argv)
  paths = list(args.runs)
  if args.train:
    paths += train_runs(args.train, args.seeds, args.runs_root, args.preset,
                        vary=parse_vary(args.vary), **{
                            k: v for k in ("epochs", "data_dir", "mnist_dir")
                            if (v := getattr(args, k)) is not None})
  elif args.vary:
    raise UserError("--vary needs --train=MODEL: it trains a run per value")
  if not paths:
    raise UserError("pass run folders to compare, or --train=MODEL[,MODEL...]")
  compare(paths, args.out, analyses=args.analyses)


if __name__ == "__main__":
  script(main)

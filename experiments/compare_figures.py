"""compare.py's figures, and its page of analyses side by side (analysis.md)."""

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from matplotlib import ticker
from mnist_jax import files
from mnist_jax.data import pipeline
from mnist_jax.results import analysis
from mnist_jax.results import analysis_plots
from mnist_jax.results import plots
from mnist_jax.results import run as run_lib
from mnist_jax.results.plots import MARKERS, plt


def _accuracies(groups):
  """Each group's test accuracies (%), the axis from a whole point below."""
  accs = [100 * np.asarray(g["test_accuracy"]) for g in groups]
  return accs, max(0.0, float(np.floor(np.concatenate(accs).min())) - 1.0)


def _distinct(names: Sequence[str], folders: Sequence[str]) -> List[str]:
  """`names`, each that repeats followed by its folder's name."""
  return [n + (f" [{os.path.basename(os.path.normpath(f))}]"
               if list(names).count(n) > 1 else "")
          for n, f in zip(names, folders)]


def group_labels(groups) -> List[str]:
  return _distinct([g["label"] for g in groups],
                   [g["runs"][0]["run"] for g in groups])


def _spread(values: np.ndarray) -> Optional[float]:
  """The sample std (n-1) of several values (a whisker), None for one."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else None


def accuracy_figure(groups):
  """Test accuracy per configuration: mean bar, std whisker, a dot a seed."""
  labels = group_labels(groups)  # The axes keep 5 in beside the longest.
  fig, ax = plt.subplots(figsize=(5 + 0.075 * max(map(len, labels)),
                                  0.55 * len(groups) + 1.6),
                         layout="constrained")
  accs, low = _accuracies(groups)
  for i, (acc, color) in enumerate(zip(accs, plots.palette(len(groups)))):
    std = _spread(acc)
    ax.barh(i, acc.mean() - low, left=low, color=color, alpha=0.75, xerr=std,
            capsize=4)
    ax.plot(acc, [i] * len(acc), "k.", ms=6)
    end = max(acc.max(), acc.mean() + (std or 0.0))
    room = 100 - end > 0.3 * (100 - low)  # Beside the bar if it fits.
    ax.text((end if room else low) + 0.015 * (100 - low), i,
            f"{acc.mean():.2f}%{f' ± {std:.2f}' if std else ''} "
            f"(n={len(acc)})", va="center", ha="left", fontsize=9,
            bbox=dict(fc="white", alpha=0.8, lw=0, pad=1))  # Over whiskers.
  ax.set_xlim(low, 100)
  ax.set_yticks(range(len(groups)), labels)
  ax.invert_yaxis()
  ax.set_xlabel(f"Test accuracy (%; axis from {low:g}, a point below the "
                "lowest run)")
  ax.grid(axis="x", alpha=0.3)
  return fig


def accuracy_time_figure(groups):
  """Test accuracy against wall time, a point per configuration."""
  labels = group_labels(groups)
  fig, ax = plt.subplots(figsize=(min(6.5 + 0.06 * max(map(len, labels)), 12),
                                  4.8), layout="constrained")
  accs, low = _accuracies(groups)
  times = [np.asarray(g["wall_time_s"], np.float64) for g in groups]
  for i, (acc, t, color, label) in enumerate(zip(accs, times, plots.palette(
      len(groups)), labels)):
    marker = MARKERS[i % len(MARKERS)]
    if len(acc) > 1:
      ax.plot(t, acc, marker, color=color, alpha=0.35, ms=4, ls="none")
    xerr = _spread(t)
    if xerr is not None and t.mean() - xerr <= 0:  # No time at or below 0.
      xerr = [[t.mean() - t.min()], [xerr]]
    ax.errorbar(t.mean(), acc.mean(), xerr=xerr, yerr=_spread(acc), fmt=marker,
                color=color, ms=8, capsize=3, label=label, clip_on=False)
  log = max(map(max, times)) > 10 * min(map(min, times))
  if log:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    plots.plain_ticks(ax.xaxis)
  ax.set(ylim=(low, 100), ylabel=f"Test accuracy (%; from {low:g})",
         xlabel="Wall time (s; data ready to test metrics, as the README's)"
         + ("; log scale" if log else "") + (
             "\nA member of a --num_seeds or --sweep run: its share, the "
             "run's time / its members" if any(max(g["program_members"]) > 1
                                               for g in groups) else ""))
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1),
            borderaxespad=0)
  return fig


# OUT's figures: name -> (figure (None: curves), title, its words: seeds, one).
PLOTS = {
    "accuracy.png": (accuracy_figure, "Test accuracy per configuration ({})",
                     "bar: mean over seeds, whisker: std, dots: each run",
                     "one seed each: no spread shown"),
    "accuracy_vs_time.png": (accuracy_time_figure, "Test accuracy against "
                             "wall time{}", " (mean ± std over seeds)", ""),
    "learning_curves.png": (None, "Learning curves ({}validation: the model "
                            "at the epoch's end)", "mean over seeds, a band "
                            "from min to max; ", "")}


def plot(groups, name: str, path: str) -> str:
  """Draws PLOTS' `name` of `groups` into `path`."""
  figure, title, several, one = PLOTS[name]
  title = title.format(several if any(len(g["runs"]) > 1 for g in groups)
                       else one)
  if figure is None:
    return plots.learning_curves([(label, g["curves"]) for label, g in zip(
        group_labels(groups), groups)], path, title)
  return plots.save(figure(groups), path, title)


def compare_attributions(results, path: str) -> str:
  """The same test digits' integrated gradients, a row per run."""
  n = min(r["grid"] for r in results)
  said = lambda r, j: r["predicted"][r["shown"][j]]
  images = [*results[0]["images"][:n], *(
      m for r in results for m in analysis_plots.diverging(r["ig"][:n]))]
  titles = [f"#{results[0]['shown'][j]}" for j in range(n)] + [
      f"pred {r['names'][said(r, j)]}" for r in results for j in range(n)]
  red = {(i + 1) * n + j for i, r in enumerate(results) for j in range(n)
         if said(r, j) != r["labels"][r["shown"][j]]}
  return plots.image_grid(
      images, titles, red, path, n,
      ["test image"] + [r["label"] for r in results],
      "Where each looks: integrated gradients of the same test images to "
      "each model's predicted class (red for, blue against; each map to its "
      "own largest |value|; wrong: framed in red)", fontsize=9)


# analysis.md's figures: (title, file, draw, a key the runs it shows hold).
ANALYSIS_FIGURES = (
    ("How far it must read", "analysis_reading.png", analysis_plots.reading,
     "reading_accuracy"),
    ("What breaks it", "analysis_robustness.png", analysis_plots.robustness,
     None),
    ("How sure it is", "analysis_reliability.png", analysis_plots.reliability,
     None),
    ("What it learned (PCA)", "analysis_pca.png", analysis_plots.maps, None),
    ("Where it looks", "analysis_attributions.png", compare_attributions,
     None))


def load_analysis(workdir: str) -> Dict[str, object]:
  """A run folder's analysis, as analysis.analyse returned it (no features)."""
  folder = os.path.join(workdir, analysis.FOLDER)
  with open(os.path.join(folder, analysis.SUMMARY)) as f, \
      np.load(os.path.join(folder, analysis.ARRAYS)) as a:
    return {**json.load(f), **a}


def analysis_page(folders, page: str, figures: Optional[str] = None,
                  labels=None, train_s=None, note: str = "") -> None:
  """Writes `page`, the runs' analyses side by side, figures in `figures`."""
  results = [load_analysis(folder) for folder in folders]
  names = _distinct(labels or [f"{r['model']} ({r['preset']})"
                               for r in results], folders)
  figures = figures or os.path.dirname(page) or "."
  os.makedirs(figures, exist_ok=True)
  rows = []  # report.md's table, with the wall time.
  for r, name, t in zip(results, names, train_s or [None] * len(results)):
    r["label"] = name
    first, *rest = analysis.cells(analysis.summary(r))
    rows.append([first, ("wall time", "n/a" if t is None else f"{t:.1f} s"),
                 *rest])
  link = os.path.relpath(figures, os.path.dirname(page) or ".")
  drawn = [(title, name if link == "." else f"{link}/{name}")
           for title, name, draw, key in ANALYSIS_FIGURES
           if (shown := [r for r in results if key is None or key in r])
           and draw(shown, os.path.join(figures, name))]
  files.write_text(page, "\n".join([
      "# What each model learned", "", *([note, ""] if note else []),
      *files.table(["model", *(k for k, _ in rows[0])],
                   [[name, *(v for _, v in cells)]
                    for name, cells in zip(names, rows)],
                   "l" + "r" * len(rows[0])), "",
      analysis.NOTES + " Wall time: the run's (a member's share of its "
      "program's).", "", *analysis.figure_lines(drawn, "##")]))


def write_analyses(groups, out: str) -> None:
  """OUT/analysis.md of each group's first run analysed (written if none)."""
  shown = {}
  for g in groups:
    s = next((s for s in g["runs"]
              if s["run"] not in shown and s["analysed"]), None)
    if s:
      shown[s["run"]] = (g["label"], s["wall_time_s"])
  for folder in shown:
    if not os.path.exists(os.path.join(folder, analysis.FOLDER,
                                       analysis.SUMMARY)):
      run = run_lib.load_run(folder)
      data = pipeline.load(run.config)
      analysis.write(folder, run, data.test, data.val, data.class_names,
                     maps=False)
  labels, times = zip(*shown.values())
  analysis_page(list(shown), os.path.join(out, "analysis.md"), labels=labels,
                train_s=times, note="One run each: an order in these columns "
                "is one seed's, which another seed may change; compare "
                "configurations of several seeds before ranking them."
                if len(shown) > 1 and all(len(g["runs"]) == 1 for g in groups)
                else "")

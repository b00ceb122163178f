"""The figures of analysis.py's results (which carry its settings). Each takes
a list of runs' results: one run's figure is the comparison's
(experiments/compare.py); small images share one axes (plots.image_grid),
each figure well under a second."""

from typing import List, Sequence, Set

import numpy as np

from matplotlib import patheffects
from matplotlib import transforms

from mnist_jax.results import plots
from mnist_jax.results.plots import plt

CMAP = "RdBu_r"  # Attributions and weights: red positive, blue negative.
LINES = ("-", "--", ":", "-.")  # With plots.MARKERS: runs' lines told apart.
CALIBRATED = (("test", "steelblue", "o", "-", "as trained"),
              ("scaled", "darkorange", "s", "--", "temperature scaled"))
FEW = 0.01  # A bin with less than this share of the images is drawn pale.
# Classes' colours, 0-9: Paul Tol's colour-blind-safe "muted" and a dark grey.
CLASSES = ("#332288", "#88CCEE", "#117733", "#CC6677", "#DDCC77", "#44AA99",
           "#882255", "#999933", "#AA4499", "#555555")


def _line(ax, i: int, n: int, x, y, label: str, **style):
  """Run i of n's line: its colour, open marker and line style, moved a few
  points sideways from the others' so equal lines stay apart (set the x
  limits: autoscale would include the move)."""
  ax.plot(x, y, LINES[i % len(LINES)], marker=plots.MARKERS[i], mfc="none",
          color=plots.palette(n)[i], clip_on=False, label=label,
          transform=transforms.offset_copy(ax.transData, ax.figure,
                                           units="points",
                                           x=3 * (i - (n - 1) / 2)), **style)


def _panels(n: int, width: float, height: float, **kwargs):
  """A row of n panels of a size each, laid out whole."""
  return plt.subplots(1, n, figsize=(width * n + 0.6, height), squeeze=False,
                      layout="constrained", **kwargs)


def reading(results: Sequence[dict], path: str) -> str:
  """Accuracy and true-class probability after each unit read (a row, ...),
  a line per run."""
  fig, axes = _panels(2, 5, 4.4)
  # Each run's units (rows, ...) and the steps each takes.
  said = {(r["reading_unit"][1], int(r["reading_steps"][0])) for r in results}
  units_read = "; ".join(f"{units.capitalize()} read" + (
      f" ({every} steps each)" if every > 1 else " (a step each)")
                         for units, every in sorted(said))
  for ax, key, what in zip(axes[0], ("accuracy", "true_class_probability"), (
      "Test accuracy (%)", "Mean probability of the true class (%)")):
    for i, r in enumerate(results):
      y = 100 * r[f"reading_{key}"]
      _line(ax, i, len(results), np.arange(1, len(y) + 1), y, r["label"],
            ms=4)
    ax.axhline(100 / len(results[0]["names"]), color="gray", ls=":",
               label="chance")
    ax.set(xlabel=units_read, ylabel=what, ylim=(0, 100),
           xlim=(0.5, max(len(r["reading_accuracy"]) for r in results) + .5))
    ax.grid(alpha=0.3)
  return plots.save(fig, path, "How far it must read: the model's own "
                    "output layer on its top layer's state after each unit "
                    "it reads (test set)", axes)


def robustness(results: Sequence[dict], path: str) -> str:
  """Test accuracy against each change's level: a panel per change, a line
  per run (`_line`'s), one accuracy axis."""
  fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharey=True,
                           layout="constrained")
  for ax, (change, unit, levels) in zip(axes.flat, results[0]["changes"]):
    for i, r in enumerate(results):
      x, y = zip(*[(l, 100 * a) for c, l, a, _ in r["robustness"]
                   if c == change])
      _line(ax, i, len(results), x, y, r["label"], ms=6, mew=1.2, lw=1.2)
    pad = 0.04 * (max(levels) - min(levels))  # _line: no autoscale.
    ax.set(title=change, xlabel=f"Level ({unit})", xticks=levels, ylim=(0, 100),
           xlim=(min(levels) - pad, max(levels) + pad))
    ax.grid(alpha=0.3)
  plt.setp(axes[:, 0], ylabel="Test accuracy (%)")
  return plots.save(fig, path, "What breaks it: test accuracy under each "
                    "change (level 0: all test images, the run's test "
                    f"accuracy; other levels: every {results[0]['stride']}th "
                    "test image, "
                    f"{min(n for *_, n in results[0]['robustness'])} images)",
                    axes)


def reliability(results: Sequence[dict], path: str) -> str:
  """Reliability diagrams, a panel per run (shared axes): fraction correct
  against confidence per bin, as trained and temperature scaled, as step
  outlines, pale where a bin holds under FEW of the images; under each, the
  share of the images each bin holds (most sit in the top one)."""
  fig, axes = plt.subplots(
      2, len(results), figsize=(4.2 * len(results) + 0.6, 6.4), squeeze=False,
      sharex=True, sharey="row", layout="constrained",
      gridspec_kw={"height_ratios": [3, 1.3]})
  for ax, under, r in zip(axes[0], axes[1], results):
    bins = len(r["test_count"])
    edges, kinds = np.linspace(0, 1, bins + 1), [
        k for k in CALIBRATED if f"{k[0]}_count" in r]
    for j, (key, color, marker, line, what) in enumerate(kinds):
      count = np.asarray(r[f"{key}_count"], np.float64)
      share = count / max(count.sum(), 1)
      for few in (True, False):  # The pale bins, then the others over them.
        shown = (count > 0) & ((share < FEW) == few)
        correct = np.where(shown, r[f"{key}_correct"], np.nan)
        ax.stairs(correct, edges, baseline=None, color=color, ls=line,
                  lw=1.6, alpha=0.25 if few else 1.0)
        ax.plot((edges[:-1] + edges[1:]) / 2, correct, marker, color=color,
                lw=0, mfc="none" if j else color, ms=5, clip_on=False,
                alpha=0.25 if few else 1.0)
      ax.plot([], [], ls=line, marker=marker, color=color, label=what,
              mfc="none" if j else color)
      width = (edges[1] - edges[0]) / len(kinds)
      bars = under.bar(edges[:-1] + j * width, 100 * share, width=width,
                       align="edge", color=color)  # The kinds side by side.
      under.bar_label(bars, labels=[f"{100 * v:.0f}%" if v >= 0.05 else ""
                                    for v in share], fontsize=7,
                      rotation=90 if len(kinds) > 1 else 0)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    after = (f" -> {100 * r['scaled_ece']:.2f}% at T = {r['temperature']:.2f}"
             if r.get("temperature") else " (no validation split: not scaled)")
    ax.set(title=f"{r['label']}\nECE {100 * r['test_ece']:.2f}%{after}",
           xlim=(0, 1), ylim=(0, 1))
    ax.title.set_fontsize(9)
    under.set(xlabel="Confidence (top probability)", ylim=(0, 140))
    for a in (ax, under):
      a.grid(alpha=0.3)
  axes[0, 0].set_ylabel("Fraction correct in the bin")
  axes[1, 0].set_ylabel("Share of the images (%)")
  return plots.save(fig, path, "How sure it is: reliability on the test "
                    f"set ({bins} equal-width bins of confidence; pale: bins "
                    f"of under {100 * FEW:g}% of the images, whose fraction "
                    "correct varies by chance)", axes)


def maps(results: Sequence[dict], path: str, key: str = "pca") -> str:
  """The last hidden layer's test features in 2-D, a panel per run, coloured
  and named (at its median) by true class, mistakes as black x. PCA
  coordinates are in units of each run's first component's standard
  deviation, on shared axes; t-SNE's have no units (no ticks)."""
  pca = key == "pca"
  fig, axes = _panels(len(results), 4.4, 4.9, sharex=pca, sharey=pca)
  for ax, r in zip(axes[0], results):
    index = r.get(f"{key}_index", np.arange(len(r["labels"])))
    xy = np.asarray(r[key], np.float64)
    xy = xy / max(xy[:, 0].std(), 1e-30) if pca else xy
    y, wrong = r["labels"][index], (r["predicted"] != r["labels"])[index]
    for k in np.unique(y):
      ax.scatter(*xy[y == k].T, s=2, color=CLASSES[k % 10], alpha=0.5,
                 rasterized=True, label=r["names"][k])
      ax.text(*np.median(xy[y == k], 0), r["names"][k], fontsize=12,
              weight="bold", ha="center", va="center", path_effects=[
                  patheffects.withStroke(linewidth=3, foreground="white")])
    ax.scatter(*xy[wrong].T, s=10, marker="x", color="black", lw=0.6,
               label="mistake", rasterized=True)
    if pca:
      share = 100 * np.asarray(r["explained"])
      ax.set(xlabel=f"PC1 ({share[0]:.0f}% of variance)",
             ylabel=f"PC2 ({share[1]:.0f}% of variance)")
    else:
      ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    ax.set_title(f"{r['label']}\n{len(y)} test images, {wrong.sum()} wrong",
                 fontsize=9)
  for handle in plots.legend(fig, axes[:, :1]).legend_handles:
    handle.set(sizes=[12], alpha=1)
  what = "PCA" if pca else f"t-SNE (every {results[0]['stride']}th test image)"
  return plots.save(fig, path, f"What it learned: {what} of the last "
                    "hidden layer's features, coloured by true class" + (
                        " (axes in PC1 standard deviations)"
                        if pca else ""))


def diverging(maps, scale=None) -> np.ndarray:
  """Maps [n, h, w] as RGB [n, h, w, 3] uint8 in RdBu, each to its own
  largest |value| (or all to `scale`)."""
  v = np.asarray(maps, np.float64)
  v = v / np.maximum(np.abs(v).max(axis=(1, 2), keepdims=True)
                     if scale is None else scale, 1e-30)
  return (255 * plt.get_cmap(CMAP)((v + 1) / 2)[..., :3]).astype(np.uint8)


def attributions(results: Sequence[dict], path: str) -> str:
  """One run's shown digits over their integrated gradients, gradient x input
  and, for a sequence model, those summed per unit read (one scale, with a
  colour bar): the first test digits, then the mistakes, under headings."""
  r, cols, kinds, scale = results[0], 6, ["image", "integrated\ngradients",
                                          "gradient\nx input"], None
  n, names, grid = len(r["ig"]), r["names"], r["grid"]
  maps = [r["images"], diverging(r["ig"]), diverging(r["gxi"])]
  if "units_map" in r:
    top, (unit, units) = float(np.abs(r["units_ig"]).max()), r["reading_unit"]
    maps.append(diverging(r["units_map"], top))
    kinds.append(f"integrated\ngradients\nsummed per {unit}")
    scale = (plt.cm.ScalarMappable(plt.Normalize(-top, top), CMAP),
             f"Integrated gradients summed per {unit} read (logits of the "
             f"predicted class; one scale for all {units})")
  cells = [*range(grid), *[None] * (-grid % cols), *range(grid, n)]
  cells += [None] * (-len(cells) % cols)
  images: list = []
  titles: List[str] = []
  red: Set[int] = set()
  for start in range(0, len(cells), cols):
    for k, kind in enumerate(maps):
      for i in cells[start:start + cols]:
        j = None if i is None or k else r["shown"][i]  # A digit's caption.
        true, said = (0, 0) if j is None else (r["labels"][j],
                                               r["predicted"][j])
        if true != said:
          red.add(len(images))
        images.append(None if i is None else kind[i])
        titles.append("" if j is None else
                      f"#{j} true {names[true]}\npred {names[said]}")
  headings = {0: f"The first {grid} test images"}
  if n > grid:
    headings[cells.index(grid) // cols * len(maps)] = (
        f"The {n - grid} most confident mistakes")
  return plots.image_grid(
      images, titles, red, path, cols, kinds * (len(cells) // cols),
      "Where it looks: attribution to the predicted class (red for, blue "
      "against; each map to its own largest |value|; wrong: "
      "framed in red)", fontsize=9, headings=headings, scale=scale)

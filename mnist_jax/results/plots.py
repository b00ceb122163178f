"""Figures, saved as PNG files with matplotlib's non-interactive Agg backend."""

import os
import textwrap
from typing import Dict, List, Optional, Sequence, Set

import matplotlib
import numpy as np
# Off-screen figures, each closed once saved; in a notebook (MPLBACKEND inline)
# the backend stays, or the notebook's own figures would stop showing.
if "inline" not in os.environ.get("MPLBACKEND", ""):
  matplotlib.use("Agg")
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
from matplotlib import patches
from matplotlib import ticker

from mnist_jax import files
from mnist_jax.rundir import metrics_log
# pylint: enable=g-import-not-at-top,wrong-import-position

DPI = 120
DIGIT_CMAP = "gray"  # Every figure draws digits as the model sees them:
# white ink (255) on black (0), as README.md says of predict's inputs.
MARKERS = "osD^vP*Xhp<>"


def legend(fig, axes):
  """One legend for every panel of `axes` (each label once), below them."""
  seen = {}
  for ax in np.ravel(axes):
    for handle, text in zip(*ax.get_legend_handles_labels()):
      seen.setdefault(text, handle)
  return fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                    ncols=min(len(seen), 6), fontsize=8)


def save(fig, path: str, title: str = "", legend_of=None) -> str:
  """Saves `fig` whole (legends outside the axes too) and closes it: with
  `title` over it, wrapped between words to its width, and a `legend` of the
  panels `legend_of`."""
  if legend_of is not None:
    legend(fig, legend_of)
  if title:
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 12),
                               break_on_hyphens=False, break_long_words=False),
                 fontsize=10)
  with files.atomic(path, "wb") as f:
    fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
  plt.close(fig)
  return path


def plain_ticks(axis) -> None:
  """Plain-number major ticks (also on a log axis), no minor labels."""
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(ticker.NullFormatter())


def bar_values(ax, values, fmt, fontsize) -> None:
  """Each bar's value (None: none) over it, or in white inside its top where
  the text would pass the axis's end (set the limits first)."""
  low, high = ax.get_ylim()
  for i, v in enumerate(values):
    if v is None:
      continue
    inside = v > high - 0.08 * (high - low)
    ax.text(i, v - 0.01 * (high - low) if inside else v + 0.01 * (high - low),
            fmt(v), ha="center", va="top" if inside else "bottom",
            color="white" if inside else "black", fontsize=fontsize)


def epoch_axis(ax, epochs) -> None:
  """Whole-number epoch ticks, also for a run of one epoch."""
  epochs = sorted(set(epochs))
  if not epochs:
    return
  if len(epochs) <= 15:
    ax.set_xticks(epochs)
  else:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)


# How a train metric of an epoch is measured (the validation's is the model at
# the epoch's end, without them).
TRAIN_MEAN = ("the epoch's mean over its steps (under its augmentation and "
              "dropout, where it has them)")


def learning_curves(runs, path: str, title: str = "") -> str:
  """Loss and accuracy per epoch of `runs` [(label, [metrics.jsonl rows of
  each of its seeds])]: train dashed, validation solid, a colour each, the
  mean over seeds (a band from min to max); one run's test result marked."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
  every: List[int] = []
  drawn: Set[str] = set()
  colors = palette(len(runs))
  for ax, key, scale, name in ((axes[0], "loss", 1.0, "Loss (cross entropy)"),
                               (axes[1], "accuracy", 100.0, "Accuracy (%)")):
    for (_, seeds), color in zip(runs, colors):
      for split, style in (("train", "o--"), ("val", "s-")):
        # A value logged as null (not finite) is a gap.
        lines = [[(r["epoch"], np.nan if r.get(f"{split}_{key}") is None else
                   scale * r[f"{split}_{key}"])
                  for r in metrics_log.epoch_rows(rows)] for rows in seeds]
        lines = [l for l in lines if l and not np.isnan([v for _, v in l]
                                                        ).all()]
        if lines:
          n = min(map(len, lines))
          x, y = [e for e, _ in lines[0][:n]], np.array(
              [[v for _, v in l[:n]] for l in lines])
          every, drawn = every + x, drawn | {split}
          ax.plot(x, y.mean(0), style, color=color, ms=4, clip_on=False)
          if len(y) > 1:
            ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2)
    test = [scale * r[f"test_{key}"] for r in runs[0][1][0]
            if r.get(f"test_{key}") is not None] if len(runs) == 1 else []
    if test:
      ax.axhline(test[-1], color="gray", ls="--", label=f"test ({test[-1]:.4g})")
    ax.set(xlabel="Epoch", ylabel=name)
    ax.set_title(name.split(" (")[0], pad=10)  # Clear of markers at 100%.
    epoch_axis(ax, every)
    if key == "accuracy":  # Not past 100 (matplotlib's margin).
      ax.set_ylim(top=min(ax.get_ylim()[1], 100))
    ax.grid(alpha=0.3)
  keys = [plt.Line2D([], [], ls=ls, marker=m, ms=4, color="k", label=label)
          for split, ls, m, label in (
              ("train", "--", "o", f"train: {TRAIN_MEAN}"),
              ("val", "-", "s", "validation: the model at the epoch's end"))
          if split in drawn]
  keys += [plt.Line2D([], [], color=c, lw=4, label=label)
           for (label, _), c in zip(runs, colors)] if len(runs) > 1 else []
  keys += axes[1].get_legend_handles_labels()[0]  # The test result.
  fig.legend(handles=keys, loc="outside lower center", fontsize=8,
             ncols=1 if len(keys) < 4 else 2)
  return save(fig, path, title)


def _class_scale(k: int) -> float:
  """How much wider a per-class figure is than for 10 classes (>= 1)."""
  return max(1.0, k / 16)


def confusion_matrix(counts: np.ndarray, path: str, names: Sequence[str],
                     title: str) -> str:
  """Counts in each cell, colour = the fraction of the true class (row)."""
  k = counts.shape[0]
  rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(7.5 * _class_scale(k), 6.5 * _class_scale(k)),
                         layout="constrained")
  image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(
      "Fraction of the true class")
  for i, j in zip(*np.nonzero(counts)):
    ax.text(j, i, f"{counts[i, j]:d}", ha="center", va="center",
            fontsize=8 if k <= 16 else 6, color="white" if rows[i, j] > 0.5
            else ("firebrick" if i != j else "black"))
  slant = len(max(names, key=len)) > 2
  ax.set_xticks(range(k), names, rotation=45 if slant else 0,
                ha="right" if slant else "center")
  ax.set_yticks(range(k), names)
  ax.set(xlabel="Predicted label", ylabel="True label")
  ax.set_title(title, fontsize=11)
  return save(fig, path)


def per_class_accuracy(accuracy: np.ndarray, support: np.ndarray, path: str,
                       names: Sequence[str], overall: Optional[float] = None,
                       title: str = "") -> str:
  """Bars of each class's accuracy (recall), zoomed to where they differ, to
  100%, each value under its bar (clear of the overall accuracy's line, which
  a legend beside the axes names)."""
  k = len(accuracy)
  pct = 100.0 * np.asarray(accuracy, dtype=float)
  fig, ax = plt.subplots(figsize=(8 * _class_scale(k) + 1.5, 4.2),
                         layout="constrained")
  ax.bar(range(k), pct, color=["firebrick" if p == pct.min() else "steelblue"
                               for p in pct])
  low = np.floor(min(pct.min(), overall * 100 if overall else 100) - 2)
  ax.set(xlim=(-0.6, k - 0.4), ylim=(max(0.0, low), 100))
  if overall is not None:
    ax.axhline(100 * overall, color="gray", ls="--",
               label=f"overall\n{100 * overall:.2f}%")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
              fontsize=9)
  ax.set_xticks(range(k), [f"{n}\n{p:.1f}%\n(n={s})" for n, p, s in
                           zip(names, pct, support)],
                fontsize=9 if k <= 16 else 6)
  ax.set(xlabel="True class, its accuracy (number of test images)",
         ylabel="Accuracy (%)", title=title)
  ax.grid(axis="y", alpha=0.3)
  return save(fig, path)


def shown(image) -> np.ndarray:
  """An image [H, W(, C)] (0-255) as drawn: [H, W, 3] in its colours where it
  has three channels, else grey [H, W] (the channels' mean), white ink."""
  x = np.asarray(image)
  if x.ndim == 3 and x.shape[-1] == 3:  # imshow reads uint8 RGB as 0-255.
    return np.clip(x, 0, 255).astype(np.uint8)
  return x if x.ndim == 2 else x.mean(-1)


def image_grid(images, titles, red, path: str, cols: int, rows=(),
               title: str = "", fontsize: int = 8, headings=None,
               scale=None) -> str:
  """Images [H, W(, C)] (0-255, drawn as `shown`) in rows of `cols`, each
  titled (None: an empty cell); the `red` ones (indices) framed and titled
  in red; `rows` named left of each row; `headings` {row: text} over the rows
  that start a group; `scale` (a ScalarMappable, its label): a colour bar
  under them. One axes holds them all, each image placed by its extent: a
  third of the time of an axes per image."""
  lines, headings = max(1, -(-len(images) // cols)), headings or {}
  fig, ax = plt.subplots(
      figsize=(1.45 * cols + 1.2 * bool(len(rows)),  # Rows' names, a bar:
               1.75 * lines + 0.5 + 0.4 * len(headings) + 0.7 * bool(scale)),
      layout="constrained")
  h, w = np.shape(images[0])[:2] if len(images) else (28, 28)
  # A cell is 1.45 x 1.75 inches; the image's longer side fills 1.2 inches,
  # at the bottom of its cell (top-down), the title above it; a heading
  # takes 0.4 inches above its row.
  side = max(h, w)
  cell_w, cell_h, gap = side * 1.45 / 1.2, side * 1.75 / 1.2, side / 3
  top = [l * cell_h + gap * sum(k <= l for k in headings)
         for l in range(lines)]
  for i, (image, text) in enumerate(zip(images, titles)):
    if image is None:  # An empty cell.
      continue
    x = (i % cols) * cell_w + (cell_w - w) / 2
    y = top[i // cols] + cell_h - (side + h) / 2
    ax.imshow(shown(image), cmap=DIGIT_CMAP, vmin=0, vmax=255,
              extent=(x, x + w, y + h, y), interpolation="nearest")
    if i in red:
      ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, color="red",
                                     linewidth=3))
    ax.text(x + w / 2, y - 0.04 * side, text, ha="center", va="bottom",
            fontsize=fontsize, color="red" if i in red else "black")
  for i, text in enumerate(rows):
    ax.text(0, top[i] + cell_h - side / 2, text, ha="right", va="center",
            fontsize=max(fontsize, 7))
  for line, text in headings.items():
    ax.text(0, top[line] - gap / 2, text, va="center", fontsize=11,
            weight="bold")
    ax.axhline(top[line] - gap, color="gray", lw=1)
  if scale:
    fig.colorbar(scale[0], ax=ax, location="bottom", shrink=0.6, aspect=40,
                 pad=0.01).set_label(scale[1], fontsize=fontsize)
  if not len(images):
    ax.text(0.5, 0.5, "no wrong predictions", ha="center", va="center",
            transform=ax.transAxes)
  ax.set(xlim=(0, cols * cell_w), ylim=(top[-1] + cell_h, 0), aspect="equal")
  ax.axis("off")
  return save(fig, path, title)


def sample_probabilities(samples: Sequence[dict], path: str,
                         names: Sequence[str], title: str = "") -> str:
  """Rows of (image, its K class-probability bars). Each sample: image [H, W]
  uint8, probabilities [K], optional label (int) and caption (str). A legend
  beside each row's bars names their colours."""
  k = len(names)
  fig, axes = plt.subplots(len(samples), 2, squeeze=False,
                           figsize=(9 * _class_scale(k) + 1.8,
                                    3.1 * len(samples)), layout="constrained",
                           gridspec_kw={"width_ratios": [1, 2.6]})
  for (ax_img, ax), s in zip(axes, samples):
    label = s.get("label")
    pct = 100.0 * np.asarray(s["probabilities"], dtype=float)
    best = int(np.argmax(s["probabilities"]))
    ax_img.imshow(shown(s["image"]), cmap=DIGIT_CMAP, vmin=0, vmax=255)
    ax_img.set(xticks=[], yticks=[])  # Framed in red where it is wrong:
    ax_img.spines[:].set(visible=label not in (None, best), color="red",
                         linewidth=3)
    ax_img.set_title(s.get("caption", ""), fontsize=9)
    kinds = {best: ("darkorange", "predicted" if label is None else
                    "predicted = true class")}
    if label not in (None, best):
      kinds = {best: ("firebrick", "predicted (wrong)"),
               label: ("seagreen", "true class")}
    legend = [*kinds.values()] + [("steelblue", "other classes")] * (
        k > len(kinds))
    ax.bar(range(k), pct, color=[kinds.get(i, legend[-1])[0] for i in range(k)])
    ax.legend([patches.Patch(color=c) for c, _ in legend],
              [w for _, w in legend], loc="upper left",
              bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)
    ax.set(xlim=(-0.6, k - 0.4), ylim=(0, 100), xlabel="Class",
           ylabel="Probability (%)")
    bar_values(ax, [p if p >= 0.05 else None for p in pct],
               lambda p: f"{p:.1f}" if p < 99.95 else "100",
               8 if k <= 16 else 5)
    ax.set_xticks(range(k), names)
    if k > 16:
      ax.tick_params(axis="x", labelsize=6)
    ax.grid(axis="y", alpha=0.3)
    head = f"predicted {names[best]} ({100 * s['probabilities'][best]:.1f}%)"
    ax.set_title(head + (f", true {names[label]}" if label is not None else ""),
                 fontsize=10)
  return save(fig, path, title)


def prediction(image: np.ndarray, probabilities: np.ndarray, path: str,
               source: str, names: Sequence[str]) -> str:
  """An input as the model saw it (preprocessed, its HxW), its probabilities."""
  best = int(np.argmax(probabilities))
  size = "x".join(map(str, image.shape[:2] if image.shape[-1] == 1
                      else image.shape))
  return sample_probabilities(
      [{"image": image, "probabilities": probabilities,
        "caption": f"as the model saw it ({size})"}],
      path, names, title=f"{os.path.basename(source)}: {names[best]} "
      f"({100 * probabilities[best]:.1f}%)")


def palette(n: int):
  """n colours of tab10 (repeating): runs' and lines' colours."""
  return plt.get_cmap("tab10")(np.arange(n) % 10)


def _value_axis(ax, values) -> None:
  """Swept values' x axis, ticks at the values: log for positive values over
  10x apart (learning rates), symlog when 0 joins them, else linear."""
  values = np.asarray(sorted(set(values)), np.float64)
  positive = values[values > 0]
  spans = len(positive) > 1 and positive.max() > 10 * positive.min()
  if spans and len(positive) == len(values):
    ax.set_xscale("log")
  elif spans and (values >= 0).all():
    ax.set_xscale("symlog", linthresh=positive.min())
  ax.set_xticks(values)
  plain_ticks(ax.xaxis)


def sweep_figure(table: Sequence[dict], names: Sequence[str], path: str,
                 title: str = "") -> str:
  """Validation and test accuracy against each swept value (table:
  report.sweep_table's records): a panel per swept name, a line per
  combination of the others' values (mean over seeds, band +- std), the
  chosen grid point starred."""
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.3),
                           squeeze=False, layout="constrained")
  chosen = next(r for r in table if r["chosen"])
  point = [r for r in table if r["values"] == chosen["values"]]
  for ax, name in zip(axes[0], names):
    others = [n for n in names if n != name]
    # The other names' values -> {this name's value: records}.
    lines: Dict[tuple, Dict[float, List[dict]]] = {}
    for r in table:
      key = tuple(r["values"][n] for n in others)
      lines.setdefault(key, {}).setdefault(r["values"][name], []).append(r)
    colors = palette(2 * len(lines))
    for j, (key, by_value) in enumerate(lines.items()):
      xs = sorted(by_value)
      where = ", ".join(f"{n}={v:g}" for n, v in zip(others, key))
      for metric, style, what, color in (
          ("final_val_accuracy", "o-", "validation", colors[2 * j]),
          ("test_accuracy", "s--", "test", colors[2 * j + 1])):
        y = [[100 * r[metric] for r in by_value[x]] for x in xs]
        mean = np.array([np.mean(v) for v in y])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in y])
        ax.plot(xs, mean, style, color=color, ms=4,
                label=what + (f" ({where})" if where else ""))
        if std.any():
          ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15)
    ax.plot([chosen["values"][name]],
            [np.mean([100 * r["final_val_accuracy"] for r in point])], "*",
            ms=15, color="gold", mec="black", label="chosen", zorder=5)
    _value_axis(ax, [r["values"][name] for r in table])
    ax.set(xlabel=name, ylabel="Accuracy (%)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 100))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  seeds = len(point) > 1  # Every grid point has as many seeds.
  fig.suptitle((title + "\n" if title else "") + "final validation and test "
               "accuracy" + ("; mean over seeds, band ± std" if seeds else ""),
               fontsize=10)
  return save(fig, path)

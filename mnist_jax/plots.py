"""Figures, saved as PNG files with matplotlib's non-interactive Agg backend."""

import os
from typing import List

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

DPI = 120


def _save(fig, path: str) -> str:
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=DPI)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def learning_curves(rows: List[dict], path: str, title: str = "") -> str:
  """Train vs validation loss and accuracy per epoch, from metrics.jsonl rows."""
  epochs = [r for r in rows if "epoch" in r and "train_loss" in r]
  x = [r["epoch"] for r in epochs]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, key, label in ((ax_loss, "loss", "Loss (cross entropy)"),
                         (ax_acc, "accuracy", "Accuracy (%)")):
    scale = 100.0 if key == "accuracy" else 1.0
    ax.plot(x, [scale * r[f"train_{key}"] for r in epochs], "o-", label="train")
    val = [(r["epoch"], scale * r[f"val_{key}"]) for r in epochs
           if r.get(f"val_{key}") is not None]
    if val:
      ax.plot(*zip(*val), "s-", label="validation")
    final = [r for r in rows if f"test_{key}" in r]
    if final:
      ax.axhline(scale * final[-1][f"test_{key}"], color="gray", ls="--",
                 label=f"test ({scale * final[-1][f'test_{key}']:.4g})")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  ax_loss.set_title("Loss")
  ax_acc.set_title("Accuracy")
  if title:
    fig.suptitle(title)
  return _save(fig, path)

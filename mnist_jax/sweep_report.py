"""What a report says about a run's members: the chosen one, the sweep's grid.

`table` reads one record per member from metrics.jsonl (members.py writes
them); `write` turns it into sweep.csv and sweep.png; `section` is report.md's
part on the members: which one the report shows and how it was chosen, and
for a sweep the mean and spread of each grid point.
"""

import os
from typing import Any, Dict, List, Sequence

import numpy as np

from mnist_jax import files
from mnist_jax import sweep

FILES = ("sweep.csv", "sweep.png")  # Written for a sweep only.

def table(rows: Sequence[dict]) -> List[Dict[str, Any]]:
  """One record per member from metrics.jsonl rows ([] for one member).

  Each: member, values (swept), seed, best and final validation accuracy and
  loss (best over epochs; None without a validation split), test accuracy and
  loss (a diverged member's losses None), whether it diverged, and whether it
  is the chosen member.
  """
  final = next((r for r in reversed(rows) if "test_accuracy" in r), {})
  if not final.get("members"):
    return []
  epochs = [r for r in rows if "train_loss" in r and r.get("members")]
  out = []
  for entry in final["members"]:
    i = entry["index"]
    val = [(r["members"][i]["val_accuracy"], r["members"][i]["val_loss"])
           for r in epochs if "val_accuracy" in r["members"][i]]
    losses = [l for _, l in val if l is not None]  # None: diverged.
    out.append({
        "member": i, "values": entry["values"], "seed": entry["seed"],
        "best_val_accuracy": max(a for a, _ in val) if val else None,
        "best_val_loss": min(losses) if losses else None,
        "final_val_accuracy": val[-1][0] if val else None,
        "final_val_loss": val[-1][1] if val else None,
        "test_accuracy": entry["test_accuracy"],
        "test_loss": entry["test_loss"],
        "diverged": bool(entry.get("diverged")),
        "chosen": i == final["chosen"]["index"]})
  return out


def write(workdir: str, config, records: Sequence[dict]) -> None:
  """sweep.csv (one row per member) and sweep.png (accuracy per swept value)."""
  # matplotlib only once a run ends (see report.write).
  from mnist_jax import plots  # pylint: disable=g-import-not-at-top
  names = list(sweep.parse(config.sweep))
  keys = ["best_val_accuracy", "best_val_loss", "final_val_accuracy",
          "final_val_loss", "test_accuracy", "test_loss"]
  text = lambda v: "" if v is None else f"{v:.6f}"
  files.write_csv(os.path.join(workdir, "sweep.csv"),
                  [["member", *names, "seed", *keys, "diverged", "chosen"]] +
                  [[r["member"], *[repr(r["values"][n]) for n in names],
                    r["seed"], *[text(r[key]) for key in keys],
                    int(r["diverged"]), int(r["chosen"])] for r in records])
  seeds = f"{config.num_seeds} seed{'s' if config.num_seeds > 1 else ''}"
  plots.sweep(records, names, os.path.join(workdir, "sweep.png"),
              title=f"{config.model} ({config.preset}): {len(records)} "
              f"members, {seeds} per grid point")


def section(config, final: dict, records: Sequence[dict]) -> List[str]:
  """report.md's lines on the members: which one is shown and why, the grid."""
  chosen = final.get("chosen")
  if not chosen:
    return []
  label = sweep.values_text(chosen["values"], chosen["seed"])
  seeds = f"{config.num_seeds} seed{'s' if config.num_seeds > 1 else ''}"
  if chosen["values"]:
    how = ("the grid point with the highest mean final validation accuracy "
           f"over its {seeds}, then its seed with the highest final validation "
           "accuracy (ties: the lower validation loss, then the lower index)")
  elif config.val_fraction > 0:
    how = ("the seed with the highest final validation accuracy (ties: the "
           "lower validation loss, then the lower index)")
  else:
    how = "the first: without a validation split no member is preferred"
  lines = ["## Members", "",
           f"This report shows member {chosen['index']} ({label}) of "
           f"{len(final['members'])}, trained in one program, chosen as {how}. "
           "Test metrics play no part in the choice.", ""]
  if not config.sweep or not records:
    return lines
  names = list(sweep.parse(config.sweep))
  lines += ["| " + " | ".join(names) + " | validation accuracy % | test "
            "accuracy % | chosen |", "|" + "---|" * len(names) + "---:|---:|---|"]
  for point in _by_point(records):
    val = [100 * r["final_val_accuracy"] for r in point]
    test = [100 * r["test_accuracy"] for r in point]
    lines.append("| " + " | ".join(f"{point[0]['values'][n]:g}" for n in names)
                 + f" | {_mean_pm(val)} | {_mean_pm(test)} | "
                 + ("yes" if any(r["chosen"] for r in point) else "") + " |")
  lines += ["", "Validation accuracy after the last epoch; mean ± std over the "
            "seeds. Every member: [sweep.csv](sweep.csv).", "",
            "![sweep](sweep.png)", ""]
  return lines


def _by_point(records: Sequence[dict]) -> List[List[dict]]:
  """The records of each grid point (consecutive equal values), in order."""
  out = []
  for r in records:
    if out and out[-1][0]["values"] == r["values"]:
      out[-1].append(r)
    else:
      out.append([r])
  return out


def _mean_pm(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"

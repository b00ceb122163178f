"""Evaluation of a trained run, written into its folder: figures, CSVs, report.md.

`write` takes a model's test predictions and writes the files; it runs at the
end of training, and `python launch.py --mode=report --workdir=DIR` runs it
again on a finished run folder (run.py). With several members (seeds or a
sweep, members.py) the model is the chosen member: its figures, its learning
curves, and beside them the ensemble of its grid point's seeds and, for a
sweep, sweep.csv and sweep.png over every member (`sweep_table` reads one
record per member from metrics.jsonl; `members_section` is report.md's part
on which member it shows, how it was chosen and each grid point's mean and
spread). Every file goes through a temporary name and a rename, so an
interrupted report never leaves half a file.
"""

import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mnist_jax.rundir import files
from mnist_jax.rundir import folder
from mnist_jax.rundir import control
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics

GRID_SIZE = 40  # Test images shown in predictions.png.
MISTAKES_SHOWN = 24
PAIRS_LISTED = 10
FILES = ("report.md", "confusion_matrix.png", "confusion_matrix.csv",
         "per_class.csv", "per_class_accuracy.png", "confused_pairs.csv",
         "predictions.png", "mistakes.png", "sample_probabilities.png",
         "learning_curves.png")
SWEEP_FILES = ("sweep.csv", "sweep.png")  # Written for a sweep only.


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax in float64: [N, K] -> [N, K] probabilities."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def score(probs: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
  """The test metrics (metrics.py) of probabilities [N, K] for labels [N]:
  their logarithms are logits whose softmax they are."""
  return metrics.of_logits(np.log(np.maximum(probs, 1e-30)), labels)


def _finite_models(logits: np.ndarray) -> np.ndarray:
  """The models of logits [S, N, K] whose logits are all finite: a member
  that diverged (control.py) has no place in an ensemble."""
  return logits[np.isfinite(logits).all(axis=(1, 2))]


def ensemble_probabilities(logits: np.ndarray) -> np.ndarray:
  """The ensemble of S models: the mean of their probabilities, [S, N, K] -> [N, K]."""
  return softmax(_finite_models(logits)).mean(axis=0)


def ensemble_metrics(run, test) -> Optional[Dict[str, Any]]:
  """The test metrics (`score`) of the ensemble of a run's chosen grid
  point's seeds (results/run.py's Run), and "members"; None unless at
  least two of them are finite."""
  finite = _finite_models(run.seed_logits(np.asarray(test.images),
                                          run.config.eval_batch_size))
  if len(finite) < 2:
    return None
  return {**score(ensemble_probabilities(finite), test.labels),
          "members": len(finite)}


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
  """[K, K] int64 counts of K classes: rows are true labels, columns
  predictions."""
  flat = np.asarray(labels, np.int64) * k + np.asarray(predicted, np.int64)
  return np.bincount(flat, minlength=k * k).reshape(k, k)


def per_class(counts: np.ndarray) -> Dict[str, np.ndarray]:
  """Support, correct, accuracy (recall), precision and F1 of each class."""
  support = counts.sum(axis=1)
  correct = np.diag(counts)
  predicted = counts.sum(axis=0)
  recall = correct / np.maximum(support, 1)
  precision = correct / np.maximum(predicted, 1)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  return {"support": support, "correct": correct, "accuracy": recall,
          "precision": precision, "f1": f1}


def confused_pairs(counts: np.ndarray, top: int = PAIRS_LISTED) -> List[dict]:
  """The most frequent (true, predicted) mistakes, most frequent first."""
  k = counts.shape[0]
  pairs = [{"true": i, "predicted": j, "count": int(counts[i, j]),
            "fraction_of_true": float(counts[i, j] / max(counts[i].sum(), 1))}
           for i in range(k) for j in range(k) if i != j and counts[i, j]]
  pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
  return pairs[:top]


def _fmt_s(seconds: Optional[float]) -> str:
  if seconds is None:
    return "n/a"
  return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def test_values(final: dict, logits: np.ndarray, labels: np.ndarray,
                note: Optional[str] = None) -> Dict[str, float]:
  """The test metrics report.md shows, by name: the final row's, where it
  holds every one and the logits are the finished run's (no `note`); else
  (an older run folder or checkpoint) metrics.py's on `logits` [N, K]."""
  keys = {m.name: f"test_{m.name}" for m in metrics.of("test")}
  if note is None and all(final.get(k) is not None for k in keys.values()):
    return {name: final[key] for name, key in keys.items()}
  return metrics.of_logits(logits, labels)


def _metrics_text(values: Dict[str, float], lead: str = "accuracy") -> str:
  """`loss 0.1234, calibration error ... 1.23%`: every test metric but `lead`."""
  return ", ".join(f"{m.label} {m.text(values.get(m.name))}"
                   for m in metrics.of("test") if m.name != lead)


def _headline(rows: List[dict], test: Dict[str, float],
              n: int) -> List[tuple]:
  """(name, value) rows for the top of report.md: `test` (test_values) and
  metrics.jsonl rows."""
  epochs = [r for r in rows if "epoch" in r and "train_loss" in r]
  finals = [r for r in rows if "test_accuracy" in r]
  final = finals[-1] if finals else {}
  accuracy = test["accuracy"]
  out = [("Test accuracy", f"**{100 * accuracy:.2f}%** ({n} images, "
          f"{int(round((1 - accuracy) * n))} wrong)")]
  out += [(f"Test {m.label}", m.text(test.get(m.name)))
          for m in metrics.of("test") if m.name != "accuracy"]
  if epochs and epochs[-1].get("val_accuracy") is not None:
    out.append(("Validation accuracy (last epoch)",
                f"{100 * epochs[-1]['val_accuracy']:.2f}%"))
  if epochs:
    out.append(("Train accuracy (last epoch)",
                f"{100 * epochs[-1]['train_accuracy']:.2f}%"))
  if "num_params" in final:
    out.append(("Parameters", f"{final['num_params']:,}"))
  if epochs:
    out.append(("Epochs run", str(final.get("epochs_run",
                                            epochs[-1]["epoch"]))))
    out.append(("Epoch time (median)", _fmt_s(statistics.median(
        r["epoch_time_s"] for r in epochs))))
    out.append(("Examples/s (median)", f"{statistics.median(r['examples_per_s'] for r in epochs):,.0f}"))
  if "wall_time_s" in final:
    out.append(("Wall time", f"{_fmt_s(final['wall_time_s'])} (compile "
                f"{_fmt_s(final.get('compile_time_s'))})"))
  if final.get("time_to_target_s") is not None:
    out.append(("Time to target accuracy", _fmt_s(final["time_to_target_s"])))
  return out


def _ensemble_text(ensemble: dict, final: dict) -> str:
  """The ensemble's accuracy beside the mean +- std of its single members."""
  text = (f"**{100 * ensemble['accuracy']:.2f}%** ({_metrics_text(ensemble)}; "
          f"the mean probabilities of {ensemble['members']} seeds)")
  if final.get("test_accuracy_mean") is not None:
    text += (f"; single members {100 * final['test_accuracy_mean']:.2f} ± "
             f"{100 * final['test_accuracy_std']:.2f}%")
  return text


def write(workdir: str, run, test,
          class_names: Optional[Sequence[str]] = None,
          note: Optional[str] = None) -> Dict[str, Any]:
  """Evaluates a trained model on the test split and writes the report files.

  Args:
    workdir: the run folder (its metrics.jsonl gives the learning curves, and
      with several members which one was chosen).
    run: the trained model (results/run.py's Run): its chosen member, and
      its grid point's seeds for the ensemble.
    test: pipeline.Split with images [N, H, W] uint8 and labels [N].
    class_names: K label names (default "0".."K-1").
    note: what the model stands for where it is not the finished run's (an
      older checkpoint, an unfinished run), shown at the top of report.md.

  Returns:
    the test metrics by name (`test_values`), "confusion" and "paths" (the
    written files).
  """
  config = run.config
  logits = run.logits(np.asarray(test.images), config.eval_batch_size)
  ensemble = ensemble_metrics(run, test) if len(run.seeds) > 1 else None
  # matplotlib is needed only once a run ends: importing plots here keeps it
  # out of a run's start-up.
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  images = np.asarray(test.images)
  labels = np.asarray(test.labels).astype(np.int64)
  n = len(labels)
  k = logits.shape[-1]
  names = list(class_names) if class_names else [str(i) for i in range(k)]
  probs = softmax(logits)
  predicted = probs.argmax(axis=-1)
  p_true = probs[np.arange(n), labels]
  counts = confusion(labels, predicted, k)
  stats = per_class(counts)
  pairs = confused_pairs(counts)
  title = f"{config.model} ({config.preset})"
  path = lambda name: os.path.join(workdir, name)
  rows = folder.read_metrics(path(folder.METRICS_FILE))
  final = next((r for r in reversed(rows) if "test_accuracy" in r), {})
  test_metrics = test_values(final, logits, labels, note)
  accuracy = test_metrics["accuracy"]
  chosen = final.get("chosen")
  if chosen:  # The chosen member's own curves and numbers.
    rows = members_lib.member_rows(rows, chosen["index"])
    title += f", member {chosen['index']}"

  files.write_csv(path("confusion_matrix.csv"),
      [["true\\predicted"] + names] +
      [[names[i]] + [int(c) for c in counts[i]] for i in range(k)])
  files.write_csv(path("per_class.csv"),
      [["class", "name", "support", "correct", "accuracy", "precision", "f1"]] +
      [[i, names[i], int(stats["support"][i]), int(stats["correct"][i]),
        f"{stats['accuracy'][i]:.6f}", f"{stats['precision'][i]:.6f}",
        f"{stats['f1'][i]:.6f}"] for i in range(k)])
  files.write_csv(path("confused_pairs.csv"),
      [["true", "predicted", "count", "fraction_of_true"]] +
      [[names[p["true"]], names[p["predicted"]], p["count"],
        f"{p['fraction_of_true']:.6f}"] for p in pairs])

  plots.confusion_matrix(counts, path("confusion_matrix.png"), names,
                         title=f"{title}: confusion matrix on {n} test images "
                         f"({100 * accuracy:.2f}% correct)")
  plots.per_class_accuracy(stats["accuracy"], stats["support"],
                           path("per_class_accuracy.png"), names, accuracy,
                           title=f"{title}: test accuracy per class "
                           "(lowest in red)")
  shown = np.arange(min(GRID_SIZE, n))
  plots.prediction_grid(images[shown], labels[shown], predicted[shown],
                        path("predictions.png"), names, shown)
  wrong = np.flatnonzero(predicted != labels)
  worst = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
  worst = worst[:MISTAKES_SHOWN]
  plots.mistakes(images[worst], labels[worst], predicted[worst],
                 probs[worst, predicted[worst]], p_true[worst],
                 path("mistakes.png"), names, worst,
                 title=f"{title}: the {len(worst)} most confident mistakes of "
                 f"{len(wrong)} (predicted label and probability; true label "
                 "and its probability)")
  samples = [{"image": images[0], "probabilities": probs[0],
              "label": int(labels[0]), "caption": "test image #0"}]
  if n > 1:
    unsure = int(np.argmin(probs.max(axis=-1)))
    samples.append({"image": images[unsure], "probabilities": probs[unsure],
                    "label": int(labels[unsure]),
                    "caption": f"test image #{unsure}\n(the least confident)"})
  plots.sample_probabilities(samples, path("sample_probabilities.png"), names,
                             title=f"{title}: class probabilities of single "
                             "test images")
  if rows:
    plots.learning_curves(rows, path("learning_curves.png"), title=title)
  table = sweep_table(
      folder.read_metrics(path(folder.METRICS_FILE)))
  if config.sweep and table:
    write_sweep(workdir, config, table)

  headline = _headline(rows, test_metrics, n)
  if ensemble is not None:
    headline.insert(len(metrics.of("test")),  # After the test metrics.
                    ("Ensemble test accuracy", _ensemble_text(ensemble, final)))
  files.write_text(path("report.md"), _markdown(
      config, names, counts, stats, pairs, n, headline,
      members_section(config, final, table), note=note,
      warning=(final.get(control.NOT_LEARNED) or {}).get("message")))
  return {**test_metrics, "confusion": counts,
          "paths": [path(f) for f in FILES + SWEEP_FILES
                    if os.path.exists(path(f))]}


def _markdown(config, names, counts, stats, pairs, n, headline, members,
              note=None, warning=None):
  """report.md's text; `warning` (a run that did not learn) and `note` (an
  older checkpoint than the run's last epoch) head it."""
  lines = [f"# {config.model} ({config.preset} preset) on {config.dataset}", ""]
  if warning:
    lines += [f"> **Warning:** {warning[0].upper()}{warning[1:]}.", ""]
  if note:
    lines += [f"> **Note:** {note}.", ""]
  lines += ["| | |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in headline]
  lines += ["", *members]
  lines += ["## Learning curves", "", "![learning curves](learning_curves.png)",
            "", "## Confusion matrix", "",
            "Rows are true labels, columns predictions; each cell shows a count, "
            "its colour the fraction of the row. Counts: "
            "[confusion_matrix.csv](confusion_matrix.csv).", "",
            "![confusion matrix](confusion_matrix.png)", "",
            "## Most confused pairs", ""]
  if pairs:
    lines += ["| true | predicted as | count | % of true class |",
              "|---|---|---:|---:|"]
    lines += [f"| {names[p['true']]} | {names[p['predicted']]} | {p['count']} | "
              f"{100 * p['fraction_of_true']:.2f} |" for p in pairs]
    k = counts.shape[0]
    both = sorted(((counts[i, j] + counts[j, i], i, j) for i in range(k)
                   for j in range(i + 1, k)), key=lambda t: (-t[0], t[1], t[2]))
    top = [f"{names[i]} and {names[j]} ({c})" for c, i, j in both[:3] if c]
    lines += ["", "Confused in either direction most: " + ", ".join(top) + "."]
  else:
    lines += ["No test image was misclassified."]
  lines += ["", "## Per class", "", "![per-class accuracy](per_class_accuracy.png)",
            "", "| class | images | correct | accuracy % | precision % | F1 % |",
            "|---|---:|---:|---:|---:|---:|"]
  lines += [f"| {names[i]} | {stats['support'][i]} | {stats['correct'][i]} | "
            f"{100 * stats['accuracy'][i]:.2f} | {100 * stats['precision'][i]:.2f} "
            f"| {100 * stats['f1'][i]:.2f} |" for i in range(len(names))]
  lines += ["", "## Predictions", "",
            f"The first {min(GRID_SIZE, n)} test images; wrong ones are framed "
            "in red.", "", "![predictions](predictions.png)", "",
            "## Most confident mistakes", "", "![mistakes](mistakes.png)", "",
            "## Class probabilities of single images", "",
            "![sample probabilities](sample_probabilities.png)", "",
            "## Settings", "", "```json", config.to_json(), "```", ""]
  return "\n".join(lines)


# The members: the chosen one, the sweep's grid.

def sweep_table(rows: Sequence[dict]) -> List[Dict[str, Any]]:
  """One record per member from metrics.jsonl rows ([] for one member).

  Each: member, values (swept), seed, `best_val_<metric>` and
  `final_val_<metric>` of each validation metric (best over epochs; None
  without a validation split), `test_<metric>` of each test metric (None:
  not finite, or not in an older run folder), whether it diverged, and
  whether it is the chosen member.
  """
  final = next((r for r in reversed(rows) if "test_accuracy" in r), {})
  if not final.get("members"):
    return []
  epochs = [r for r in rows if "train_loss" in r and r.get("members")]
  out = []
  for entry in final["members"]:
    i = entry["index"]
    record = {"member": i, "values": entry["values"], "seed": entry["seed"]}
    for m in metrics.of("val"):
      key = f"val_{m.name}"
      val = [r["members"][i][key] for r in epochs
             if "val_accuracy" in r["members"][i]]
      known = [v for v in val if v is not None]  # None: diverged.
      record[f"best_{key}"] = m.best(known) if known else None
      record[f"final_{key}"] = val[-1] if val else None
    record.update({k: entry.get(k) for k in metrics.keys("test")})
    out.append({**record, "diverged": bool(entry.get("diverged")),
                "chosen": i == final["chosen"]["index"]})
  return out


def _table_keys() -> List[str]:
  """sweep.csv's metric columns (sweep_table's keys)."""
  val = metrics.keys("val")
  return ([f"best_{k}" for k in val] + [f"final_{k}" for k in val] +
          list(metrics.keys("test")))


def write_sweep(workdir: str, config, records: Sequence[dict]) -> None:
  """sweep.csv (one row per member) and sweep.png (accuracy per swept value)."""
  # matplotlib only once a run ends (see `write`).
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  names = list(members_lib.parse(config.sweep))
  keys = _table_keys()
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


def members_section(config, final: dict, records: Sequence[dict]) -> List[str]:
  """report.md's lines on the members: which one is shown and why, the grid."""
  chosen = final.get("chosen")
  if not chosen:
    return []
  label = members_lib.values_text(chosen["values"], chosen["seed"])
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
  names = list(members_lib.parse(config.sweep))
  tests = metrics.of("test")
  lines += ["| " + " | ".join(names) + " | validation accuracy % | " +
            " | ".join(f"test {m.label}{' ' + m.unit if m.unit else ''}"
                       for m in tests) + " | chosen |",
            "|" + "---|" * len(names) + "---:|" * (1 + len(tests)) + "---|"]
  accuracy = metrics.BY_NAME["accuracy"]
  for point in _by_point(records):
    cells = [_mean_pm(accuracy, [r["final_val_accuracy"] for r in point])]
    cells += [_mean_pm(m, [r.get(f"test_{m.name}") for r in point])
              for m in tests]
    lines.append("| " + " | ".join(f"{point[0]['values'][n]:g}" for n in names)
                 + " | " + " | ".join(cells) + " | "
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


def _mean_pm(metric: metrics.Metric, values: Sequence[Optional[float]]) -> str:
  """Values of a metric (scaled, without unit), as their mean ± std."""
  if any(v is None for v in values):
    return "n/a"
  scaled = [metric.scale * v for v in values]
  d = metric.digits
  if len(scaled) == 1:
    return f"{scaled[0]:.{d}f}"
  return f"{np.mean(scaled):.{d}f} ± {np.std(scaled, ddof=1):.{d}f}"

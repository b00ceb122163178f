"""A trained run's report in its folder (end of training, `--mode=report`):
figures, CSVs, report.md, analyses; with several members the chosen one, its
seeds' ensemble and a sweep's every member. Files are written atomically."""

import itertools
import os
import queue
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mnist_jax.rundir import control
from mnist_jax import files
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.training import members as members_lib
from mnist_jax.training import metrics

GRID_SIZE = 40  # Test images shown in predictions.png.
MISTAKES_SHOWN = 24
PAIRS_LISTED = 10
FILES = ("report.md", "confusion_matrix.png", "confusion_matrix.csv",
         "per_class.csv", "per_class_accuracy.png", "confused_pairs.csv",
         "predictions.png", "mistakes.png", "sample_probabilities.png",
         "learning_curves.png")


def ensemble_metrics(run, test) -> Optional[Dict[str, Any]]:
  """The test metrics of the mean probabilities of the run's chosen grid
  point's seeds, and "members"; None unless at least two are finite."""
  if len(run.seeds) < 2:
    return None
  finite = run_lib.finite_models(run.seed_logits(np.asarray(test.images),
                                                 run.config.eval_batch_size))
  if len(finite) < 2:
    return None
  return {**run_lib.scores(run_lib.ensemble_logits(finite), test.labels),
          "members": len(finite)}


def per_class(counts: np.ndarray) -> Dict[str, np.ndarray]:
  """Support, correct, accuracy (recall), precision and F1 of each class."""
  support, correct = counts.sum(axis=1), np.diag(counts)
  recall = correct / np.maximum(support, 1)
  precision = correct / np.maximum(counts.sum(axis=0), 1)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  return {"support": support, "correct": correct, "accuracy": recall,
          "precision": precision, "f1": f1}


def confused_pairs(counts: np.ndarray, top: int = PAIRS_LISTED) -> List[dict]:
  """The most frequent (true, predicted) mistakes, first."""
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


def _headline(rows: List[dict], test: Dict[str, float], n: int,
              ensemble: Optional[dict], final: dict) -> List[tuple]:
  """report.md's top (name, value) rows, of `test` and metrics.jsonl rows."""
  epochs, pct = metrics_log.epoch_rows(rows), metrics.BY_NAME["accuracy"].text
  last, final_row = (epochs or [{}])[-1], metrics_log.final_row(rows) or {}
  others = [m for m in metrics.of("test") if m.name != "accuracy"]
  out = [("Test accuracy", f"**{pct(test['accuracy'])}** ({n} images, "
          f"{int(round((1 - test['accuracy']) * n))} wrong)"),
         *((f"Test {m.label}", m.text(test.get(m.name))) for m in others)]
  if ensemble is not None:  # The mean of its members' probabilities.
    text = ", ".join(f"{m.label} {m.text(ensemble.get(m.name))}"
                     for m in others)
    text = (f"**{pct(ensemble['accuracy'])}** ({text}; the mean "
            f"probabilities of {ensemble['members']} seeds)")
    if final.get("test_accuracy_mean") is not None:
      text += (f"; single members {100 * final['test_accuracy_mean']:.2f} ± "
               f"{pct(final['test_accuracy_std'])}")
    out.append(("Ensemble test accuracy", text))
  if last.get("val_accuracy") is not None:
    out.append(("Validation accuracy (last epoch)", pct(last["val_accuracy"])))
  if epochs:
    out.append(("Train accuracy (last epoch)", pct(last["train_accuracy"])))
  if "num_params" in final_row:
    out.append(("Parameters", f"{final_row['num_params']:,}"))
  if epochs:
    speed = metrics_log.median_speed(epochs, "examples_per_s")
    out += [("Epochs run", str(final_row.get("epochs_run", last["epoch"]))),
            ("Epoch time (median)", _fmt_s(metrics_log.median_speed(
                epochs, "epoch_time_s"))),
            ("Examples/s (median)", "n/a" if speed is None else f"{speed:,.0f}")]
  if "wall_time_s" in final_row:
    out.append(("Wall time", f"{_fmt_s(metrics_log.wall_time(final_row))} "
                f"(compile {_fmt_s(final_row.get('compile_time_s'))})"))
  if final_row.get("time_to_target_s") is not None:
    out.append(("Time to target accuracy",
                _fmt_s(final_row["time_to_target_s"])))
  return out


def write(workdir: str, run, test, class_names: Optional[Sequence[str]] = None,
          note: Optional[str] = None, val=None) -> Dict[str, Any]:
  """Writes the report files of a Run (its chosen member, its seeds'
  ensemble) on the test Split; returns the test metrics and "confusion".
  note: atop report.md, why the model is not the finished run's; val: the
  Split temperature scaling is fitted on (None: loaded)."""
  config = run.config
  images = np.asarray(test.images)
  labels = np.asarray(test.labels).astype(np.int64)
  logits = run.logits(images, config.eval_batch_size)
  ensemble, lenses = ensemble_metrics(run, test), None
  if config.analyses:  # Begun now, worked on while the figures are drawn.
    # pylint: disable=g-import-not-at-top
    from mnist_jax.results import analysis as analysis_lib
    if val is None and config.val_fraction > 0:
      from mnist_jax.data import pipeline
      val = pipeline.load(config).val
    lenses = Lenses(run, test, val)
  # matplotlib only once a run ends: out of a run's start-up.
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  n, k, probs = len(labels), logits.shape[-1], run_lib.softmax(logits)
  names = list(class_names) if class_names else [str(i) for i in range(k)]
  counts = run_lib.confusion(labels, probs.argmax(axis=-1), k)
  stats, pairs = per_class(counts), confused_pairs(counts)
  title = f"{config.model} ({config.preset})"
  path = lambda name: os.path.join(workdir, name)
  rows = metrics_log.read_metrics(path(metrics_log.METRICS_FILE))
  final = metrics_log.final_row(rows) or {}
  keys = metrics.keys("test")  # The finished run's (no note) if all recorded.
  test_metrics = ({k[len("test_"):]: final[k] for k in keys} if note is None
                  and all(final.get(k) is not None for k in keys)
                  else run_lib.scores(logits, labels))
  accuracy = test_metrics["accuracy"]
  records = sweep_table(rows)
  if final.get("chosen"):  # The chosen member's own curves and numbers.
    rows = members_lib.member_rows(rows, final["chosen"]["index"])
    title += f", member {final['chosen']['index']}"

  files.write_csv(path("confusion_matrix.csv"), [["true\\predicted", *names]] +
                  [[names[i], *map(int, counts[i])] for i in range(k)])
  files.write_csv(path("per_class.csv"), [
      "class name support correct accuracy precision f1".split()] + [
          [i, names[i], int(stats["support"][i]), int(stats["correct"][i]),
           *(f"{stats[key][i]:.6f}" for key in ("accuracy", "precision", "f1"))]
          for i in range(k)])
  files.write_csv(path("confused_pairs.csv"), [
      "true predicted count fraction_of_true".split()] + [
          [names[p["true"]], names[p["predicted"]], p["count"],
           f"{p['fraction_of_true']:.6f}"] for p in pairs])

  plots.confusion_matrix(counts, path("confusion_matrix.png"), names,
                         title=f"{title}: confusion matrix on {n} test images "
                         f"({100 * accuracy:.2f}% correct)")
  plots.per_class_accuracy(stats["accuracy"], stats["support"],
                           path("per_class_accuracy.png"), names, accuracy,
                           title=f"{title}: test accuracy per class "
                           "(lowest in red)")
  _digit_figures(path, title, images, labels, probs, names)
  if rows:
    plots.learning_curves([(title, [rows])], path("learning_curves.png"),
                          title=title)
  if config.sweep and records:
    write_sweep(workdir, config, records)
  analysis = (analysis_lib.write(workdir, run, test, val, names,
                                 lenses=lenses.ended()) if lenses else [])

  warning = (final.get(control.NOT_LEARNED) or {}).get("message")
  lines = [f"# {config.model} ({config.preset} preset) on {config.dataset}", ""]
  if warning:  # A run that did not learn.
    lines += [f"> **Warning:** {warning[0].upper()}{warning[1:]}.", ""]
  if note:
    lines += [f"> **Note:** {note}.", ""]
  edited = code_lib.summary(record.trained_code(workdir))
  if edited:  # Trained on edited code: which, and its diff.
    lines += [f"Trained with {edited} ([{code_lib.DIFF_FILE}]"
              f"({code_lib.DIFF_FILE})).", ""]
  lines += files.table(["", ""],
                       _headline(rows, test_metrics, n, ensemble, final), "ll")
  lines += ["", *members_section(config, final, records),
            *_body(names, counts, stats, pairs, n), *analysis,
            "## Settings", "", "```json", config.to_json(), "```", ""]
  files.write_text(path("report.md"), "\n".join(lines))
  return {**test_metrics, "confusion": counts}


class Lenses:
  """analysis.analyse in a thread of its own, begun before the report draws
  its figures: its XLA work lets go of Python's lock, so the figures are drawn
  meanwhile, each analysis figure as soon as its lens is done (`ended`)."""

  def __init__(self, run, test, val=None):
    self._ended = queue.Queue()
    threading.Thread(target=self._work, args=(run, test, val)).start()

  def _work(self, *args):
    # pylint: disable-next=g-import-not-at-top
    from mnist_jax.results import analysis
    try:
      self._ended.put((analysis.analyse(*args, done=self._lens),))
    except BaseException as e:  # pylint: disable=broad-except
      self._ended.put(e)  # Raised where the report waits for it.

  def _lens(self, results):  # A process exiting (a stop) waits for no more.
    if not threading.main_thread().is_alive():
      raise SystemExit
    self._ended.put(results)

  def ended(self):
    """Yields the results so far as each lens ends, all of them last."""
    while not isinstance(item := self._ended.get(), tuple):
      if isinstance(item, BaseException):
        raise item
      yield item
    yield item[0]


def _digit_figures(path, title, images, labels, probs, names) -> None:
  """predictions.png (the first GRID_SIZE test images), mistakes.png (the
  most confident mistakes) and sample_probabilities.png."""
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  predicted = probs.argmax(-1)
  shown, bad = np.arange(min(GRID_SIZE, len(labels))), predicted != labels
  plots.image_grid(
      images[shown], [f"#{i}\ntrue {names[labels[i]]}  pred "
                      f"{names[predicted[i]]}{' ✗' if bad[i] else ''}"
                      for i in shown],
      set(np.flatnonzero(bad[shown])), path("predictions.png"), 8,
      title=f"Test predictions ({bad[shown].sum()} of {len(shown)} wrong, "
      "framed in red)")
  wrong = np.flatnonzero(bad)
  worst = wrong[np.argsort(-probs[wrong, predicted[wrong]],
                           kind="stable")[:MISTAKES_SHOWN]]
  plots.image_grid(
      images[worst], [f"#{i} pred {names[predicted[i]]} "
                      f"({100 * probs[i, predicted[i]]:.1f}%)\ntrue "
                      f"{names[labels[i]]} ({100 * probs[i, labels[i]]:.1f}%)"
                      for i in worst], range(len(worst)), path("mistakes.png"),
      6, title=f"{title}: the {len(worst)} most confident mistakes of "
      f"{len(wrong)} (predicted label and probability; true label and its "
      "probability)")
  unsure = int(np.argmin(probs.max(axis=-1)))
  plots.sample_probabilities(
      [{"image": images[i], "probabilities": probs[i], "label": int(labels[i]),
        "caption": caption} for i, caption in (
            (0, "test image #0"),
            (unsure, f"test image #{unsure}\n(the least confident)"))[
                :len(labels)]],
      path("sample_probabilities.png"), names,
      title=f"{title}: class probabilities of single test images")


def _body(names, counts, stats, pairs, n) -> List[str]:
  """report.md's sections on the test images, curves to single images."""
  lines = ["## Learning curves", "", "![learning curves](learning_curves.png)",
           "", "## Confusion matrix", "",
           "Rows are true labels, columns predictions; each cell shows a "
           "count, its colour the fraction of the row. Counts: "
           "[confusion_matrix.csv](confusion_matrix.csv).", "",
           "![confusion matrix](confusion_matrix.png)", "",
           "## Most confused pairs", ""]
  if pairs:
    lines += files.table(["true", "predicted as", "count", "% of true class"], [
        (names[p["true"]], names[p["predicted"]], p["count"],
         f"{100 * p['fraction_of_true']:.2f}") for p in pairs], "llrr")
    k = counts.shape[0]  # Sorted stably: ties in (i, j) order.
    both = sorted(((counts[i, j] + counts[j, i], i, j) for i in range(k)
                   for j in range(i + 1, k)), key=lambda t: -t[0])
    top = [f"{names[i]} and {names[j]} ({c})" for c, i, j in both[:3] if c]
    lines += ["", "Confused in either direction most: " + ", ".join(top) + "."]
  else:
    lines += ["No test image was misclassified."]
  lines += ["", "## Per class", "",
            "![per-class accuracy](per_class_accuracy.png)", ""]
  lines += files.table(
      ["class", "images", "correct", "accuracy %", "precision %", "F1 %"],
      [(name, stats["support"][i], stats["correct"][i],
        *(f"{100 * stats[k][i]:.2f}" for k in ("accuracy", "precision", "f1")))
       for i, name in enumerate(names)], "lrrrrr")
  return lines + [
      "", "## Predictions", "",
      f"The first {min(GRID_SIZE, n)} test images; wrong ones are framed "
      "in red.", "", "![predictions](predictions.png)", "",
      "## Most confident mistakes", "", "![mistakes](mistakes.png)", "",
      "## Class probabilities of single images", "",
      "![sample probabilities](sample_probabilities.png)", ""]


# The members: the chosen one, the sweep's grid.

def sweep_table(rows: Sequence[dict]) -> List[Dict[str, Any]]:
  """One record per member from metrics.jsonl rows ([] for one member):
  member, values (swept), seed, `best_val_<metric>` (over epochs) and
  `final_val_<metric>` (None without validation), `test_<metric>` (None:
  not finite or not recorded), diverged and chosen."""
  final = metrics_log.final_row(rows) or {}
  epochs = [r for r in metrics_log.epoch_rows(rows) if r.get("members")]
  out = []
  for entry in final.get("members") or ():
    i = entry["index"]
    record = {"member": i, "values": entry["values"], "seed": entry["seed"]}
    for m in metrics.of("val"):
      key = f"val_{m.name}"
      val = [r["members"][i][key] for r in epochs
             if "val_accuracy" in r["members"][i]]
      known = [v for v in val if v is not None]  # None: diverged.
      record[f"best_{key}"] = m.best(known) if known else None
      record[f"final_{key}"] = val[-1] if val else None
    out.append({**record, **{k: entry.get(k) for k in metrics.keys("test")},
                "diverged": bool(entry.get("diverged")),
                "chosen": i == final["chosen"]["index"]})
  return out


def write_sweep(workdir: str, config, records: Sequence[dict]) -> None:
  """sweep.csv (one row per member) and sweep.png (accuracy per swept value)."""
  from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
  names = list(config.sweep_grid())
  val = metrics.keys("val")
  keys = [f"best_{k}" for k in val] + [f"final_{k}" for k in val] + list(
      metrics.keys("test"))
  text = lambda v: "" if v is None else f"{v:.6f}"
  files.write_csv(os.path.join(workdir, "sweep.csv"),
                  [["member", *names, "seed", *keys, "diverged", "chosen"]] +
                  [[r["member"], *[repr(r["values"][n]) for n in names],
                    r["seed"], *[text(r[key]) for key in keys],
                    int(r["diverged"]), int(r["chosen"])] for r in records])
  plots.sweep_figure(records, names, os.path.join(workdir, "sweep.png"),
                     f"{config.model} ({config.preset}): {len(records)} "
                     f"members, {_seeds(config)} per grid point")


def _seeds(config) -> str:
  return f"{config.num_seeds} seed{'s' if config.num_seeds > 1 else ''}"


def members_section(config, final: dict, records: Sequence[dict]) -> List[str]:
  """report.md's lines on the members: which one is shown and why, the grid."""
  chosen = final.get("chosen")
  if not chosen:
    return []
  label = members_lib.values_text(chosen["values"], chosen["seed"])
  ties = "(ties: the lower validation loss, then the lower index)"
  if chosen["values"]:
    how = ("the grid point with the highest mean final validation accuracy "
           f"over its {_seeds(config)}, then its seed with the highest final "
           f"validation accuracy {ties}")
  elif config.val_fraction > 0:
    how = f"the seed with the highest final validation accuracy {ties}"
  else:
    how = "the first: without a validation split no member is preferred"
  lines = ["## Members", "",
           f"This report shows member {chosen['index']} ({label}) of "
           f"{len(final['members'])}, trained in one program, chosen as {how}. "
           "Test metrics play no part in the choice.", ""]
  if not config.sweep or not records:
    return lines
  names, tests = list(config.sweep_grid()), metrics.of("test")
  points = [list(p)
            for _, p in itertools.groupby(records, lambda r: r["values"])]
  lines += files.table(
      [*names, "validation accuracy %",
       *(f"test {m.label}{' ' + m.unit if m.unit else ''}" for m in tests),
       "chosen"],
      [[*(f"{p[0]['values'][n]:g}" for n in names),
        _mean_pm(metrics.BY_NAME["accuracy"],
                 [r["final_val_accuracy"] for r in p]),
        *(_mean_pm(m, [r.get(f"test_{m.name}") for r in p]) for m in tests),
        "yes" if any(r["chosen"] for r in p) else ""] for p in points],
      "l" * len(names) + "r" * (1 + len(tests)) + "l")
  return lines + [
      "", "Validation accuracy after the last epoch; mean ± std over the "
      "seeds. Every member: [sweep.csv](sweep.csv).", "", "![sweep](sweep.png)",
      ""]


def _mean_pm(metric: metrics.Metric, values: Sequence[Optional[float]]) -> str:
  """Values of a metric (scaled, without unit), as their mean ± std."""
  scaled = [metric.scale * v for v in values if v is not None]
  if len(scaled) < len(values):
    return "n/a"
  d = metric.digits
  if len(scaled) == 1:
    return f"{scaled[0]:.{d}f}"
  return f"{np.mean(scaled):.{d}f} ± {np.std(scaled, ddof=1):.{d}f}"

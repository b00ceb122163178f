"""What a trained model learned (issue 30): how far it must read, what breaks
it, where it looks, what its last hidden layer holds, how sure it is. Each
lens evaluates the model as the loop and the report do (run_lib.logits)."""

import functools
import importlib.util
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special

from mnist_jax import models
from mnist_jax.data import augment
from mnist_jax.data import datasets
from mnist_jax.results import run as run_lib
from mnist_jax import files
from mnist_jax.training import metrics

FOLDER = "analysis"  # In the run folder.
SUMMARY, READING, ROBUSTNESS, ARRAYS = ("summary.json", "reading.csv",
                                        "robustness.csv", "arrays.npz")
TSNE_MAP = "features_tsne.png"  # The t-SNE map, with scikit-learn installed.
STRIDE = 10  # Levels other than 0 are on test images 0, 10, 20, ...
GRID, MISTAKES = 12, 6
IG_STEPS, IG_MAX_STEPS, IG_TOLERANCE, IG_CHUNK = 16, 1024, 0.01, 16


def forward(module, variables, images, every: int = 0, train: bool = False):
  """Of images [B, H, W, C]: (features: the input of the module's OUTPUT
  layer [B, F], logits [B, K], with `every` > 0 that layer on its top
  layer's state after each unit read [B, T / every, K]). For run.logits."""
  seen = []

  def grab(next_fn, args, kwargs, context):
    if (context.method_name == "__call__" and
        context.module.scope.path == (module.OUTPUT,)):  # Not a submodule's.
      seen.append(args[0])
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(grab):
    logits, inter = module.apply(
        variables, images, train=train, mutable=["intermediates"],
        capture_intermediates=lambda m, _: bool(every) and isinstance(m, nn.RNN))
  if not every:
    return seen[0], logits, None
  layers = inter["intermediates"]  # The top nn.RNN's outputs [B, T, H]:
  top = max(layers, key=lambda k: int(k.rsplit("_", 1)[1]))
  hidden = layers[top]["__call__"][0]
  out = variables["params"][module.OUTPUT]
  return seen[0], logits, nn.Dense(out["bias"].shape[-1]).apply(
      {"params": out}, hidden[:, every - 1::every])


def reading_of(module, image_shape):
  """How `module` reads images [H, W, C] in steps (recurrent.Reading, as it
  declares by a `reading` method), or None: not one way, in steps."""
  declared = getattr(module, "reading", None)
  return declared(image_shape) if callable(declared) else None


def unit_of_pixel(reads, image_shape) -> np.ndarray:
  """[H, W]: the unit of `reads` (recurrent.Reading) each pixel is read in."""
  units = np.zeros(image_shape[0] * image_shape[1], np.int64)
  for t, pixels in enumerate(reads.order):
    units[pixels] = t // reads.every
  return units.reshape(image_shape[:2])


def reading(step_logits, labels) -> Dict[str, np.ndarray]:
  """Accuracy and mean true-class probability after each unit read (logits
  [N, U, K]); units_to_99: the first unit reaching 99% of the last's
  accuracy."""
  probs = run_lib.softmax(step_logits)
  y = np.asarray(labels, np.int64)
  acc = (probs.argmax(-1) == y[:, None]).mean(0)
  return {
      "accuracy": acc,
      "units_to_99": int(np.argmax(acc >= 0.99 * acc[-1])) + 1,
      "true_class_probability": probs[np.arange(len(y)), :, y].mean(0),
  }


def _warp(x, angle, zoom, shift):
  """augment.py's warp; image i shifted up, right, down or left for i % 4."""
  n = x.shape[0]
  offset = jnp.asarray([[-1, 0], [0, 1], [1, 0], [0, -1]])[jnp.arange(n) % 4]
  return augment.sample(x, *augment.affine_grid(
      x.shape, jnp.full(n, angle), jnp.full(n, zoom), shift * offset))


def _thickness(x, level):
  """Strokes grown (level > 0) or thinned (< 0) by |level| half pixels: grey
  dilations by a 3x3 cross at twice the resolution (of -x to thin)."""
  sign, (_, h, w, c) = jnp.where(level < 0, -1.0, 1.0), x.shape
  window = lambda x, shape: jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, shape, (1, 1, 1, 1), "SAME")
  x = sign * jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
  x = jax.lax.fori_loop(0, 3, lambda i, x: jnp.where(
      i < jnp.abs(level),
      jnp.maximum(window(x, (1, 3, 1, 1)), window(x, (1, 1, 3, 1))), x), x)
  return sign * x.reshape(-1, h, 2, w, 2, c).mean((2, 4))


# (change, unit, levels (0: the image), function): each changes images
# [n, H, W, C] by a level, given (noise [n, H, W, C], centres [n, 2]).
CHANGES = (
    ("rotation", "degrees clockwise", (0, 10, 20, 30, 40, 50, 60),
     lambda x, l, _: _warp(x, l * np.pi / 180, 1.0, 0.0)),
    ("shift", "pixels", (0, 1, 2, 3, 4, 6, 8),
     lambda x, l, _: _warp(x, 0.0, 1.0, l)),
    ("scaling", "% of size", (-40, -30, -20, -10, 0, 10, 20, 30),
     lambda x, l, _: _warp(x, 0.0, 1 + l / 100, 0.0)),
    ("noise", "std, fraction of full scale", (0, 0.05, 0.1, 0.2, 0.3, 0.5),
     lambda x, l, c: jnp.clip(x + l * 255 * c[0], 0, 255)),
    ("occlusion", "side of erased square, pixels", (0, 4, 6, 8, 10, 12, 14),
     lambda x, l, c: jnp.where(
         ((jnp.abs(jnp.arange(x.shape[1])[:, None] - c[1][:, :1, None]) < l / 2)
          & (jnp.abs(jnp.arange(x.shape[2]) - c[1][:, 1:, None]) < l / 2)
          )[..., None], 0.0, x)),
    ("thickness", "half pixels grown (+) or thinned (-)",
     (-3, -2, -1, 0, 1, 2, 3), lambda x, l, _: _thickness(x, l)),
)


def changed(images, seed: int = 0):
  """Each non-zero level of each change of images [n, H, W, C]: [L, n, ...], in
  one jitted function; the levels share an image's noise and centre of the
  erased square (rows, columns in the middle half)."""
  rng, side = np.random.default_rng(seed), np.array(np.shape(images)[1:3])
  extra = (rng.standard_normal(np.shape(images), np.float32),
           rng.uniform(side / 4, 3 * side / 4, (len(images), 2)
                       ).astype(np.float32))
  return jax.jit(lambda x, extra: jnp.concatenate([jax.vmap(
      fn, (None, 0, None))(x, jnp.asarray([l for l in levels if l],
                                          jnp.float32), extra)
      for *_, levels, fn in CHANGES]))(np.asarray(images, np.float32), extra)


def robustness(run, images, labels, accuracy: float) -> List[tuple]:
  """(change, level, accuracy, images): level 0 is `accuracy` (the run's, on
  all test images); others on every STRIDE-th test image, evaluated as the
  run's test images are (run_lib.logits)."""
  x, y = np.asarray(images)[::STRIDE], np.asarray(labels)[::STRIDE]
  shown = changed(x)  # [L, n, H, W, C], on the device.
  said = run_lib.logits(run.apply, run.variables, shown.reshape(
      -1, *shown.shape[2:]), run.config.eval_batch_size).argmax(-1)
  hits = iter((said.reshape(len(shown), -1) == y).mean(1))
  return [(name, level, float(next(hits)) if level else accuracy,
           len(x) if level else len(labels))
          for name, _, levels, _ in CHANGES for level in levels]


def target_gradients(module, variables, images, targets):
  """(The gradient of each image's `targets` logit, those logits): traceable,
  the integrand of integrated gradients (also the page's, serve.py)."""
  pick = lambda b: jnp.take_along_axis(module.apply(variables, b),
                                       targets[:, None], 1)
  return jax.grad(lambda b: pick(b).sum())(images), pick(images)[:, 0]


def attributions(module, variables, images, targets) -> Dict[str, np.ndarray]:
  """Integrated gradients of the target logits against a black image (Gauss-
  Legendre nodes, as Captum's default; doubled until each sums within 1% of
  logit(x) - logit(black)) and gradient x input, of images [n, H, W, C].
  One compiled program, of IG_CHUNK points on the path at a time; the rest
  is NumPy's (each eager JAX operation would compile one of its own)."""
  x = np.asarray(images, np.float32)
  c = np.tile(np.asarray(targets, np.int32), IG_CHUNK)
  path = jax.jit(lambda a, x: target_gradients(
      module, variables, (a[:, None, None, None, None] * x).reshape(
          -1, *x.shape[1:]), c))

  def at(a):  # Points a * x, a [IG_CHUNK]: (gradients, target logits).
    grads, logits = jax.device_get(path(np.float32(a), x))
    return grads.reshape(IG_CHUNK, *x.shape), logits.reshape(IG_CHUNK, -1)

  ends, logit = at(np.arange(IG_CHUNK) == 0)  # At x, then black.
  difference, steps = logit[0] - logit[1], IG_STEPS
  while True:
    total: Any = 0  # The weighted sum of the gradients [n, H, W, C].
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    for a, w in zip(*(np.float32(v / 2).reshape(-1, IG_CHUNK)
                      for v in (nodes + 1, weights))):  # On [0, 1].
      total += np.tensordot(w, at(a)[0], 1)
    ig = x * total
    error = np.abs(ig.sum((1, 2, 3)) - difference) / np.maximum(
        np.abs(difference), 1e-12)
    if error.max() <= IG_TOLERANCE or steps >= IG_MAX_STEPS:
      return {"ig": ig, "gxi": x * ends[0], "ig_error": error,
              "ig_steps": steps, "logit_difference": difference}
    steps *= 2


def pca(features, k: int = 2):
  """(coordinates [N, k], share of the variance, axes [F, k]) of the top
  principal components, each axis's largest entry positive."""
  x = np.asarray(features, np.float64)
  x = x - x.mean(0)
  values, vectors = np.linalg.eigh(x.T @ x / len(x))
  top = np.argsort(values)[::-1][:k]
  axes = vectors[:, top] * np.sign(
      vectors[np.abs(vectors[:, top]).argmax(0), top])
  return x @ axes, values[top] / max(values.sum(), 1e-30), axes


def calibration(logits, labels) -> Dict[str, np.ndarray]:
  """metrics.py's accuracy and ECE, and the ECE's bins' count, confidence
  and fraction correct."""
  sums = run_lib.metric_sums(logits, labels)
  count, values = np.maximum(sums["ece_count"], 1e-30), metrics.values(sums)
  return {"count": sums["ece_count"],
          "confidence": sums["ece_confidence"] / count,
          "correct": sums["ece_correct"] / count,
          "ece": values["ece"], "accuracy": values["accuracy"]}


def fit_temperature(logits, labels) -> float:
  """The T minimising softmax(logits / T)'s NLL (Brent's method on log T)."""
  z, y = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
  true = z[np.arange(len(y)), y]
  nll = lambda log_t: np.mean(scipy.special.logsumexp(z / np.exp(log_t), 1)
                              - true / np.exp(log_t))
  return float(np.exp(scipy.optimize.minimize_scalar(
      nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-7}).x))


def analyse(run, test, val=None, done=None) -> Dict[str, object]:
  """Every lens on a Run and test Split (val: the Split the temperature is
  fitted on; None or empty: none): numbers, arrays, seconds. done(results so
  far): called as each lens ends, the quickest first."""
  seconds, clock = {}, [time.perf_counter()]

  def lap(name):
    seconds[name] = round(time.perf_counter() - clock[0], 3)
    clock[0] = time.perf_counter()
    if done is not None:
      done(dict(r))

  config, module = run.config, models.get(run.config.model).stock(run.config)
  images, labels = np.asarray(test.images), np.asarray(test.labels)
  logits = run.logits(images, config.eval_batch_size)  # As in report.py.
  val_images = len(val) if val is not None else 0
  r = {"model": config.model, "preset": config.preset, "labels": labels,
       "parameters": int(sum(map(np.size, jax.tree.leaves(run.params)))),
       "predicted": logits.argmax(-1), "val_images": val_images,
       "seconds": seconds, "changes": [c[:3] for c in CHANGES],
       "stride": STRIDE, "grid": min(GRID, len(labels)),
       **{f"test_{k}": v for k, v in calibration(logits, labels).items()}}
  lap("test_logits")
  reads = reading_of(module, images.shape[1:])
  # The stock module's own OUTPUT layer and recurrent layers, caught as they
  # run (a kernel may compute them its own way), evaluated as the logits are.
  r["features"], _, unit_logits = run_lib.logits(
      functools.partial(forward, module, every=reads.every if reads else 0),
      run.variables, images, config.eval_batch_size)
  if reads:
    r.update({f"reading_{k}": v
              for k, v in reading(unit_logits, labels).items()})
    r["reading_steps"] = np.arange(1, unit_logits.shape[1] + 1) * reads.every
    r["reading_unit"] = list(reads.unit)
  else:
    r["reading_note"] = ("bidirectional" if getattr(module, "bidirectional", 0)
                         else "not a sequence model")
  lap("forward_pass_and_reading")
  r["pca"], r["explained"], _ = pca(r["features"])
  lap("pca")
  r["temperature"] = None
  if val_images:
    r["temperature"] = fit_temperature(
        run.logits(np.asarray(val.images), config.eval_batch_size), val.labels)
    r.update({f"scaled_{k}": v for k, v in calibration(
        logits / r["temperature"], labels).items()})
  lap("calibration")
  r["robustness"] = robustness(run, images, labels, r["test_accuracy"])
  lap("robustness")
  wrong = np.flatnonzero(r["predicted"] != labels)
  probs = run_lib.softmax(logits)
  worst = wrong[np.argsort(-probs[wrong].max(-1), kind="stable")]
  r["shown"] = np.concatenate([np.arange(r["grid"]), worst[:MISTAKES]])
  r["images"] = images[r["shown"]]
  r.update(attributions(module, run.variables, r["images"],
                        r["predicted"][r["shown"]]))
  # An attribution per pixel: its channels' sum.
  r.update(ig=r["ig"].sum(-1), gxi=r["gxi"].sum(-1))
  if reads:  # Each pixel's unit's sum.
    units = unit_of_pixel(reads, images.shape[1:])
    r["units_ig"] = np.stack([np.bincount(units.ravel(), weights=ig.ravel())
                              for ig in r["ig"]])
    r["units_map"] = r["units_ig"][:, units]
  lap("attributions")
  return r


def summary(r) -> Dict[str, Any]:
  """The summary numbers of `analyse`'s result (or compare_figures.py's
  load_analysis')."""
  at = {(c, l): a for c, l, a, _ in r["robustness"]}
  keys = ("model", "preset", "parameters", "test_accuracy", "test_ece",
          "temperature", "scaled_ece", "val_images", "reading_units_to_99",
          "reading_unit", "reading_note", "ig_steps", "seconds", "names",
          "robustness", "changes", "stride", "grid")
  return {**{k: r.get(k) for k in keys},
          "accuracy_rotation_20": at["rotation", 20],
          "robustness_subset_accuracy": np.mean(
              r["predicted"][::STRIDE] == r["labels"][::STRIDE]),
          "accuracy_noise_0.3": at["noise", 0.3],
          "robustness_images": min(n for *_, n in r["robustness"]),
          "ig_max_relative_error": float(np.max(r["ig_error"]))}


def write(workdir: str, run, test, val=None,
          class_names: Optional[Sequence[str]] = None,
          maps: bool = True, lenses=None) -> List[str]:
  """Writes `analyse` into workdir/analysis/; returns report.md's section.
  lenses: its results as each lens ends, all of them last (report.Lenses';
  default: analyse now), each figure drawn once they hold its key. maps: a
  t-SNE map too, with scikit-learn (seconds)."""
  # pylint: disable=g-import-not-at-top
  from mnist_jax.results import analysis_plots

  lenses = lenses or [analyse(run, test, val)]
  folder = os.path.join(workdir, FOLDER)
  path = lambda name: os.path.join(folder, name)
  os.makedirs(folder, exist_ok=True)
  for name in [n for n, *_ in FIGURES if os.path.exists(path(n))]:
    os.remove(path(name))  # An earlier analysis's.
  names = list(class_names or datasets.get(run.config.dataset).class_names)
  drawing, drawn = 0.0, set()
  for r in lenses:
    r.update(names=names, label=f"{r['model']} ({r['preset']})")
    start = time.perf_counter()
    for name, _, draw, key in FIGURES:
      if draw and name not in drawn and key in r:
        getattr(analysis_plots, draw)([r], path(name))
        drawn.add(name)
    drawing += time.perf_counter() - start
  r["seconds"]["figures"] = round(drawing, 3)
  r["seconds"]["total"] = round(sum(r["seconds"].values()), 3)
  if maps and importlib.util.find_spec("sklearn"):
    from sklearn.manifold import TSNE
    start = time.perf_counter()
    r["tsne_index"] = np.arange(0, len(r["labels"]), STRIDE)
    points = r["features"][r["tsne_index"]]
    # Barnes-Hut: several times faster than exact on 1,000 points; the
    # perplexity must stay under the point count.
    r["tsne"] = TSNE(
        method="barnes_hut", random_state=0,
        perplexity=min(30, (len(points) - 1) / 3),
        init="pca" if np.ptp(points, axis=0).max() > 0 else "random",
    ).fit_transform(points)
    analysis_plots.maps([r], path(TSNE_MAP), "tsne")
    r["seconds"]["tsne"] = round(time.perf_counter() - start, 3)
  files.write_json(path(SUMMARY), summary(r))
  files.write_csv(path(ROBUSTNESS),
                  [("change", "level", "accuracy", "images")] + r["robustness"])
  if "reading_accuracy" in r:
    files.write_csv(path(READING), [
        ("step", "accuracy", "true_class_probability"), *zip(r["reading_steps"],
        r["reading_accuracy"], r["reading_true_class_probability"])])
  with files.atomic(path(ARRAYS), "wb") as f:
    arrays: Dict[str, Any] = {k: v for k, v in r.items()
                              if k != "features" and isinstance(v, np.ndarray)}
    np.savez_compressed(f, **arrays)
  return section(r, folder)


def cells(s) -> List[tuple]:
  """The summary's (heading, text) pairs: report.md's table (compare.py's
  with the train time)."""
  pct = metrics.BY_NAME["accuracy"].text  # "n/a" for None.
  return [
      ("parameters", f"{s['parameters']:,}"),
      ("test accuracy", pct(s["test_accuracy"])),
      ("ECE", pct(s["test_ece"])),
      ("T", f"{s['temperature']:.3f}" if s["temperature"]
       else "n/a (no validation)"),
      ("ECE after T", pct(s["scaled_ece"])),
      ("at 20 degrees", pct(s["accuracy_rotation_20"])),
      ("at noise 0.3", pct(s["accuracy_noise_0.3"])),
      ("read to 99%",
       f"{s['reading_units_to_99']} {s['reading_unit'][1]}"
       if s.get("reading_units_to_99") else f"n/a ({s['reading_note']})"),
  ]


NOTES = (
    "Robustness: level 0 of each change is the run's test accuracy on all "
    "test images; other levels are on test images #0, "
    f"#{STRIDE}, #{2 * STRIDE}, ... (each change drawn once, the same for "
    "every model). T: the temperature fitted on the validation split (never "
    "test data); ECE after T on the test set. Read to 99%: how much of the "
    "image a sequence model reads (in the units it reads in: rows, ...) "
    "before its own output layer reaches 99% of its final accuracy."
)
FIGURES = (  # (file, title, analysis_plots' function, the key it waits for)
    ("reading.png", "How far it must read", "reading", "reading_accuracy"),
    ("robustness.png", "What breaks it", "robustness", "robustness"),
    ("attributions.png", "Where it looks", "attributions", "ig"),
    ("features_pca.png", "What it learned (PCA)", "maps", "pca"),
    ("reliability.png", "How sure it is", "reliability", "temperature"),
    (TSNE_MAP, "What it learned (t-SNE)", None, None),  # write's.
)


def figure_lines(shown, heading: str) -> List[str]:
  """Markdown lines of figures [(title, link)], each under a heading."""
  return [line for title, link in shown
          for line in (f"{heading} {title}", "", f"![{title}]({link})", "")]


def section(r, folder: str) -> List[str]:
  """report.md's lines on one run's analysis (the figures in `folder`)."""
  s, prefix = summary(r), FOLDER + "/"
  links = ", ".join(f"[{n}]({prefix}{n})"
                    for n in (SUMMARY, ROBUSTNESS, READING)
                    if os.path.exists(os.path.join(folder, n)))
  return [
      "## What the model learned",
      "",
      *files.table(["", ""], cells(s), "lr"),
      "",
      f"{NOTES} Integrated gradients: {s['ig_steps']} steps, each summing to "
      f"within {100 * s['ig_max_relative_error']:.2f}% of logit(x) - "
      f"logit(black). Numbers: {links} (each analysis's seconds in "
      f"{FOLDER}/{SUMMARY}).",
      "",
      *figure_lines([(title, prefix + name) for name, title, *_ in FIGURES
                     if os.path.exists(os.path.join(folder, name))], "###"),
  ]

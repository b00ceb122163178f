"""A trained run (`Run`, also the Python API's model); the one way results
evaluate a model (`logits`, through train.logits_of, as the loop does) and
score its logits (`scores`, the loop's metric sums); --mode=predict."""

import dataclasses
import functools
import json
import os
import sys
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import files
from mnist_jax import models
from mnist_jax.config import value_text
from mnist_jax.data import datasets
from mnist_jax.errors import UserError
from mnist_jax.training import precision
from mnist_jax.rundir import checkpoints as checkpoints_lib
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import lock
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.rundir import resume
from mnist_jax.training import members as members_lib
from mnist_jax.training import population
from mnist_jax.training import metrics
from mnist_jax.training import train


def as_images(images, shape=(28, 28, 1)) -> Tuple[np.ndarray, bool]:
  """([N, H, W, C] on the 0-255 scale, whether one image) of one image or a
  batch of `shape`: [H, W, C] or [N, H, W, C] (grey also [H, W], [H * W]
  and with N), integers in 0..255 or floats in [0, 1]; else ValueError."""
  x, (h, w, c) = np.asarray(images), shape
  singles = {(h, w, c)} | ({(h, w), (h * w,)} if c == 1 else set())
  single = x.shape in singles
  if not single and x.shape[1:] not in singles:
    grey = f" (grey: also [{h}, {w}] or [{h * w}], with N)" if c == 1 else ""
    raise ValueError(f"images of shape {list(np.shape(images))}: pass one "
                     f"image [{h}, {w}, {c}] or a batch [N, {h}, {w}, {c}]"
                     f"{grey}")
  if x.shape[1:] != (h, w, c):  # Else x itself: Run keeps its logits by id.
    x = x.reshape(-1, h, w, c)
  if np.issubdtype(x.dtype, np.integer) and (not x.size or (
      x.min() >= 0 and x.max() <= 255)):
    return x.astype(np.uint8, copy=False), single
  if np.issubdtype(x.dtype, np.floating) and (not x.size or (
      np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)):
    return x.astype(np.float32) * np.float32(255), single
  raise ValueError(f"images of dtype {x.dtype} with values from {x.min()} to "
                   f"{x.max()}: pass uint8 (or integers in 0..255) or floats "
                   "in [0, 1] (divide 0-255 floats by 255)")


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model: its chosen member's `variables` ({"params": ...,
  **model_state}) and its grid point's S seeds' `seed_variables` [S, ...].
  Methods take images as `as_images` does: for one image its result alone."""
  config: Any
  model: nn.Module  # The module that ran (a kernel where it was checked).
  variables: Any
  epoch: int
  member: int = 0
  seeds: Tuple[int, ...] = (0,)
  seed_variables: Any = None
  _cache: dict = dataclasses.field(default_factory=dict, compare=False)

  @classmethod
  def from_state(cls, config, state, member: int = 0, epoch: int = 0,
                 model: Optional[nn.Module] = None):
    """The chosen `member` of a (stacked) train state, and its point's seeds.
    model: the module that trained it (else models.build's choice)."""
    members = members_lib.from_config(config)
    seeds = next(p for p in members_lib.points(members) if member in p)
    pick = lambda i: jax.tree.map(lambda v: np.asarray(v)[i], state.variables)
    if len(members) == 1:
      variables, stacked = state.variables, pick(None)
    else:
      variables, stacked = pick(member), pick(np.asarray(seeds))
    if model is None:
      model, _ = models.build(config, say=lambda _: None)
    return cls(config, model, variables, epoch, member, seeds, stacked)

  @property
  def params(self):
    return self.variables["params"]

  @functools.cached_property
  def apply(self) -> Callable:
    """The module's apply in the run's --dtype, as it trained (one object:
    `logits` compiles once for it)."""
    return precision.cast_apply(self.model.apply, self.config.dtype)

  def _logits(self, images, stacked: bool, batch_size: int):
    """(logits, whether one image); the last array's are kept for reuse."""
    x, single = as_images(images,
                          datasets.get(self.config.dataset).image_shape)
    if stacked in self._cache and self._cache[stacked][0] is x:
      return self._cache[stacked][1], single
    if stacked:  # The seeds one after another.
      out = np.stack([logits(self.apply, jax.tree.map(lambda v, i=i: v[i],
                                                      self.seed_variables),
                             x, batch_size) for i in range(len(self.seeds))])
    else:
      out = logits(self.apply, self.variables, x, batch_size)
    self._cache[stacked] = (x, out)
    return out, single

  def keep_logits(self, images, member_logits: np.ndarray) -> None:
    """Takes each member's logits [M, N, K] of `images`, as the loop's
    evaluation gave them, for its chosen member's and its seeds' logits:
    the headline, the ensemble and the report come from one evaluation."""
    x, _ = as_images(images, datasets.get(self.config.dataset).image_shape)
    self._cache[False] = (x, member_logits[self.member])
    self._cache[True] = (x, member_logits[np.asarray(self.seeds)])

  def logits(self, images, batch_size: int = 1000) -> np.ndarray:
    """The chosen member's logits [N, K] (float32)."""
    out, single = self._logits(images, False, batch_size)
    return out[0] if single else out

  def seed_logits(self, images, batch_size: int = 1000) -> np.ndarray:
    """Logits [S, N, K] of the chosen grid point's S seeds."""
    out, single = self._logits(images, True, batch_size)
    return out[:, 0] if single else out

  def probabilities(self, images, ensemble: bool = False,
                    batch_size: int = 1000) -> np.ndarray:
    """Class probabilities [N, K] (float64): the chosen member's, or with
    `ensemble` the mean of its grid point's seeds'."""
    out, single = self._logits(images, ensemble, batch_size)
    probs = softmax(ensemble_logits(out) if ensemble else out)
    return probs[0] if single else probs

  def predict(self, images, ensemble: bool = False,
              batch_size: int = 1000) -> Union[int, np.ndarray]:
    """The most probable class of each image: [N] int64 (an int for one)."""
    classes = self.probabilities(images, ensemble, batch_size).argmax(axis=-1)
    return int(classes) if classes.ndim == 0 else classes

  def evaluate(self, images, labels, ensemble: bool = False,
               batch_size: int = 1000) -> Dict[str, Any]:
    """The test metrics (`scores`), "count" and "confusion" [K, K]."""
    out, _ = self._logits(images, ensemble, batch_size)
    out = ensemble_logits(out) if ensemble else out
    labels = np.reshape(labels, -1).astype(np.int64)
    return {**scores(out, labels), "confusion": confusion(
        labels, out.argmax(-1), out.shape[-1])}


def logits(apply_fn: Callable, variables, images, batch_size: int = 1000):
  """apply_fn's outputs in evaluation mode (logits [N, K], or any tree of
  [N, ...]) of images [N, H, W, C], in order and none dropped, in batches
  through train.logits_of, as the loop evaluates."""
  n = len(images)
  batch = max(1, min(batch_size, n))
  count = -(-n // batch)
  idx = np.minimum(np.arange(count * batch), n - 1).reshape(count, batch)
  out = jax.device_get(_compiled(apply_fn)(variables, images, idx))
  return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


@functools.lru_cache(maxsize=16)
def _compiled(apply_fn: Callable) -> Callable:
  """`logits`' jitted function of (variables, images, the batches' indices
  [count, batch]), one for each apply_fn: a compile for each shape."""
  return jax.jit(lambda v, x, i: train.logits_of(apply_fn, v, x[i]))


def scores(logits, labels) -> Dict[str, float]:
  """The test metrics (metrics.py) of logits [N, K] for labels [N], as the
  loop's evaluation sums them, and "count"."""
  return metrics.values(metric_sums(logits, labels))


def metric_sums(logits, labels) -> Dict[str, np.ndarray]:
  """The test metrics' sums of logits [N, K] for labels [N], on the host."""
  return jax.device_get(_sums(metrics.METRICS)(
      jnp.asarray(logits, jnp.float32),
      jnp.asarray(np.asarray(labels), jnp.int32)))


@functools.lru_cache(maxsize=4)
def _sums(metric_list) -> Callable:
  """`metric_sums`' function of (logits, labels), jitted for the metrics
  listed: one compile, not one for each operation run eagerly (0.5 s)."""
  del metric_list  # The cache's key: a metric added later is compiled in.
  def sums(logits, labels):
    nll, _ = train.cross_entropy(logits, labels)
    return metrics.batch_sums(logits, labels, nll, splits=("test",))
  return jax.jit(sums)


def softmax(logits) -> np.ndarray:
  """Row-wise softmax in float64."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def finite_models(logits: np.ndarray) -> np.ndarray:
  """The models of logits [S, N, K] that did not diverge (all finite)."""
  return logits[np.isfinite(logits).all(axis=(1, 2))]


def ensemble_logits(logits: np.ndarray) -> np.ndarray:
  """An ensemble's logits [N, K]: the logs of the mean probabilities of the
  finite ones of S models' logits [S, N, K]."""
  return np.log(np.maximum(softmax(finite_models(logits)).mean(0), 1e-30))


def confusion(labels, predicted, k: int) -> np.ndarray:
  """[K, K] counts: rows true labels, columns predictions."""
  flat = np.asarray(labels, np.int64) * k + np.asarray(predicted, np.int64)
  return np.bincount(flat, minlength=k * k).reshape(k, k)


def load_run(workdir: str, **overrides) -> Run:
  """Restores a run folder's latest checkpoint, without writing to it; the
  member the final metrics row chose (else 0). overrides: Config fields."""
  config = record.used_config(workdir, **overrides)
  if (metrics_log.final_metrics(workdir) is not None and
      not checkpoints_lib.steps(workdir)):
    raise UserError(
        f"{workdir} finished, but its checkpoints are gone from "
        f"{checkpoints_lib.directory(workdir)}: put them back, or train it "
        "again with its training command (config.json's \"repeat\"), "
        f"--workdir={workdir} and --overwrite, which deletes its logs and "
        "report")
  model, _ = models.build(config, say=lambda _: None)
  shape = datasets.get(config.dataset).image_shape
  state, meta = checkpoints_lib.restore(workdir, jax.eval_shape(
      lambda: population.initial_state(config, model, 1, shape)), config.model)
  chosen = (metrics_log.final_metrics(workdir) or {}).get("chosen")
  return Run.from_state(config, state, chosen["index"] if chosen else 0,
                        int(meta.get("epoch", 0)))


def title(config) -> str:
  """"cnn (tuned, --epochs=2)": the model, its preset and the settings that
  differ from the preset's (where files went and how it ran aside), so that a
  short run does not read as the preset's result."""
  preset = models.get_config(config.model, config.preset).to_dict()
  changed = [f"--{k}={value_text(v)}" for k, v in config.to_dict().items()
             if k not in resume.RESUMABLE_DIFFERENCES
             and value_text(v) != value_text(preset.get(k))]
  return f"{config.model} ({', '.join([config.preset, *changed])})"


def run_note(workdir: str, run: Run) -> Optional[str]:
  """What results of `run` stand for where not the finished run's: trained
  on other code than this checkout's (code.py), and still training, an older
  checkpoint or unfinished; None for the last checkpoint of this code."""
  notes = [code_lib.note(workdir, record.trained_code(workdir)),
           _checkpoint_note(workdir, run)]
  return "; ".join(n for n in notes if n) or None


def _checkpoint_note(workdir: str, run: Run) -> Optional[str]:
  """The checkpoint's part of run_note."""
  last = max((r["epoch"] for r in metrics_log.epoch_rows(
      metrics_log.MetricsLog(workdir).read())), default=0)
  if lock.in_use(workdir):
    return (f"{workdir} is still training (epoch {last} of "
            f"{run.config.epochs} logged): these results are "
            f"of its latest checkpoint, of epoch {run.epoch}")
  if run.epoch < last:
    return (f"these results are of the checkpoint of epoch {run.epoch}, older "
            f"than the run's last epoch, {last}: its later checkpoints are "
            "missing")
  state, last_row = record.status(workdir)
  if state == "diverged":
    why = (last_row or {}).get("message", "training")
    return (f"{workdir} diverged ({why}): "
            f"these results are of its last good checkpoint, of epoch "
            f"{run.epoch}; its settings would diverge again: lower "
            "--learning_rate or set --grad_clip, and add --overwrite to train "
            "it over (which deletes this one)")
  if state == "unfinished" and metrics_log.final_metrics(workdir) is None:
    return (f"{workdir} is unfinished (epoch {run.epoch} of "
            f"{run.config.epochs}): these results are of its latest "
            "checkpoint; to train it on, run its training command again")
  return None


# --mode=predict: image files.

PLOT_DIR = "predict"


@dataclasses.dataclass
class Prediction:
  file: str
  digit: Optional[int] = None  # The class index (a digit on MNIST).
  name: Optional[str] = None  # The class's name in its dataset.
  probabilities: Optional[List[float]] = None
  image: Optional[np.ndarray] = None  # [H, W, C] uint8, as the model saw it.
  error: Optional[str] = None
  note: Optional[str] = None  # images.NO_DIGIT: a dot, not a digit.


def predict_files(run: Run, paths: Sequence[str],
                  ensemble: bool = False) -> List[Prediction]:
  """Predicts each file (failures kept, in order); `ensemble`: the mean
  probabilities of the chosen grid point's seeds (UserError with one seed)."""
  if ensemble and len(run.seeds) < 2:
    raise UserError(
        "--ensemble averages the seeds of the run's chosen grid point, and "
        "this run has one seed there; predict without --ensemble, or train "
        "with --num_seeds=N")
  shape = datasets.get(run.config.dataset).image_shape
  # Imported here: scipy.ndimage would lengthen every training run's start.
  from mnist_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  results = []
  for path in paths:
    try:
      notes: List[str] = []
      image = images_lib.load(path, shape, notes=notes)
      results.append(Prediction(path, image=image,
                                note=notes[0] if notes else None))
    except images_lib.ImageError as e:
      results.append(Prediction(path, error=str(e)))
  good = [r for r in results if r.error is None]
  if good:
    probs = run.probabilities(np.stack([r.image for r in good
                                        if r.image is not None]), ensemble,
                              batch_size=len(good))
    names = datasets.get(run.config.dataset).class_names
    for r, p in zip(good, probs):
      r.digit = int(np.argmax(p))
      r.name = names[r.digit]
      r.probabilities = [round(float(v), 6) for v in p]
  return results


def print_predictions(workdir: str, paths: Sequence[str],
                      as_json: bool = False, plot: bool = False, out=None,
                      err=None, ensemble: bool = False, **overrides) -> int:
  """The `--mode=predict` command: prints one line per file; returns how many
  failed. overrides: Config fields to change when loading the run."""
  out, err = out or sys.stdout, err or sys.stderr
  if not paths:
    raise UserError("--mode=predict needs --image=FILE[,FILE...]")
  run = load_run(workdir, **overrides)
  names = datasets.get(run.config.dataset).class_names
  from mnist_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  results = predict_files(run, images_lib.expand(paths), ensemble)
  note = run_note(workdir, run)
  if note:  # A run still training, unfinished, or an older checkpoint.
    print(f"note: {note}", file=err)
  plotted: set = set()  # Names taken: a/seven.png, b/seven.png both plot.
  for r in results:
    if r.error is not None or r.note is not None:
      print(f"error: {r.error}" if r.note is None else
            f"note: {r.file}: {r.note}", file=err)
    if as_json:
      print(json.dumps({"file": r.file, "digit": r.digit, "class": r.name,
                        "probabilities": r.probabilities,
                        **({} if r.error is None else {"error": r.error}),
                        **({} if r.note is None else {"note": r.note})}),
            file=out)
    elif r.probabilities is not None and r.digit is not None:  # No error.
      probs = " ".join(f"{names[i]}:{p:.3f}"
                       for i, p in enumerate(r.probabilities))
      print(f"{r.file}: {r.name} ({100 * r.probabilities[r.digit]:.1f}%)  "
            f"probabilities {probs}", file=out)
    if plot and r.image is not None:  # No error.
      # matplotlib only for --plot: a training run starts without it.
      from mnist_jax.results import plots  # pylint: disable=g-import-not-at-top
      folder = os.path.join(workdir, PLOT_DIR)
      os.makedirs(folder, exist_ok=True)
      name = files.unique(os.path.splitext(os.path.basename(r.file))[0],
                          plotted.__contains__)
      plotted.add(name)
      saved = plots.prediction(r.image, np.asarray(r.probabilities),
                               os.path.join(folder, f"{name}.png"), r.file,
                               names)
      print(f"plot: {saved}", file=err if as_json else out)
  return sum(r.error is not None for r in results)

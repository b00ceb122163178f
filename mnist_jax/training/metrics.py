"""The metrics of a run, each declared once in `METRICS`.

A metric is a few per-batch sums on the device (`Metric.sums`) that add
across batches, devices and members, and a value computed from them on the
host (`Metric.value`, given the sums and the example count). Its entry also
says which splits report it, its TensorBoard tag, and how report.md and the
console show it. Everything that names metrics derives from `METRICS`: the
train and eval steps' sums (`batch_sums`, `zeros`), host values (`values`),
the metrics.jsonl keys `<split>_<name>` (members.row), TensorBoard tags
(rundir/tensorboard.py), the epoch line (rundir/log.py), and report.md and
the members' tables (results/report.py).

Adding a metric: one `Metric` entry below and its sums function.
"""

import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.data import datasets

SPLITS = ("train", "val", "test")
EVAL = ("val", "test")  # The splits one evaluation program serves.
ECE_BINS = 15


@dataclasses.dataclass(frozen=True)
class Batch:
  """What a metric's sums are computed from, for one batch of B examples.

  logits [B, K] float, labels [B] int, nll [B] (plain cross entropy),
  mask [B] float32 (1 for the examples that count).
  """
  logits: jax.Array
  labels: jax.Array
  nll: jax.Array
  mask: jax.Array

  @property
  def correct(self) -> jax.Array:
    """[B] float32: 1 where the arg max of the logits is the label."""
    return (jnp.argmax(self.logits, -1) == self.labels).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric: its sums, its value and where it shows.

  name: the row key is `<split>_<name>` (e.g. val_ece).
  sums: fn(Batch) -> {sum key: array}, sums over the batch's masked examples.
    A key two metrics share must be the same sum.
  value: fn(host sums, count) -> float, for count > 0.
  splits: the splits that report it.
  tag: TensorBoard's tag is `<tag>/<split>`.
  label: its name in report.md and tables ("Test <label>").
  scale, digits, unit: its text, f"{scale * value:.{digits}f}{unit}".
  higher_is_better: which of two values is better (best over epochs).
  console: its short name in the epoch line (val_<console> for val), or None.
  """
  name: str
  sums: Callable[[Batch], Dict[str, jax.Array]]
  value: Callable[[Dict[str, np.ndarray], float], float]
  splits: Tuple[str, ...]
  tag: str
  label: str
  scale: float = 1.0
  digits: int = 4
  unit: str = ""
  higher_is_better: bool = False
  console: Optional[str] = None

  def text(self, value: Optional[float]) -> str:
    """The value as report.md and the console show it ("n/a" for None)."""
    if value is None:
      return "n/a"
    return f"{self.scale * value:.{self.digits}f}{self.unit}"

  def best(self, values: Sequence[float]) -> float:
    return max(values) if self.higher_is_better else min(values)


def _loss(batch: Batch) -> Dict[str, jax.Array]:
  return {"loss": jnp.sum(batch.nll * batch.mask)}


def _correct(batch: Batch) -> Dict[str, jax.Array]:
  return {"correct": jnp.sum(batch.correct * batch.mask)}


def _calibration(batch: Batch) -> Dict[str, jax.Array]:
  """Per-bin sums [ECE_BINS] of equal-width confidence bins: examples, their
  confidence (the top softmax probability) and how many were correct."""
  confidence = jnp.max(jax.nn.softmax(batch.logits.astype(jnp.float32)), -1)
  bins = jnp.clip(jnp.floor(confidence * ECE_BINS), 0, ECE_BINS - 1)
  weight = jax.nn.one_hot(bins.astype(jnp.int32), ECE_BINS) * batch.mask[:, None]
  return {"ece_count": jnp.sum(weight, 0),
          "ece_confidence": jnp.sum(weight * confidence[:, None], 0),
          "ece_correct": jnp.sum(weight * batch.correct[:, None], 0)}


def _ece(sums, count: float) -> float:
  """Expected calibration error: sum over bins of |correct - confidence| / N."""
  gap = np.abs(np.asarray(sums["ece_correct"], np.float64) -
               np.asarray(sums["ece_confidence"], np.float64))
  return float(np.sum(gap) / count)


METRICS = (
    Metric("loss", _loss, lambda s, n: float(s["loss"]) / n, SPLITS,
           tag="loss", label="loss", console="loss"),
    Metric("accuracy", _correct, lambda s, n: float(s["correct"]) / n, SPLITS,
           tag="accuracy", label="accuracy", scale=100.0, digits=2, unit="%",
           higher_is_better=True, console="acc"),
    Metric("ece", _calibration, _ece, EVAL, tag="calibration_error",
           label=f"calibration error (ECE, {ECE_BINS} bins)", scale=100.0,
           digits=2, unit="%"),
)
BY_NAME = {m.name: m for m in METRICS}


def of(split: str) -> Tuple[Metric, ...]:
  """The metrics `split` reports, in declaration order."""
  return tuple(m for m in METRICS if split in m.splits)


def keys(split: str) -> Tuple[str, ...]:
  """The metrics.jsonl keys of a split: `<split>_<name>`."""
  return tuple(f"{split}_{m.name}" for m in of(split))


def batch_sums(logits, labels, nll, mask=None,
               splits: Sequence[str] = ("train",)) -> Dict[str, jax.Array]:
  """The sums of every metric of `splits` over one batch, and its "count".

  logits [B, K], labels [B] int, nll [B]; mask [B] (default all ones).
  """
  if mask is None:
    mask = jnp.ones_like(nll)
  batch = Batch(logits, labels, nll, mask)
  out = {}
  for m in METRICS:
    if any(s in m.splits for s in splits):
      out.update(m.sums(batch))
  out["count"] = jnp.sum(mask)
  return out


def zeros(splits: Sequence[str] = ("train",), lead: Tuple[int, ...] = (),
          host: bool = False, *, num_classes: int) -> Dict[str, jax.Array]:
  """Zero sums shaped like `batch_sums(splits=splits)` of logits [B,
  num_classes], with `lead` axes in front (e.g. (M,) for M members); numpy
  arrays where `host`."""
  shapes = {"count": ()}
  for m in METRICS:
    if any(s in m.splits for s in splits):
      shapes.update({k: s.shape for k, s in
                     _shapes(num_classes)[m.name].items()})
  xp = np if host else jnp
  return {k: xp.zeros(lead + shapes[k], np.float32) for k in sorted(shapes)}


def values(sums) -> Dict[str, float]:
  """Host values of one model's sums: every metric whose sums are there, and
  "count". NaN for sums over no example (a diverged member's skipped steps)."""
  count = float(sums["count"])
  out = {}
  for m in METRICS:
    if all(k in sums for k in _keys()[m.name]):
      out[m.name] = m.value(sums, count) if count else float("nan")
  out["count"] = count
  return out


@functools.lru_cache(maxsize=None)
def _shapes(num_classes: int) -> Dict[str, Dict[str, jax.ShapeDtypeStruct]]:
  """Each metric's sums for `num_classes` classes, {name: {key: shape}}, from
  one trace per class count and process."""
  def every_sum():
    batch = Batch(jnp.zeros((1, num_classes)), jnp.zeros((1,), jnp.int32),
                  jnp.zeros((1,)), jnp.ones((1,)))
    return {m.name: m.sums(batch) for m in METRICS}
  return jax.eval_shape(every_sum)


def _keys() -> Dict[str, Tuple[str, ...]]:
  """Each metric's sum keys, which no class count changes (traced with the
  most classes a registered dataset has: every metric serves every one)."""
  most = max(datasets.num_classes(name) for name in datasets.DATASETS)
  return {name: tuple(sums) for name, sums in _shapes(most).items()}


def of_logits(logits, labels, splits: Sequence[str] = ("test",),
              batch_size: int = 10000) -> Dict[str, float]:
  """`values` of logits [N, K] for labels [N], through the same sums the
  evaluation adds up on the device (in batches of `batch_size`)."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(np.asarray(labels), jnp.int32)
  sums = zeros(splits, num_classes=logits.shape[-1])
  for start in range(0, len(labels), batch_size):
    x, y = logits[start:start + batch_size], labels[start:start + batch_size]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(x), y[:, None], -1)[:, 0]
    sums = jax.tree.map(jnp.add, sums, batch_sums(x, y, nll, splits=splits))
  return values(jax.device_get(sums))

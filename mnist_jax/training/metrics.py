"""The metrics of a run, each declared once in `METRICS`.

A metric is a few sums over a batch on the device (they add up over batches,
devices and members) and a value from them on the host. The steps' sums, the
metrics.jsonl keys `<split>_<name>`, TensorBoard tags, the console line and
report.md derive from `METRICS`: a new metric is one entry and its sums.
"""

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SPLITS = ("train", "val", "test")
EVAL = ("val", "test")  # The splits the evaluation serves.
ECE_BINS = 15


@dataclasses.dataclass(frozen=True)
class Batch:
  """logits [B, K], labels [B] int, nll [B] (plain cross entropy), mask [B]
  (1 for the examples that count)."""
  logits: jax.Array
  labels: jax.Array
  nll: jax.Array
  mask: jax.Array

  @property
  def correct(self) -> jax.Array:
    return (jnp.argmax(self.logits, -1) == self.labels).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Metric:
  """name (row key `<split>_<name>`); sums: Batch -> {key: masked sum};
  value: (host sums, count) -> float; tag: TensorBoard's `<tag>/<split>`."""
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
    return "n/a" if value is None else (
        f"{self.scale * value:.{self.digits}f}{self.unit}")

  def best(self, values: Sequence[float]) -> float:
    return max(values) if self.higher_is_better else min(values)


def _calibration(batch: Batch) -> Dict[str, jax.Array]:
  """Per-bin sums of equal-width bins of the top softmax probability."""
  confidence = jnp.max(jax.nn.softmax(batch.logits.astype(jnp.float32)), -1)
  bins = jnp.clip(jnp.floor(confidence * ECE_BINS), 0, ECE_BINS - 1)
  hot = jax.nn.one_hot(bins.astype(jnp.int32), ECE_BINS)
  weight = hot * batch.mask[:, None]
  return {"ece_count": jnp.sum(weight, 0),
          "ece_confidence": jnp.sum(weight * confidence[:, None], 0),
          "ece_correct": jnp.sum(weight * batch.correct[:, None], 0)}


def _ece(sums, count: float) -> float:
  """Expected calibration error: sum over bins of |correct - confidence| / N."""
  return float(np.sum(np.abs(np.asarray(sums["ece_correct"], np.float64) -
                             sums["ece_confidence"])) / count)


METRICS = (
    Metric("loss", lambda b: {"loss": jnp.sum(b.nll * b.mask)},
           lambda s, n: float(s["loss"]) / n, SPLITS, tag="loss",
           label="loss", console="loss"),
    Metric("accuracy", lambda b: {"correct": jnp.sum(b.correct * b.mask)},
           lambda s, n: float(s["correct"]) / n, SPLITS, tag="accuracy",
           label="accuracy", scale=100.0, digits=2, unit="%",
           higher_is_better=True, console="acc"),
    Metric("ece", _calibration, _ece, EVAL, tag="calibration_error",
           label=f"calibration error (ECE, {ECE_BINS} bins)", scale=100.0,
           digits=2, unit="%"),
)
BY_NAME = {m.name: m for m in METRICS}


def of(split: str) -> Tuple[Metric, ...]:
  return tuple(m for m in METRICS if split in m.splits)


def keys(split: str) -> Tuple[str, ...]:
  return tuple(f"{split}_{m.name}" for m in of(split))


def batch_sums(logits, labels, nll, mask=None, splits=("train",)):
  """The sums of every metric of `splits` over a batch, and its "count"."""
  batch = Batch(logits, labels, nll, jnp.ones_like(nll) if mask is None
                else mask)
  out = {"count": jnp.sum(batch.mask)}
  for m in METRICS:
    if set(splits) & set(m.splits):
      out.update(m.sums(batch))
  return out


def zeros(splits=("train",), lead=(), host=False, *, num_classes: int):
  """Zero sums shaped like batch_sums', with `lead` axes (e.g. (M,))."""
  shapes = jax.eval_shape(lambda: batch_sums(
      jnp.zeros((1, num_classes)), jnp.zeros((1,), jnp.int32),
      jnp.zeros((1,)), splits=tuple(splits)))
  xp = np if host else jnp
  return {k: xp.zeros(tuple(lead) + s.shape, np.float32)
          for k, s in shapes.items()}


def values(sums) -> Dict[str, float]:
  """Host values of one model's sums: every metric whose sums are there
  (NaN over no example), and "count"."""
  count, out = float(sums["count"]), {}
  for m in METRICS:
    try:
      value = m.value(sums, count or 1.0)
    except KeyError:  # A metric of other splits: its sums are not here.
      continue
    out[m.name] = value if count else float("nan")
  return {**out, "count": count}

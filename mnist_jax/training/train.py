"""One model's training, the research core: the state, the loss, the
optimizer step, a scanned chunk of steps and evaluation, as pure functions of
explicit state.

The data stays on the device (uint8): nothing per step runs on the host. The
loop (loop.py) and the device layout (devices.py) wrap these functions from
outside; this module chooses no kernel, layout or folder.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

from flax.training import train_state
import jax
import jax.numpy as jnp

from mnist_jax.training import precision
from mnist_jax.training import metrics as metrics_lib

STREAMS = ("dropout", "augment", "data")  # The random streams after init.


class TrainState(train_state.TrainState):
  """flax's TrainState, the model's other variable collections (`model_state`,
  e.g. {"batch_stats": ...}) and the random streams (`keys`: STREAMS -> key)."""
  model_state: Any
  keys: Any

  @property
  def variables(self) -> Dict[str, Any]:
    """What `apply_fn` takes: {"params": ..., **model_state}."""
    return {"params": self.params, **self.model_state}


def create_train_state(key: jax.Array, model, tx, image_shape,
                       dtype: str = "float32") -> TrainState:
  """A fresh state for images [H, W, C]: `key` (the seed's) split once into
  init and STREAMS; the model computes in `dtype`, variables stay float32."""
  init_key, *streams = jax.random.split(key, 1 + len(STREAMS))
  variables = dict(model.init(init_key,
                              jnp.zeros((1, *image_shape), jnp.uint8)))
  params = variables.pop("params")
  return TrainState.create(
      apply_fn=precision.cast_apply(model.apply, dtype), params=params, tx=tx,
      model_state=variables, keys=dict(zip(STREAMS, streams)))


def cross_entropy(logits, labels, label_smoothing=0.0):
  """(plain [B], smoothed [B]) cross entropy of logits [B, K], labels [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    return nll, nll
  return nll, (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)


@dataclasses.dataclass(frozen=True)
class Loss:
  """A training loss. fn(forward, images [B, H, W, C], labels [B], key,
  **numbers) -> (the loss [], (logits [B, K], plain cross entropy [B] on
  `labels`, the model state)); forward(images) -> (logits, model state) is
  the model in training mode, key a fresh draw for the step. reads: the
  Config numbers it takes (a sweep gives each member its own)."""
  fn: Callable
  reads: Tuple[str, ...] = ()


def _smoothed(forward, images, labels, key, label_smoothing=0.0):
  del key  # Draws nothing.
  logits, model_state = forward(images)
  nll, smoothed = cross_entropy(logits, labels, label_smoothing)
  return smoothed.mean(), (logits, nll, model_state)


LOSSES = {"cross_entropy": Loss(_smoothed, reads=("label_smoothing",))}


def train_step(state: TrainState, batch: Dict[str, jax.Array], *,
               loss: Loss = LOSSES["cross_entropy"],
               augment: Optional[Callable] = None,
               axis_name: Optional[str] = None, **numbers):
  """One optimizer step on batch {"image" [B, H, W, C] uint8, "label" [B]};
  returns (state, the batch's metric sums). `loss` with its `numbers` (e.g.
  label_smoothing). Under pmap (`axis_name`) each device draws its own dropout
  masks and the gradients are averaged."""
  keys = [jax.random.fold_in(state.keys[s], state.step)
          for s in ("dropout", "augment")]
  if axis_name is not None:
    keys = [jax.random.fold_in(k, jax.lax.axis_index(axis_name)) for k in keys]
  dropout, aug = keys
  images = batch["image"] if augment is None else augment(aug, batch["image"])

  def loss_fn(params):
    forward = functools.partial(
        state.apply_fn, {"params": params, **state.model_state}, train=True,
        rngs={"dropout": dropout}, mutable=list(state.model_state))
    return loss.fn(forward, images, batch["label"],
                   jax.random.fold_in(aug, 1), **numbers)

  grads, (logits, nll, model_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  if axis_name is not None:
    grads, model_state = jax.lax.pmean((grads, model_state), axis_name)
  state = state.apply_gradients(grads=grads, model_state=model_state)
  sums = metrics_lib.batch_sums(logits, batch["label"], nll)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return state, sums


def epoch_order(state: TrainState, epoch, *, n: int, steps: int,
                batch_size: int):
  """The epoch's batches of example indices [steps, batch_size] of n: a
  function of the data key and the epoch only, so a resumed run replays them."""
  key = jax.random.fold_in(state.keys["data"], epoch)
  return jax.random.permutation(key, n)[:steps * batch_size].reshape(
      steps, batch_size)


def _batches(images, labels, idx, axis_name, batch_sharding):
  """(S batches of the examples idx [S, B] of a split, the indices): under
  pmap this device's columns; images split over the mesh by batch_sharding."""
  if axis_name is not None:
    part = idx.shape[1] // jax.lax.psum(1, axis_name)
    idx = jax.lax.dynamic_slice_in_dim(
        idx, jax.lax.axis_index(axis_name) * part, part, axis=1)
  taken = jnp.minimum(idx, len(labels) - 1)
  batch = {"image": images[taken], "label": labels[taken]}
  if batch_sharding is not None:
    batch["image"] = jax.lax.with_sharding_constraint(batch["image"],
                                                      batch_sharding)
  return batch, idx


def train_chunk(state: TrainState, sums, order, images, labels, first,
                count, *, axis_name=None, batch_sharding=None, **step_args):
  """Steps first .. first + count - 1 of the epoch's `order` [steps, B]
  (`epoch_order`) on the training split (images [N, H, W, C] uint8, labels
  [N]), one after another in one compiled loop: `count` is traced, so one
  program runs any number of them. Each step adds its batch's metric sums
  to `sums` in order, so the epoch's sums do not depend on where it is cut
  into chunks. step_args: train_step's (loss, its numbers, augment).
  Returns (state, sums, the first step whose loss was not finite or -1)."""
  start, diverged = state.step, ~_finite(state.params)

  def step(i, carry):
    state, sums, bad = carry
    batch, _ = _batches(images, labels, jax.lax.dynamic_slice_in_dim(
        order, first + i, 1), axis_name, batch_sharding)
    batch = {"image": batch["image"][0], "label": batch["label"][0]}
    state, step_sums = train_step(state, batch, axis_name=axis_name,
                                  **step_args)
    bad = jnp.where((bad < 0) & ~jnp.isfinite(step_sums["loss"]), state.step,
                    bad)
    return state, jax.tree.map(jnp.add, sums, step_sums), bad

  state, sums, first_bad = jax.lax.fori_loop(
      0, count, step, (state, sums, jnp.asarray(-1, jnp.result_type(start))))
  # A member that diverged before (its step at the start), or whose last
  # update overflowed with a finite loss (its step now).
  first_bad = jnp.where(diverged, start, jnp.where(
      (first_bad < 0) & ~_finite(state.params), state.step, first_bad))
  return state, sums, first_bad.astype(jnp.int32)


def _finite(params) -> jax.Array:
  return jnp.all(jnp.array([jnp.isfinite(p).all()
                            for p in jax.tree.leaves(params)]))


def logits_of(apply_fn: Callable, variables, batches) -> jax.Array:
  """The model in evaluation mode on batches of images [S, B, H, W, C]:
  logits [S, B, K], one batch at a time. The one way anything evaluates a
  model: the loop's metrics, the report, the analyses, predict and the page."""
  return jax.lax.map(functools.partial(apply_fn, variables, train=False),
                     batches)


def evaluate(state: TrainState, images, labels, *, batch_size: int,
             axis_name=None, batch_sharding=None, with_logits=False):
  """Metric sums of `state` on every example of a split (images [N, H, W, C]
  uint8, labels [N]): the last batch is padded and masked, never dropped.
  with_logits: (sums, the logits [S * B, K] of all S batches, padding last),
  so that nothing evaluates the split again."""
  n, count = len(labels), -(-len(labels) // batch_size)
  batch, idx = _batches(
      images, labels, jnp.arange(count * batch_size).reshape(count, batch_size),
      axis_name, batch_sharding)
  logits = logits_of(state.apply_fn, state.variables, batch["image"])
  k = logits.shape[-1]
  logits = logits.reshape(-1, k)
  labels = batch["label"].reshape(-1)
  nll, _ = cross_entropy(logits, labels)
  mask = (idx < n).reshape(-1).astype(jnp.float32)
  sums = metrics_lib.batch_sums(logits, labels, nll, mask, metrics_lib.EVAL)
  if axis_name is not None:  # pmap: this device's columns of each batch.
    sums = jax.lax.psum(sums, axis_name)
    logits = jax.lax.all_gather(logits.reshape(count, -1, k), axis_name,
                                axis=1, tiled=True).reshape(-1, k)
  return (sums, logits) if with_logits else sums

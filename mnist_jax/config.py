"""The run configuration: one flat, frozen dataclass shared by every module.

Every field is also a `launch.py` flag of the same name (flags default to "take
it from the preset"). Presets live in `mnist_jax/models/registry.py`.
"""

import dataclasses
import json
import math
from typing import Any, Optional, Tuple

from mnist_jax import datasets
from mnist_jax.errors import UserError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
DATASETS = tuple(datasets.DATASETS)
SEQUENCES = ("rows", "pixels", "permuted")
PADDINGS = ("VALID", "SAME")
PARALLEL = ("auto", "none", "pmap", "sharded")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of one run. Defaults are the common base every preset edits."""

  # What to train.
  model: str = "mlp"
  preset: str = "tuned"
  dataset: str = "mnist"
  # Data.
  data_dir: Optional[str] = None  # tfds data dir; None means tfds's default.
  mnist_dir: Optional[str] = None  # Folder with the four IDX files (offline).
  val_fraction: float = 0.1
  # Optimisation.
  epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 1000
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_epochs: float = 0.0
  momentum: float = 0.9  # sgd momentum (0 for plain sgd).
  rmsprop_decay: float = 0.9
  eps: float = 1e-7
  weight_decay: float = 0.0
  label_smoothing: float = 0.0
  grad_clip: float = 0.0  # Global-norm clip; 0 disables it.
  # Model shape (each model reads the fields it needs).
  hidden: int = 128  # Recurrent state size.
  num_layers: int = 1  # Stacked recurrent layers.
  bidirectional: bool = False
  mlp_hidden: Tuple[int, ...] = (512, 256)
  dropout: float = 0.0
  cnn_features: Tuple[int, ...] = (32, 64)
  cnn_dense: int = 128
  cnn_padding: str = "VALID"  # VALID or SAME convolutions.
  cnn_kernel: int = 3  # Square convolution kernel size.
  # Sequences (recurrent models): rows (28 x 28), pixels or permuted (784 x 1).
  sequence: str = "rows"
  permute_seed: int = 0  # Fixes the pixel order of --sequence=permuted.
  remat: bool = False  # Recompute each recurrent step in backprop (less memory).
  # On-device augmentation of training images (see mnist_jax/augment.py).
  augment: bool = False
  augment_shift: float = 2.0  # Max shift in pixels.
  augment_rotate: float = 10.0  # Max rotation in degrees.
  augment_scale: float = 0.1  # Max relative zoom in or out.
  augment_elastic: float = 0.0  # Elastic distortion strength (pixels); 0 = off.
  augment_elastic_sigma: float = 4.0  # Smoothness of the elastic field (pixels).
  # Run control.
  seed: int = 0
  num_seeds: int = 1  # Replicas trained at once (seeds seed .. seed+N-1).
  workdir: Optional[str] = None
  chunk_steps: int = 200  # Train steps per jitted scan; progress prints between.
  target_accuracy: float = 0.0  # Stop once validation (or test) accuracy >= it.
  checkpoint_every: int = 1  # Epochs between checkpoints (the last is always saved).
  keep_checkpoints: int = 3  # How many recent checkpoints to keep on disk.
  # Devices, hosts and precision (mnist_jax/parallel.py, precision.py).
  parallel: str = "auto"  # auto, none, pmap or sharded; auto: pmap on >1 device.
  dtype: str = "float32"  # Compute dtype, float32 or bfloat16; params stay float32.
  impl: str = "auto"  # auto, stock or fast: Flax modules or mnist_jax/kernels/.
  coordinator_address: Optional[str] = None  # host:port of process 0.
  num_processes: int = 0  # Processes of a multi-host run; 0: one, or the cluster's.
  process_id: int = -1  # This process's index; -1: from the cluster.

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def field_type(name: str) -> Any:
  """The Python type a flag for `name` parses to (int, float, bool, str, tuple)."""
  default = FIELDS[name].default
  if isinstance(default, bool):
    return bool
  if isinstance(default, tuple):
    return tuple
  if default is None:
    return str
  return type(default)


def from_dict(values: dict) -> Config:
  """Builds a Config from a (JSON) dict, turning lists back into tuples."""
  unknown = sorted(set(values) - set(FIELDS))
  if unknown:
    raise UserError(f"unknown config keys {unknown}; the known ones are in "
                    "mnist_jax/config.py")
  fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return Config(**fixed)


def validate(config: Config) -> Config:
  """Rejects settings no run can use, with a message that says what to pass."""
  c = config
  checks = [
      (c.epochs > 0, f"--epochs must be positive, got {c.epochs}"),
      (c.batch_size > 0, f"--batch_size must be positive, got {c.batch_size}"),
      (c.eval_batch_size > 0,
       f"--eval_batch_size must be positive, got {c.eval_batch_size}"),
      (c.learning_rate > 0 and math.isfinite(c.learning_rate),
       f"--learning_rate must be positive, got {c.learning_rate}"),
      (0.0 <= c.val_fraction < 1.0,
       f"--val_fraction must be in [0, 1), got {c.val_fraction}"),
      (c.optimizer in OPTIMIZERS,
       f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}"),
      (c.schedule in SCHEDULES,
       f"--schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}"),
      (c.dataset in DATASETS,
       f"--dataset must be one of {', '.join(DATASETS)}, got {c.dataset!r}"),
      (0.0 <= c.dropout < 1.0, f"--dropout must be in [0, 1), got {c.dropout}"),
      (0.0 <= c.label_smoothing < 1.0,
       f"--label_smoothing must be in [0, 1), got {c.label_smoothing}"),
      (c.weight_decay >= 0, f"--weight_decay must be >= 0, got {c.weight_decay}"),
      (c.grad_clip >= 0, f"--grad_clip must be >= 0 (0 disables), got {c.grad_clip}"),
      (c.hidden > 0, f"--hidden must be positive, got {c.hidden}"),
      (c.num_layers > 0, f"--num_layers must be positive, got {c.num_layers}"),
      (c.chunk_steps > 0, f"--chunk_steps must be positive, got {c.chunk_steps}"),
      (c.checkpoint_every > 0,
       f"--checkpoint_every must be a positive number of epochs, got "
       f"{c.checkpoint_every}"),
      (c.keep_checkpoints > 0,
       f"--keep_checkpoints must be positive, got {c.keep_checkpoints}"),
      (c.eps > 0, f"--eps must be positive, got {c.eps}"),
      (c.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {c.warmup_epochs}"),
      (0 <= c.seed < 2**32, f"--seed must be in [0, 2**32), got {c.seed}"),
      (0.0 <= c.momentum < 1.0, f"--momentum must be in [0, 1), got {c.momentum}"),
      (0.0 <= c.rmsprop_decay < 1.0,
       f"--rmsprop_decay must be in [0, 1), got {c.rmsprop_decay}"),
      (c.cnn_dense > 0, f"--cnn_dense must be positive, got {c.cnn_dense}"),
      (0.0 <= c.target_accuracy <= 1.0,
       f"--target_accuracy must be a fraction in [0, 1], got {c.target_accuracy}"),
      (c.sequence in SEQUENCES,
       f"--sequence must be one of {', '.join(SEQUENCES)}, got {c.sequence!r}"),
      (c.cnn_padding in PADDINGS,
       f"--cnn_padding must be VALID or SAME, got {c.cnn_padding!r}"),
      (c.num_seeds > 0, f"--num_seeds must be positive, got {c.num_seeds}"),
      (min(c.augment_shift, c.augment_rotate, c.augment_scale,
           c.augment_elastic) >= 0 and c.augment_scale < 1
       and c.augment_elastic_sigma > 0,
       "--augment_shift/rotate/elastic must be >= 0, --augment_scale in [0, 1) "
       "and --augment_elastic_sigma > 0"),
      (c.parallel in PARALLEL,
       f"--parallel must be one of {', '.join(PARALLEL)}, got {c.parallel!r}"),
      (c.dtype in DTYPES,
       f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}"),
      (c.num_processes >= 0,
       f"--num_processes must be >= 0 (0: one process), got {c.num_processes}"),
      (all(h > 0 for h in c.mlp_hidden),
       f"--mlp_hidden sizes must be positive, got {list(c.mlp_hidden)}"),
      (len(c.cnn_features) > 0 and all(f > 0 for f in c.cnn_features),
       f"--cnn_features must be positive sizes, got {list(c.cnn_features)}"),
      (c.cnn_kernel > 0, f"--cnn_kernel must be positive, got {c.cnn_kernel}"),
      (c.impl in ("auto", "stock", "fast"),
       f"--impl must be one of auto, stock, fast, got {c.impl!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)
  size = 28  # The CNN's image side after each conv and 2x2 pool.
  for _ in c.cnn_features:
    size = (size - (c.cnn_kernel - 1) * (c.cnn_padding == "VALID")) // 2
  if size < 1:
    raise UserError(
        f"{len(c.cnn_features)} conv-pool layers of --cnn_kernel={c.cnn_kernel} "
        f"--cnn_padding={c.cnn_padding} leave no pixels of a 28x28 image; pass "
        + ("a smaller --cnn_kernel, fewer --cnn_features or --cnn_padding=SAME"
           if c.cnn_padding == "VALID" else "fewer --cnn_features"))
  return c

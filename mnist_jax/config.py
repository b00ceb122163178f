"""The run configuration: one flat, frozen dataclass shared by every module.

Every field is also a `launch.py` flag of the same name, whose --help line is
the field's `help` metadata; an unset flag takes the preset's value, and the
preset's value falls back to the field's default. Presets live in
`mnist_jax/models/registry.py`.
"""

import dataclasses
import json
import math
from typing import Any, Optional, Tuple

from mnist_jax.data import datasets
from mnist_jax.errors import UserError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
DATASETS = tuple(datasets.DATASETS)
SEQUENCES = ("rows", "pixels", "permuted")
PADDINGS = ("VALID", "SAME")
PARALLEL = ("auto", "none", "pmap", "sharded")
DTYPES = ("float32", "bfloat16")
IMPLS = ("auto", "stock", "fast")


# The groups --help and the README's flag table list the flags in, in order.
MODEL, DATA, TRAINING, DEVICES, RUN_FOLDER, MODES = GROUPS = (
    "Model", "Data", "Training", "Devices and speed", "Run folder",
    "Modes and output")


def _field(default: Any, help_text: str, group: str,
           preset: bool = False) -> Any:
  """A Config field carrying its flag's one-line help and its help group.

  `help_text` is the flag's --help line and the README's flag table entry
  (tests/test_flags.py holds both to it); launch.py appends the default.
  `group` (one of GROUPS) is the heading it is listed under. `preset` marks
  the fields some preset in models/registry.py sets, whose default then
  depends on --model and --preset.
  """
  return dataclasses.field(
      default=default,
      metadata={"help": help_text, "group": group, "preset": preset})


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of one run. Defaults are the common base every preset edits."""

  # What to train (each field's group says where --help lists it).
  model: str = _field(
      "mlp", "Architecture to train: linear, mlp, cnn, rnn, lstm or gru", MODEL)
  preset: str = _field(
      "tuned", "Settings for --model: seed (its notebook), tuned, best (most "
      "accurate), fast (cnn), pixels or permuted (rnn, lstm, gru)", MODEL)
  dataset: str = _field(
      "mnist", "Which dataset: mnist, fashion_mnist or kmnist", DATA)
  # Data.
  data_dir: Optional[str] = _field(
      None, "tfds data folder the dataset is prepared and cached in; "
      "unset means $TFDS_DATA_DIR or ~/tensorflow_datasets", DATA)
  mnist_dir: Optional[str] = _field(
      None, "Folder with the four IDX files (.gz or not) to prepare the "
      "dataset from, without network", DATA)
  val_fraction: float = _field(
      0.1, "Fraction of the training split held out for validation (its "
      "last examples), in [0, 1)", DATA, preset=True)
  # Optimisation.
  epochs: int = _field(10, "Training epochs", TRAINING, preset=True)
  batch_size: int = _field(
      128, "Global batch size, split over the devices", TRAINING, preset=True)
  eval_batch_size: int = _field(
      1000, "Evaluation batch size; the last batch is padded and masked",
      DEVICES)
  optimizer: str = _field(
      "adam", "The optimizer: adam, adamw, rmsprop or sgd", TRAINING,
      preset=True)
  learning_rate: float = _field(
      1e-3, "Peak learning rate", TRAINING, preset=True)
  schedule: str = _field(
      "constant", "Learning-rate schedule: constant, cosine, warmup_cosine "
      "or onecycle", TRAINING, preset=True)
  warmup_epochs: float = _field(
      0.0, "Linear warmup in epochs, for --schedule=warmup_cosine", TRAINING,
      preset=True)
  momentum: float = _field(0.9, "SGD momentum; 0 for plain SGD", TRAINING)
  rmsprop_decay: float = _field(
      0.9, "RMSprop decay of the squared-gradient average", TRAINING,
      preset=True)
  eps: float = _field(
      1e-7, "RMSprop epsilon, added outside the square root as in Keras",
      TRAINING, preset=True)
  weight_decay: float = _field(
      0.0, "Weight decay of kernels, not biases: decoupled for adamw, added "
      "to the gradient otherwise", TRAINING)
  label_smoothing: float = _field(
      0.0, "Label smoothing of the training loss; reported losses are plain "
      "cross entropy", TRAINING, preset=True)
  grad_clip: float = _field(
      0.0, "Global-norm gradient clipping threshold; 0 disables it",
      TRAINING, preset=True)
  # Model shape (each model reads the fields it needs).
  hidden: int = _field(
      128, "State size of the recurrent layers", MODEL, preset=True)
  num_layers: int = _field(1, "Stacked recurrent layers", MODEL, preset=True)
  bidirectional: bool = _field(
      False, "Recurrent layers also read the sequence backwards", MODEL)
  mlp_hidden: Tuple[int, ...] = _field(
      (512, 256), "MLP hidden layer sizes, comma-separated", MODEL, preset=True)
  dropout: float = _field(
      0.0, "Dropout rate: after each MLP hidden layer, around the CNN's dense "
      "layer, between recurrent layers and on the last state", MODEL,
      preset=True)
  cnn_features: Tuple[int, ...] = _field(
      (32, 64), "CNN conv widths, comma-separated; each conv is followed by a "
      "2x2 max-pool", MODEL, preset=True)
  cnn_kernel: int = _field(3, "CNN square kernel size", MODEL)
  cnn_dense: int = _field(
      128, "Width of the CNN's dense layer", MODEL, preset=True)
  cnn_padding: str = _field(
      "VALID", "CNN convolution padding: VALID or SAME", MODEL, preset=True)
  # Sequences (recurrent models).
  sequence: str = _field(
      "rows", "How recurrent models read an image: rows (28 steps of 28 "
      "pixels), pixels (784 steps of 1) or permuted (784, fixed random order)",
      MODEL, preset=True)
  permute_seed: int = _field(
      0, "Seed of the pixel order of --sequence=permuted", MODEL)
  remat: bool = _field(
      False, "Recompute each recurrent step in backprop: less memory, slower",
      DEVICES)
  # On-device augmentation of training images (mnist_jax/augment.py).
  augment: bool = _field(
      False, "Randomly shift, rotate and zoom each training image, on the "
      "device", DATA, preset=True)
  augment_shift: float = _field(
      2.0, "Largest --augment shift, in pixels along each axis", DATA,
      preset=True)
  augment_rotate: float = _field(
      10.0, "Largest --augment rotation, in degrees", DATA, preset=True)
  augment_scale: float = _field(
      0.1, "Largest --augment zoom in or out, relative, in [0, 1)", DATA,
      preset=True)
  augment_elastic: float = _field(
      0.0, "With --augment, elastic distortion strength in pixels; 0 turns it "
      "off", DATA)
  augment_elastic_sigma: float = _field(
      4.0, "Smoothness of the elastic distortion field, in pixels", DATA)
  # Run control.
  seed: int = _field(
      0, "Seed of initialisation, dropout and data order, in [0, 2**32)",
      TRAINING)
  num_seeds: int = _field(
      1, "Train N members (seeds seed .. seed+N-1) in one compiled program; "
      "with --sweep, N per grid point", TRAINING)
  sweep: str = _field(
      "", "Hyperparameter grid trained in the same program: NAME=V1,V2,...; "
      "repeat the flag or join with ; for several names", TRAINING)
  workdir: Optional[str] = _field(
      None, "Run folder, resumed if it holds a run; unset: the newest "
      "unfinished run of these settings under runs/, else a new "
      "runs/<model>-<timestamp>", RUN_FOLDER)
  chunk_steps: int = _field(
      200, "Train steps per compiled scan; progress prints and preemption "
      "checks run between chunks", DEVICES)
  target_accuracy: float = _field(
      0.0, "Stop once validation accuracy (test, without a validation split) "
      "reaches this fraction; 0 turns it off", TRAINING)
  checkpoint_every: int = _field(
      1, "Epochs between checkpoints; the last epoch is always saved",
      RUN_FOLDER)
  keep_checkpoints: int = _field(
      3, "How many recent checkpoints stay on disk", RUN_FOLDER)
  tensorboard: bool = _field(
      True, "Write TensorBoard event files into the run folder; "
      "--notensorboard skips them", RUN_FOLDER)
  # Devices, hosts, precision and kernels.
  parallel: str = _field(
      "auto", "Device layout: auto, none (one device), pmap or sharded (jit "
      "over a mesh); auto picks per host and model", DEVICES)
  dtype: str = _field(
      "float32", "Compute dtype: float32 or bfloat16; parameters and "
      "optimizer state stay float32", DEVICES)
  impl: str = _field(
      "auto", "Layer implementation: auto (fast kernels where measured "
      "faster), stock (Flax layers only) or fast (kernels wherever they fit)",
      DEVICES)
  coordinator_address: Optional[str] = _field(
      None, "host:port of process 0, for a multi-process run outside SLURM "
      "and TPU VMs", DEVICES)
  num_processes: int = _field(
      0, "Processes of a multi-process run; 0: one, or the cluster's count",
      DEVICES)
  process_id: int = _field(
      -1, "This process's index, 0 to N-1; -1: from the cluster", DEVICES)

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def value_text(value) -> str:
  """A setting as it is typed on the command line (unset for None)."""
  if value is None or value == [] or value == "":
    return "unset"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


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
      (c.cnn_kernel > 0, f"--cnn_kernel must be positive, got {c.cnn_kernel}"),
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
      (c.impl in IMPLS,
       f"--impl must be one of {', '.join(IMPLS)}, got {c.impl!r}"),
      (c.num_processes >= 0,
       f"--num_processes must be >= 0 (0: one process), got {c.num_processes}"),
      (all(h > 0 for h in c.mlp_hidden),
       f"--mlp_hidden sizes must be positive, got {list(c.mlp_hidden)}"),
      (len(c.cnn_features) > 0 and all(f > 0 for f in c.cnn_features),
       f"--cnn_features must be positive sizes, got {list(c.cnn_features)}"),
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

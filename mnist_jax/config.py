"""The run configuration: one flat, frozen dataclass shared by every module.

Each field is a `launch.py` flag; unset, it takes the preset's value, else the
field's default. A model's own settings are declared by the model (`Setting`)
and held by its Configs only, read as attributes (`config.mlp_hidden`).
"""

import dataclasses
import json
import math
from typing import Any, List, Optional, Tuple

from mnist_jax.data import datasets
from mnist_jax.errors import UserError
from mnist_jax import optim

OPTIMIZERS = tuple(optim.OPTIMIZERS)
SCHEDULES = tuple(optim.SCHEDULES)
DATASETS = tuple(datasets.DATASETS)
PARALLEL = ("auto", "none", "sharded", "pmap")
DTYPES = ("float32", "bfloat16")
IMPLS = ("auto", "stock", "fast")

# The groups --help and docs/flags.md list the flags in, in order.
MODEL, DATA, TRAINING, DEVICES, RUN_FOLDER, MODES = GROUPS = (
    "Model", "Data", "Training", "Devices and speed", "Run folder",
    "Modes and output")

# Caps of counts and sizes with no natural bound, so that every value a run
# accepts is one it can compute with (JAX counts steps in int32). A learning
# rate, decay, clip or epsilon need only be finite: a huge one diverges.
INT32_MAX = 2**31 - 1
MAX_EPOCHS = 10**6
MAX_WIDTH = 2**24  # Units of one layer: a 784 x 2**24 kernel alone is 53 GB.
MAX_LAYERS = 100  # Stacked recurrent layers.
MAX_MEMBERS = 10**4  # Members (seeds x sweep points) of one program.
MAX_PROCESSES = 2**16
IMAGE_SIDE = 28  # Pixels; shifts, kernels and distortions beyond it are void.


def _number(value) -> str:
  """A bound as typed: 2**32 and 2**31 - 1 for the large powers of two."""
  if isinstance(value, int) and value >= 2**16:
    for offset, text in ((0, ""), (1, " - 1")):
      if (value + offset) & (value + offset - 1) == 0:
        return f"2**{(value + offset).bit_length() - 1}{text}"
  return value_text(value)


def _finite(value) -> bool:
  return isinstance(value, int) or math.isfinite(value)  # Ints of any size.


@dataclasses.dataclass(frozen=True)
class Range:
  """The finite values from `low` to `high` a numeric setting accepts; `cap`:
  `high` is a sanity cap, so messages name the bound crossed, not the range."""
  low: float
  high: float
  low_open: bool = False
  high_open: bool = False
  cap: bool = True

  def contains(self, value) -> bool:
    if not _finite(value):
      return False
    above_low = value > self.low if self.low_open else value >= self.low
    below_high = value < self.high if self.high_open else value <= self.high
    return above_low and below_high

  def text(self, value) -> str:
    """What the value must be, for a message about `value` (outside)."""
    if not _finite(value):
      return "a finite number"
    if not self.cap:
      return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
              f"{_number(self.high)}{')' if self.high_open else ']'}")
    if value > self.low or (value == self.low and not self.low_open):
      return f"{'below' if self.high_open else 'at most'} {_number(self.high)}"
    if (self.low == 0 and self.low_open
        or self.low == 1 and isinstance(self.low, int)):
      return "positive"
    return f"{'>' if self.low_open else '>='} {_number(self.low)}"


def _field(default: Any, help_text: str, group: str, preset: bool = False,
           valid: Optional[Range] = None, choices: Tuple[str, ...] = ()) -> Any:
  """A Config field with its flag's --help line, GROUPS heading, whether a
  preset sets it, and the range or text choices it accepts."""
  return dataclasses.field(
      default=default, metadata={"help": help_text, "group": group,
                                 "preset": preset, "valid": valid,
                                 "choices": choices})


def _positive(high=math.inf) -> Range:
  """1 .. high for a count (int high), else any finite number > 0."""
  return Range(1, high) if isinstance(high, int) else (
      Range(0.0, high, low_open=True))


def _nonnegative(high=math.inf) -> Range:
  return Range(0 if isinstance(high, int) else 0.0, high)


def _fraction(high_open: bool = True) -> Range:
  return Range(0.0, 1.0, high_open=high_open, cap=False)


@dataclasses.dataclass(frozen=True)
class Setting:
  """A model's own setting: the Flax module `attribute` it sets, with its
  flag's `help`, `group`, `valid` range or text `choices`, and `default`."""
  attribute: str
  help: str
  group: str = MODEL
  valid: Optional[Range] = None
  choices: Tuple[str, ...] = ()
  default: Any = None

  def flag(self) -> tuple:
    return self.help, self.group, self.valid, self.choices


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of one run; the defaults are the base every preset edits."""

  model: str = _field("mlp", "Architecture to train", MODEL)  # See launch.py.
  preset: str = _field(
      "tuned", "Named settings for --model (seed: its notebook's; tuned: "
      "trained well; best: the most accurate found)", MODEL)
  dataset: str = _field("mnist", f"Which dataset: {', '.join(DATASETS)}", DATA,
                        choices=datasets.DATASETS)
  data_dir: Optional[str] = _field(
      None, "tfds data folder the dataset is prepared and cached in; "
      "unset means $TFDS_DATA_DIR or ~/tensorflow_datasets", DATA)
  mnist_dir: Optional[str] = _field(
      None, "Folder with the four IDX files (.gz or not) to prepare the "
      "dataset from, without network", DATA)
  val_fraction: float = _field(
      0.1, "Fraction of the training split held out for validation (its "
      "last examples), in [0, 1)", DATA, preset=True, valid=_fraction())
  epochs: int = _field(10, "Training epochs", TRAINING, preset=True,
                       valid=_positive(MAX_EPOCHS))
  batch_size: int = _field(
      128, "Global batch size, split over the devices", TRAINING, preset=True,
      valid=_positive(INT32_MAX))
  eval_batch_size: int = _field(
      1000, "Evaluation batch size; the last batch is padded and masked",
      DEVICES, valid=_positive(INT32_MAX))
  optimizer: str = _field("adam", f"The optimizer: {', '.join(OPTIMIZERS)}",
                          TRAINING, preset=True, choices=optim.OPTIMIZERS)
  learning_rate: float = _field(1e-3, "Peak learning rate", TRAINING,
                                preset=True, valid=_positive())
  schedule: str = _field("constant", "Learning-rate schedule: "
                         f"{', '.join(SCHEDULES)}", TRAINING, preset=True,
                         choices=optim.SCHEDULES)
  warmup_epochs: float = _field(
      0.0, "Linear warmup in epochs, for --schedule=warmup_cosine", TRAINING,
      preset=True, valid=_nonnegative(float(MAX_EPOCHS)))
  momentum: float = _field(0.9, "SGD momentum; 0 for plain SGD", TRAINING,
                           valid=_fraction())
  rmsprop_decay: float = _field(
      0.9, "RMSprop decay of the squared-gradient average", TRAINING,
      preset=True, valid=_fraction())
  eps: float = _field(
      1e-7, "RMSprop epsilon, added outside the square root as in Keras",
      TRAINING, preset=True, valid=_positive())
  weight_decay: float = _field(
      0.0, "Weight decay of kernels, not biases: decoupled for adamw, added "
      "to the gradient otherwise", TRAINING, valid=_nonnegative())
  label_smoothing: float = _field(
      0.0, "Label smoothing of the training loss; reported losses are plain "
      "cross entropy", TRAINING, preset=True, valid=_fraction())
  grad_clip: float = _field(
      0.0, "Global-norm gradient clipping threshold; 0 disables it",
      TRAINING, preset=True, valid=_nonnegative())
  augment: bool = _field(
      False, "Randomly shift, rotate and zoom each training image, on the "
      "device", DATA, preset=True)
  augment_shift: float = _field(
      2.0, "Largest --augment shift, in pixels along each axis", DATA,
      preset=True, valid=Range(0.0, IMAGE_SIDE, cap=False))
  augment_rotate: float = _field(
      10.0, "Largest --augment rotation, in degrees", DATA, preset=True,
      valid=Range(0.0, 180, cap=False))
  augment_scale: float = _field(
      0.1, "Largest --augment zoom in or out, relative, in [0, 1)", DATA,
      preset=True, valid=_fraction())
  augment_elastic: float = _field(
      0.0, "With --augment, elastic distortion strength in pixels; 0 turns it "
      "off", DATA, valid=Range(0.0, IMAGE_SIDE, cap=False))
  augment_elastic_sigma: float = _field(
      4.0, "Smoothness of the elastic distortion field, in pixels", DATA,
      valid=Range(0.0, IMAGE_SIDE, low_open=True, cap=False))
  seed: int = _field(
      0, "Seed of initialisation, dropout and data order, in [0, 2**32)",
      TRAINING, valid=Range(0, 2**32, high_open=True, cap=False))
  num_seeds: int = _field(
      1, "Train N members (seeds seed .. seed+N-1) in one compiled program; "
      "with --sweep, N per grid point", TRAINING, valid=_positive(MAX_MEMBERS))
  sweep: str = _field(
      "", "Hyperparameter grid trained in the same program: NAME=V1,V2,...; "
      "repeat the flag or join with ; for several names", TRAINING)
  workdir: Optional[str] = _field(
      None, "Run folder, resumed if it holds a run; unset: the newest "
      "unfinished run of these settings under runs/, else a new "
      "runs/<model>-<timestamp>", RUN_FOLDER)
  chunk_steps: int = _field(
      200, "Train steps per compiled scan; progress prints and preemption "
      "checks run between chunks", DEVICES, valid=_positive(INT32_MAX))
  target_accuracy: float = _field(
      0.0, "Stop once validation accuracy reaches this fraction (needs "
      "--val_fraction > 0); 0 turns it off", TRAINING, valid=_fraction(False))
  checkpoint_every: int = _field(
      1, "Epochs between checkpoints; the last epoch is always saved",
      RUN_FOLDER, valid=_positive(MAX_EPOCHS))
  keep_checkpoints: int = _field(
      3, "How many recent checkpoints stay on disk", RUN_FOLDER,
      valid=_positive(INT32_MAX))
  tensorboard: bool = _field(
      True, "Write TensorBoard event files into the run folder; "
      "--notensorboard skips them", RUN_FOLDER)
  parallel: str = _field(
      "auto", "Device layout: auto, none (one device), sharded (one jit over a "
      "mesh, one device's run to float rounding) or pmap (per-device dropout "
      "masks)", DEVICES, choices=PARALLEL)
  dtype: str = _field(
      "float32", "Compute dtype: float32 or bfloat16; parameters and "
      "optimizer state stay float32", DEVICES, choices=DTYPES)
  impl: str = _field(
      "auto", "Layers: auto (a fast kernel where measured faster), stock (Flax "
      "layers only) or fast; a kernel runs only if it computes the stock "
      "layers", DEVICES, choices=IMPLS)
  coordinator_address: Optional[str] = _field(
      None, "host:port of process 0, for a multi-process run outside SLURM "
      "and TPU VMs", DEVICES)
  num_processes: int = _field(
      0, "Processes of a multi-process run; 0: one, or the cluster's count",
      DEVICES, valid=_nonnegative(MAX_PROCESSES))
  process_id: int = _field(
      -1, "This process's index, 0 to N-1; -1: from the cluster", DEVICES,
      valid=Range(-1, MAX_PROCESSES - 1))
  report: bool = _field(
      True, "Write report.md and its figures as the run ends; --noreport "
      "leaves them to --mode=report (quicker scripted runs)", MODES)
  analyses: bool = _field(
      True, "Write the analyses of what the model learned (reading, "
      "robustness, attributions, features, calibration) with the report", MODES)
  # The model's own settings (models/registry.py declares them) as (name,
  # value) pairs, every one of them: models.get_config fills. No flag.
  model_settings: Tuple[Tuple[str, Any], ...] = ()

  def __getattr__(self, name: str) -> Any:
    """A setting of the model (`config.mlp_hidden`); fields are found first."""
    if name.startswith("__") or name == "model_settings":
      raise AttributeError(name)
    for key, value in self.model_settings:
      if key == name:
        return value
    raise AttributeError(f"--model={self.__dict__.get('model')} has no "
                         f"setting {name!r}")

  def replace(self, **changes) -> "Config":
    """This config with `changes` (fields or the model's own settings); a new
    --model keeps none of the old model's settings (models.get_config fills)."""
    fields = {k: v for k, v in changes.items() if k in FIELDS}
    kept = (dict(self.model_settings)
            if fields.get("model", self.model) == self.model else {})
    for name in (k for k in changes if k not in FIELDS):
      if name not in kept:
        raise UserError(f"--{name} is no setting of --model={self.model}; "
                        "leave it out (python launch.py --help lists each "
                        "model's)")
      kept[name] = changes[name]
    return dataclasses.replace(self, **fields,
                               model_settings=tuple(kept.items()))

  def to_dict(self) -> dict:
    """config.json's flat record: every field, then the model's settings."""
    return {**{name: getattr(self, name) for name in FIELDS},
            **dict(self.model_settings)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELDS = {f.name: f for f in dataclasses.fields(Config)
          if f.name != "model_settings"}


def field(name: str) -> Setting:
  """Field `name`'s declaration, as a model's own setting is declared."""
  meta = FIELDS[name].metadata
  return Setting(name, meta["help"], meta["group"], meta["valid"],
                 meta["choices"], FIELDS[name].default)


def ranged_fields() -> List[str]:
  """The names of the fields with a declared range: the numeric settings."""
  return [n for n, f in FIELDS.items() if f.metadata["valid"] is not None]


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


def value_error(name: str, declared: Setting, value,
                flag: Optional[str] = None) -> Optional[str]:
  """Why `value` is not one setting `name` (`declared`) accepts, or None.
  A tuple is checked size by size. flag: how it was given (`--name`)."""
  flag, valid = flag or f"--{name}", declared.valid
  if declared.choices and value not in declared.choices:
    return (f"{flag} must be one of {', '.join(declared.choices)}, got "
            f"{value!r}")
  if valid is None:
    return None
  if isinstance(value, tuple):
    if not value:
      return (f"{flag} lists no sizes; pass at least one, e.g. {flag}="
              f"{value_text(declared.default) or 64}")
    bad = next((v for v in value if not valid.contains(v)), None)
    return None if bad is None else (f"{flag} sizes must be {valid.text(bad)}, "
                                     f"got {value_text(value) or 'none'}")
  return None if valid.contains(value) else (
      f"{flag} must be {valid.text(value)}, got {value_text(value)}")


def validate(config: Config) -> Config:
  """Rejects fields no run can use, with a message that says what to pass
  (the model's own settings: models.validate)."""
  c = config
  for name in FIELDS:
    message = value_error(name, field(name), getattr(c, name))
    if message:
      raise UserError(message)
  if c.target_accuracy and not c.val_fraction > 0:
    raise UserError(
        "--target_accuracy stops on validation accuracy, and --val_fraction=0 "
        "holds out none; pass e.g. --val_fraction=0.1 (test accuracy never "
        "decides when a run stops)")
  if c.seed + c.num_seeds > 2**32:
    raise UserError(
        f"--seed={c.seed} --num_seeds={c.num_seeds} would use seeds up to "
        f"{c.seed + c.num_seeds - 1}, past 2**32 - 1; pass a smaller --seed")
  return c

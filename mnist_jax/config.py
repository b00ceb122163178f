"""The run configuration: one flat, frozen dataclass shared by every module.
Each field is a `launch.py` flag declared once here (`_field`: its help,
--help group, default and the absl parser that reads and bounds it); unset,
a flag takes the preset's value, else the default. A model's own settings
(`Setting`) are its Configs' only, read as attributes (`config.mlp_hidden`).
Values given in Python are read by the flags' own parsers (`parse`)."""

import dataclasses
import json
import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from absl import flags

from mnist_jax.data import datasets
from mnist_jax.errors import BadFlag, UserError
from mnist_jax import optim
from mnist_jax.training import train

# The groups --help and docs/flags.md list the flags in, in order: each is
# the absl module_name its flags are defined with.
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


def typed(value) -> str:
  """A value as its flag is typed: a list comma-joined, a bool lower case."""
  if isinstance(value, (tuple, list)):
    return ",".join(map(str, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def value_text(value) -> str:
  """A setting as it is typed on the command line (unset for None)."""
  if value is None or value == [] or value == "":
    return "unset"
  return f"{value:g}" if isinstance(value, float) else typed(value)


class Number(flags.FloatParser):
  """absl's float parser for the finite numbers from `low` to `high`, an open
  end excluded, so that its refusal names the interval ("in (0, inf)")."""

  def __init__(self, low: float = 0.0, high: float = math.inf,
               open_low: bool = False, open_high: bool = False):
    super().__init__(low, high)
    self.open_ends = (open_low, open_high)
    self.syntactic_help = (
        f"a finite number in {'[('[open_low]}{value_text(low)}, "
        f"{value_text(high)}{'])'[open_high or high == math.inf]}")

  def is_outside_bounds(self, val: float) -> bool:
    return (not math.isfinite(val) or super().is_outside_bounds(val)
            or (self.open_ends[0] and val == self.lower_bound)
            or (self.open_ends[1] and val == self.upper_bound))


class Sizes(flags.ListParser):
  """Layer sizes: absl's list parser, then its integer parser for each, from 1
  to MAX_WIDTH; at least one."""

  def __init__(self):
    super().__init__()
    self.syntactic_help = ("comma-separated integers in the range "
                           f"[1, {MAX_WIDTH}]")

  # absl types its list parser's values as strings; these are ints.
  def parse(self, argument) -> Tuple[int, ...]:  # type: ignore[override]
    try:
      sizes = tuple(map(WIDTH.parse, super().parse(
          list(argument) if isinstance(argument, tuple) else argument)))
    except ValueError:
      sizes = ()
    if not sizes:
      raise ValueError(f"it takes {self.syntactic_help}, e.g. 512,256")
    return sizes


class Choice(flags.EnumParser):
  """absl's enum parser over the keys of a table as they are when it parses,
  so that an entry added to the table (a new optimizer) is a choice."""

  def __init__(self, table: dict):
    super().__init__(list(table))
    self.table = table

  def parse(self, argument: str) -> str:
    self.enum_values = list(self.table)
    return super().parse(argument)


COUNT = flags.IntegerParser(1, INT32_MAX)  # Batch sizes, steps.
WIDTH = flags.IntegerParser(1, MAX_WIDTH)  # Units of a layer.
SEED = flags.IntegerParser(0, 2**32 - 1)
POSITIVE = Number(0, open_low=True)  # A rate or an epsilon.
FRACTION = Number(0, 1, open_high=True)


@dataclasses.dataclass(frozen=True)
class Setting:
  """A setting's declaration: the Flax module `attribute` a model's own
  setting sets, its flag's `help` and --help `group`, the absl `parser` that
  reads and bounds it (None: by its `default`, a boolean or a string), and
  the `models` that declare it (registry.register adds them)."""
  attribute: str
  help: str
  group: str = MODEL
  parser: Optional[flags.ArgumentParser] = None
  default: Any = None
  models: Tuple[str, ...] = ()

  def reader(self) -> flags.ArgumentParser:
    """The absl parser its flag reads a value with."""
    return self.parser or (flags.BooleanParser() if isinstance(
        self.default, bool) else flags.ArgumentParser())


def _field(default: Any, help_text: str, group: str,
           parser: Optional[flags.ArgumentParser] = None) -> Any:
  """A Config field, declared as a Setting (its flag's help, group, parser)."""
  return dataclasses.field(default=default, metadata={
      "setting": Setting("", help_text, group, parser, default)})


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of one run; the defaults are the base every preset edits."""

  model: str = _field("mlp", "Architecture to train", MODEL)  # See launch.py.
  preset: str = _field(
      "tuned", "Named settings for --model (seed: its notebook's; tuned: "
      "trained well; best: the most accurate found)", MODEL)
  dataset: str = _field("mnist", "Which dataset: "
                        f"{', '.join(datasets.DATASETS)}", DATA,
                        Choice(datasets.DATASETS))
  data_dir: Optional[str] = _field(
      None, "tfds data folder the dataset is prepared and cached in; "
      "unset means $TFDS_DATA_DIR or ~/tensorflow_datasets", DATA)
  mnist_dir: Optional[str] = _field(
      None, "Folder with the four IDX files (.gz or not) to prepare the "
      "dataset from, without network", DATA)
  val_fraction: float = _field(
      0.1, "Fraction of the training split held out for validation (its "
      "last examples), in [0, 1)", DATA, FRACTION)
  epochs: int = _field(10, "Training epochs", TRAINING,
                       flags.IntegerParser(1, MAX_EPOCHS))
  batch_size: int = _field(
      128, "Global batch size, split over the devices", TRAINING, COUNT)
  eval_batch_size: int = _field(1000, "Evaluation batch size; the last batch "
                                "is padded and masked", DEVICES, COUNT)
  optimizer: str = _field("adam", "The optimizer: "
                          f"{', '.join(optim.OPTIMIZERS)}",
                          TRAINING, Choice(optim.OPTIMIZERS))
  learning_rate: float = _field(1e-3, "Peak learning rate", TRAINING, POSITIVE)
  schedule: str = _field("constant", "Learning-rate schedule: "
                         f"{', '.join(optim.SCHEDULES)}", TRAINING,
                         Choice(optim.SCHEDULES))
  warmup_epochs: float = _field(
      0.0, "Linear warmup in epochs, for --schedule=warmup_cosine", TRAINING,
      Number(0, MAX_EPOCHS))
  momentum: float = _field(0.9, "SGD momentum; 0 for plain SGD", TRAINING,
                           FRACTION)
  rmsprop_decay: float = _field(0.9, "RMSprop decay of the squared-gradient "
                                "average", TRAINING, FRACTION)
  eps: float = _field(1e-7, "RMSprop epsilon, added outside the square root as "
                      "in Keras", TRAINING, POSITIVE)
  weight_decay: float = _field(
      0.0, "Weight decay of kernels, not biases: decoupled for adamw, added "
      "to the gradient otherwise", TRAINING, Number())
  loss: str = _field("cross_entropy", "Training loss: "
                     f"{', '.join(train.LOSSES)}", TRAINING,
                     Choice(train.LOSSES))
  label_smoothing: float = _field(
      0.0, "Label smoothing of the training loss; reported losses are plain "
      "cross entropy", TRAINING, FRACTION)
  grad_clip: float = _field(0.0, "Global-norm gradient clipping threshold; "
                            "0 disables it", TRAINING, Number())
  augment: bool = _field(False, "Randomly shift, rotate and zoom each training "
                         "image, on the device", DATA)
  augment_shift: float = _field(2.0, "Largest --augment shift, in pixels along "
                                "each axis", DATA, Number(0, IMAGE_SIDE))
  augment_rotate: float = _field(
      10.0, "Largest --augment rotation, in degrees", DATA, Number(0, 180))
  augment_scale: float = _field(0.1, "Largest --augment zoom in or out, "
                                "relative, in [0, 1)", DATA, FRACTION)
  augment_elastic: float = _field(
      0.0, "With --augment, elastic distortion strength, Simard et al.'s alpha "
      "(34 at sigma 4: about 1.3 px each axis, root mean square); 0 is off",
      DATA, Number(0, 100))
  augment_elastic_sigma: float = _field(
      4.0, "Smoothness of the elastic distortion field, in pixels", DATA,
      Number(0, IMAGE_SIDE, open_low=True))
  seed: int = _field(0, "Seed of initialisation, dropout and data order, in "
                     "[0, 2**32)", TRAINING, SEED)
  num_seeds: int = _field(
      1, "Train N members (seeds seed .. seed+N-1) in one compiled program; "
      "with --sweep, N per grid point", TRAINING,
      flags.IntegerParser(1, MAX_MEMBERS))
  sweep: str = _field(
      "", "Hyperparameter grid trained in the same program: NAME=V1,V2,...; "
      "repeat the flag or join with ; for several names", TRAINING)
  workdir: Optional[str] = _field(
      None, "Run folder, resumed if it holds a run; unset: the newest "
      "unfinished run of these settings under runs/, else a new "
      "runs/<model>-<timestamp>", RUN_FOLDER)
  chunk_steps: int = _field(200, "Most train steps per chunk (a chunk: about "
                            "2 s of steps in one compiled loop; progress and "
                            "a stop come between chunks)", DEVICES, COUNT)
  target_accuracy: float = _field(
      0.0, "Stop once validation accuracy reaches this fraction (needs "
      "--val_fraction > 0); 0 turns it off", TRAINING, Number(0, 1))
  checkpoint_every: int = _field(
      1, "Epochs between checkpoints; the last epoch is always saved",
      RUN_FOLDER, flags.IntegerParser(1, MAX_EPOCHS))
  keep_checkpoints: int = _field(
      3, "How many recent checkpoints stay on disk", RUN_FOLDER, COUNT)
  tensorboard: bool = _field(True, "Write TensorBoard event files into the run "
                             "folder; --notensorboard skips them", RUN_FOLDER)
  parallel: str = _field(
      "auto", "Device layout: auto, none (one device), sharded (one jit over a "
      "mesh, one device's run to float rounding) or pmap (per-device dropout "
      "masks)", DEVICES, flags.EnumParser(["auto", "none", "sharded", "pmap"]))
  dtype: str = _field(
      "float32", "Compute dtype: float32 or bfloat16; parameters and optimizer "
      "state stay float32", DEVICES, flags.EnumParser(["float32", "bfloat16"]))
  impl: str = _field(
      "auto", "Layers: auto (a fast kernel where measured faster), stock (Flax "
      "layers only) or fast; a kernel runs only if it computes the stock "
      "layers", DEVICES, flags.EnumParser(["auto", "stock", "fast"]))
  coordinator_address: Optional[str] = _field(
      None, "host:port of process 0, for a multi-process run outside SLURM "
      "and TPU VMs", DEVICES)
  num_processes: int = _field(
      0, "Processes of a multi-process run; 0: one, or the cluster's count",
      DEVICES, flags.IntegerParser(0, MAX_PROCESSES))
  process_id: int = _field(
      -1, "This process's index, 0 to N-1; -1: from the cluster", DEVICES,
      flags.IntegerParser(-1, MAX_PROCESSES - 1))
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
    """This config with `changes` (fields or the model's own settings), each
    read as its flag reads it (BadFlag: its one line); a new --model keeps
    none of the old model's settings (models.get_config fills)."""
    model = changes.get("model", self.model)
    kept = dict(self.model_settings) if model == self.model else {}
    for name, value in changes.items():
      if name not in FIELDS and name not in kept:
        owners = "/".join(SETTINGS[name].models) if name in SETTINGS else ""
        raise UserError(
            f"--{name} is a setting of --model={owners}, not of --model="
            f"{model}; leave it out" if owners else
            f"unknown setting --{name}; see python launch.py --help")
      changes[name] = parse(name, value)
    kept.update((k, v) for k, v in changes.items() if k not in FIELDS)
    return dataclasses.replace(
        self, **{k: v for k, v in changes.items() if k in FIELDS},
        model_settings=tuple(kept.items()))

  def sweep_grid(self) -> Dict[str, Tuple[float, ...]]:
    """The --sweep grid: each swept name's values, in order ({}: none)."""
    return sweep_grid(self.sweep, self.model)

  def to_dict(self) -> dict:
    """config.json's flat record: every field, then the model's settings."""
    return {**{name: getattr(self, name) for name in FIELDS},
            **dict(self.model_settings)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

FIELDS = {f.name: f.metadata["setting"] for f in dataclasses.fields(Config)
          if "setting" in f.metadata}
# Every setting by its flag's name: the Config fields, then each model's own
# (registry.register adds them, as the first model declaring one has it).
SETTINGS: Dict[str, Setting] = dict(FIELDS)


def parse(name: str, value: Any) -> Any:
  """`value` of setting `name` read as its flag reads it typed on the command
  line, so that Python is checked as the flags are: a BadFlag with absl's one
  line where the flag refuses it. A string setting may stay unset (None)."""
  parser = SETTINGS[name].reader()
  if value is None and parser.flag_type() == "string":
    return None
  text = typed(value)
  try:
    return parser.parse(text)
  except (TypeError, ValueError) as e:  # Worded as absl's Flag words it.
    raise BadFlag(f"flag --{name}={text}: {e}") from None


def validate(config: Config) -> Config:
  """Checks every setting of `config` as its flag does, then the rules that
  span flags, each refused in one line that says what to pass (the model's
  own rule: models.validate). The rules read the values presets resolve,
  which absl's validators on launch.py's flags (unset: None) never see."""
  for name, value in config.to_dict().items():
    parse(name, value)
  if config.target_accuracy and not config.val_fraction > 0:
    raise UserError(
        "--target_accuracy stops on validation accuracy, and --val_fraction=0 "
        "holds out none; pass e.g. --val_fraction=0.1 (test accuracy never "
        "decides when a run stops)")
  _check_sweep(config)
  if config.seed + config.num_seeds > 2**32:
    raise UserError(
        f"--seed={config.seed} --num_seeds={config.num_seeds} would use seeds "
        f"up to {config.seed + config.num_seeds - 1}, past 2**32 - 1; pass a "
        "smaller --seed")
  return config


# --sweep: the numbers a run's members can differ in without another program.
_EXAMPLE = "e.g. --sweep=learning_rate=3e-4,1e-3,3e-3"


def sweepable() -> Tuple[str, ...]:  # The optimizer's numbers, the losses'.
  return tuple(dict.fromkeys((*optim.HYPERPARAMS, *(
      n for loss in train.LOSSES.values() for n in loss.reads))))


def _refuse(name: str, texts: Sequence[str], model: str) -> None:
  """Refuses a name that is not sweepable, saying what trains it instead."""
  if name == "seed":
    raise UserError("--sweep=seed: seeds are not swept; --seed=S "
                    "--num_seeds=N trains the seeds S .. S+N-1 of every point")
  if name in SETTINGS:
    command = (f"--train={','.join(texts)}" if name == "model" else
               f"--train={model} --vary={name}={'/'.join(texts)}")
    raise UserError(
        f"--sweep cannot vary {name}: only the optimizer and loss numbers "
        f"({', '.join(sweepable())}) leave shapes and the compiled program "
        "alone; train a run per value and compare them with python "
        f"experiments/compare.py {command}")
  raise UserError(f"--sweep: unknown name {name!r}; sweepable: "
                  f"{', '.join(sweepable())}")


def _sweep_values(name: str, texts: Sequence[str]) -> Tuple[float, ...]:
  """A swept name's values, each read as its flag reads it."""
  values = []
  for text in texts:
    try:
      value = float(text)
    except ValueError:
      raise BadFlag(f"--sweep={name}: {text!r} is not a number; "
                    f"{_EXAMPLE}") from None
    try:
      parse(name, value)
    except BadFlag as e:
      raise BadFlag(f"--sweep: {e}") from None
    if value in values:
      raise UserError(f"--sweep={name} lists {value_text(value)} twice; give "
                      "each value once")
    values.append(value)
  return tuple(values)


def sweep_grid(specs: Union[str, Sequence[str]], model: str = "MODEL"
               ) -> Dict[str, Tuple[float, ...]]:
  """The grid of `--sweep` specs, each `NAME=V1,V2,...`, several `;`-joined;
  a UserError for a malformed or unsweepable one (`model`: for its advice)."""
  grid = {}
  joined = specs if isinstance(specs, str) else ";".join(specs)
  for part in (p.strip() for p in joined.split(";")):
    if not part:
      continue
    name, sep, listed = (s.strip() for s in part.partition("="))
    if not sep or not name:
      raise UserError(f"--sweep={part}: expected NAME=V1,V2,...; {_EXAMPLE}")
    texts = [t.strip() for t in listed.split(",") if t.strip()]
    if name not in sweepable():
      _refuse(name, texts, model)
    if name in grid:
      raise UserError(f"--sweep names {name} twice; give it once with all its "
                      "values")
    if not texts:
      raise UserError(f"--sweep={name}= lists no values; {_EXAMPLE}")
    grid[name] = _sweep_values(name, texts)
  return grid


def sweep_text(specs, model: str = "MODEL") -> str:
  """The sweep as `Config.sweep` holds it: `a=1.0,2.0;b=0.1` ("": none)."""
  return ";".join(f"{name}={','.join(repr(v) for v in values)}"
                  for name, values in sweep_grid(specs, model).items())


def _check_sweep(config: Config) -> None:
  """The rules of a sweep and its members' count, each in one line."""
  grid = config.sweep_grid()
  readers = {f"--optimizer={n}": s.reads for n, s in optim.OPTIMIZERS.items()}
  readers.update({f"--loss={n}": s.reads for n, s in train.LOSSES.items()})
  for name in grid:
    owners = [k for k, reads in readers.items() if name in reads]
    flag = owners[0].split("=")[0] if owners else ""
    if owners and f"{flag}={getattr(config, flag[2:])}" not in owners:
      raise UserError(f"--sweep={name} changes nothing with {flag}="
                      f"{getattr(config, flag[2:])}: only "
                      f"{' or '.join(owners)} reads it")
  if grid and config.val_fraction == 0:
    raise UserError("--sweep chooses its member by validation accuracy, and "
                    "--val_fraction=0 holds out none; pass e.g. "
                    "--val_fraction=0.1")
  count = math.prod(len(v) for v in grid.values()) * config.num_seeds
  if count > MAX_MEMBERS:
    raise UserError(
        f"--sweep and --num_seeds make {count} members; one program trains at "
        f"most {MAX_MEMBERS}: list fewer values or seeds")

"""Hyperparameters declared once: a model's own settings with its registry
entry, appearing in its runs only; optimizer ones in optim.HYPERPARAMS, held
in the optimizer state and sweepable from there, and which optimizer reads
which in optim.OPTIMIZERS; old config.json files (every model's keys) still
load."""

import json
import os
import re
import shutil

from absl import flags
import numpy as np
import pytest

import launch
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import choose
from mnist_jax.rundir import dry_run
from mnist_jax.rundir import record as record_lib
from mnist_jax import modes as rundir_run
from mnist_jax.rundir import tensorboard
from mnist_jax.training import members
from mnist_jax import optim

# Every model's own setting: a flag, but no Config field.
MODEL_SETTINGS = sorted(set(config_lib.SETTINGS) - set(config_lib.FIELDS))


@pytest.mark.parametrize("model", list(models.MODELS))
def test_a_models_settings_appear_in_its_runs_only(model):
  """config.json, the repeat command, the dry run and TensorBoard's hparams
  of a run carry its model's settings and no other model's."""
  config = models.get_config(model)
  own = set(models.get(model).settings)
  assert set(config.to_dict()) & set(MODEL_SETTINGS) == own
  assert set(json.loads(config.to_json())) & set(MODEL_SETTINGS) == own
  assert set(tensorboard.hparams(config)) & set(MODEL_SETTINGS) == own
  flags = lambda text: set(re.findall(r"--(?:no)?(\w+)", text))
  assert flags(record_lib.repeat_command(config)) & set(MODEL_SETTINGS) == own
  shown = "\n".join(dry_run.settings_lines(config, ()))
  assert flags(shown) & set(MODEL_SETTINGS) == own
  for name in own:
    assert getattr(config, name) is not None
  for name in set(MODEL_SETTINGS) - own:
    with pytest.raises(AttributeError):
      getattr(config, name)


@pytest.mark.parametrize("model,values,message", [
    ("cnn", dict(mlp_hidden=(64,)), "--mlp_hidden is a setting of --model=mlp,"
     " not of --model=cnn; leave it out"),
    ("linear", dict(dropout=0.1), "--dropout is a setting of "
     "--model=mlp/cnn/rnn/lstm/gru, not of --model=linear; leave it out"),
    *[(m, {k: v}, f"--{k} is a setting of --model={owners}, not of --model={m}"
       "; leave it out") for m in ("mlp", "linear", "gru") for k, v, owners in (
           ("cnn_batch_norm", True, "cnn"), ("sequence", "pixels", "rnn/lstm/gru"),
           ("permute_seed", 3, "rnn/lstm/gru")) if m not in owners],
    ("vgg", {}, f"unknown model 'vgg'; choose one of {', '.join(models.MODELS)}"),
    ("gru", dict(num_layers=101), "flag --num_layers=101: 101 is not an "
     "integer in the range [1, 100]"),
    ("cnn", dict(cnn_padding="FULL"), "flag --cnn_padding=FULL: value should "
     "be one of <VALID|SAME>"),
    ("cnn", dict(impl="turbo"), "flag --impl=turbo: value should be one of "
     "<auto|stock|fast>"),
    ("cnn", dict(cnn_kernel=0), "flag --cnn_kernel=0: 0 is not an integer in "
     "the range [1, 28]"),
    ("lstm", dict(sequence="columns"), "flag --sequence=columns: value should "
     "be one of <rows|pixels|permuted>"),
    ("lstm", dict(permute_seed=-1), "flag --permute_seed=-1: -1 is not an "
     "integer in the range [0, 4294967295]"),
    ("cnn", dict(cnn_kernel=7, cnn_features=(4, 4, 4)), "*leave no pixels*"
     "--cnn_padding=SAME*"),
    ("cnn", dict(cnn_padding="SAME", cnn_features=(4,) * 5), "*leave no "
     "pixels*fewer --cnn_features*"),
    ("mlp", dict(val_fraction=0.0, target_accuracy=0.9), "--target_accuracy "
     "stops on validation accuracy, and --val_fraction=0 holds out none; pass "
     "e.g. --val_fraction=0.1 (test accuracy never decides when a run stops)"),
])
def test_a_setting_the_model_cannot_take_is_refused_in_one_line(model, values,
                                                                message):
  """As every command refuses it (get_config, the flags, a config.json), in
  docs/troubleshooting.md's words."""
  with pytest.raises(UserError) as e:
    models.get_config(model, **values)
  assert re.fullmatch(re.escape(message).replace(r"\*", ".*"), str(e.value))


def test_a_new_model_declares_its_settings_without_config_edits():
  """Registering a model makes its settings flags-to-be and Config values;
  another model's config still refuses them."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Toy(nn.Module):
    width: int = 7
    num_classes: int = 10

    @nn.compact
    def __call__(self, images, train=False):
      del train
      x = images.reshape(images.shape[0], -1) / 255.0
      return nn.Dense(self.num_classes)(nn.Dense(self.width)(x))

  spec = models.registry.register(models.ModelSpec(
      name="toy", module=Toy, describe=lambda c: "toy",
      presets={"tuned": {}},
      settings={"toy_width": models.registry.Setting(
          "width", "Toy width", parser=flags.IntegerParser(1, 64))}))
  try:
    config = models.get_config("toy", toy_width=9)
    assert config.to_dict()["toy_width"] == 9
    assert spec.stock(config).width == 9
    module, record = models.build(config)
    assert module.width == 9 and record["module"].endswith("'s Toy")
    assert models.get_config("toy").toy_width == 7
    assert models.get_config("toy", toy_width="9").toy_width == 9
    with pytest.raises(UserError, match="toy_width=65: 65 is not an integer"):
      models.get_config("toy", toy_width=65)
    with pytest.raises(UserError, match="setting of --model=toy, not of"):
      models.get_config("mlp", toy_width=9)
  finally:
    del models.MODELS["toy"]
    del config_lib.SETTINGS["toy_width"]


@pytest.mark.parametrize("key", list(optim.HYPERPARAMS))
def test_every_declared_optimizer_hyperparameter_is_held_and_sweepable(key):
  """One HYPERPARAMS entry (and its Config field) makes a number the
  optimizer state holds, float32, that --sweep takes and --help lists."""
  assert key in config_lib.FIELDS and key in config_lib.sweepable()
  listed = launch.FLAGS["sweep"].help.split("NAME: ")[1].split(" (default")[0]
  assert key in listed.split(", ")
  value = getattr(config_lib.Config(), key)
  assert config_lib.sweep_grid(f"{key}={value!r}") == {key: (value,)}
  config = config_lib.Config(model="mlp")
  held = optim.hyperparams(config)
  assert held[key].dtype == np.float32 and held[key] == np.float32(value)
  state = optim.make_optimizer(config, 10, swept=[key]).init(
      {"w": np.zeros((2, 2), np.float32)})
  assert key in state.hyperparams


@pytest.mark.parametrize("key", list(optim.HYPERPARAMS))
def test_which_optimizers_read_a_number_comes_from_the_table(key):
  """A number some OPTIMIZERS entries read (`reads`) is swept with those
  and refused with the others, naming them; one none declares (the rate,
  the decay, the clip) is read by every optimizer."""
  readers = [o for o, spec in optim.OPTIMIZERS.items() if key in spec.reads]
  for optimizer in optim.OPTIMIZERS:
    make = lambda optimizer=optimizer: models.get_config(
        "mlp", optimizer=optimizer,
        sweep=f"{key}={getattr(config_lib.Config(), key)!r}")
    if not readers or optimizer in readers:
      assert len(members.from_config(make())) == 1
      continue
    with pytest.raises(UserError) as e:
      make()
    assert str(e.value) == (
        f"--sweep={key} changes nothing with --optimizer={optimizer}: only "
        f"{' or '.join(f'--optimizer={o}' for o in readers)} reads it")


def _old_format(config_json: dict) -> dict:
  """A config.json as written before models declared their settings: every
  model's settings, at their old defaults, beside the run's own."""
  old = {"hidden": 128, "num_layers": 1, "bidirectional": False,
         "mlp_hidden": [512, 256], "dropout": 0.0, "cnn_features": [32, 64],
         "cnn_kernel": 3, "cnn_dense": 128, "cnn_padding": "VALID",
         "remat": False, "sequence": "rows", "permute_seed": 0}
  return {**config_json, "config": {**old, **config_json["config"]}}


def test_an_old_run_folder_loads_resumes_and_predicts_the_same(tiny_run,
                                                               tmp_path):
  root = tmp_path / "runs"
  old = str(root / "old")
  shutil.copytree(tiny_run, old)
  path = os.path.join(old, record_lib.CONFIG_FILE)
  with open(path) as f:
    record = _old_format(json.load(f))
  assert "cnn_features" in record["config"]
  with open(path, "w") as f:
    json.dump(record, f)
  config = record_lib.read_config(old)
  new = config.replace(workdir=None)
  assert new == record_lib.read_config(tiny_run).replace(workdir=None)
  assert "cnn_features" not in config.to_dict()
  assert "sequence" not in config.to_dict()
  # The same command resumes it: its settings match a new run's.
  assert [r.path for r in choose.find_runs(new, str(root))] == [old]
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8)
  np.testing.assert_array_equal(run_lib.load_run(old).logits(images),
                                run_lib.load_run(tiny_run).logits(images))
  os.remove(os.path.join(old, "report.md"))
  rundir_run.rewrite_report(old)
  assert os.path.exists(os.path.join(old, "report.md"))

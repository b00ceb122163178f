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
import launch_helpers as lh
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def test_a_setting_defaults_to_its_module_attribute_and_builds_the_module():
  config = models.get_config("cnn", "seed", cnn_kernel=5, cnn_padding="SAME")
  module = models.get("cnn").stock(config)
  assert (module.kernel_size, module.padding) == (5, "SAME")
  assert module.features == config.cnn_features
  assert models.get("cnn").settings["cnn_kernel"].default == 3  # CNN.kernel_size's.


def test_another_models_setting_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  rc, out, err = lh.run(["--model=cnn", "--mlp_hidden=64",
                         f"--workdir={workdir}"])
  assert rc == 1, err
  assert err.strip() == ("error: --mlp_hidden is a setting of --model=mlp, "
                         "not of --model=cnn; leave it out")
  assert not out and not workdir.exists()


def test_a_shared_setting_names_all_its_models():
  with pytest.raises(UserError, match=re.escape(
      "--dropout is a setting of --model=mlp/cnn/rnn/lstm/gru, not of "
      "--model=linear")):
    models.get_config("linear", dropout=0.1)
  assert models.get_config("cnn", dropout=0.1).dropout == 0.1


def test_a_models_settings_are_validated_from_their_declaration():
  with pytest.raises(UserError, match=re.escape(
      "flag --num_layers=101: 101 is not an integer in the range [1, 100]")):
    models.get_config("gru", num_layers=101)
  with pytest.raises(UserError, match=re.escape(
      "flag --cnn_padding=FULL: value should be one of <VALID|SAME>")):
    models.get_config("cnn", cnn_padding="FULL")


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


def test_label_smoothing_is_swept_as_a_loss_setting():
  """Sweepable beside HYPERPARAMS, held per member by the loss, not the
  optimizer."""
  assert config_lib.sweepable() == (*optim.HYPERPARAMS, "label_smoothing")
  config = models.get_config("mlp", sweep="label_smoothing=0.0,0.1")
  listed = members.from_config(config)
  assert list(members.per_member(listed, ("label_smoothing",))["label_smoothing"]) == [
      0.0, np.float32(0.1)]
  assert "label_smoothing" not in optim.hyperparams(config)


def test_the_readme_lists_exactly_the_sweepable_names():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = " ".join(f.read().split())
  listed = text.split("Sweepable (", 1)[1].split("): ", 1)[1].split(". ")[0]
  assert sorted(re.findall(r"`(\w+)`", listed)) == sorted(config_lib.sweepable())


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

"""Hyperparameters declared once: a model's settings in its registry entry
(in its runs only), the optimizer's in optim.HYPERPARAMS (held, swept where
read); old config.json files (every model's keys) still load."""

import json
import os
import re
import shutil

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
    ("cnn", dict(cnn_kernel=7, cnn_features=(4, 4, 4)), "*leave no pixels*"
     "--cnn_padding=SAME*"),
    ("cnn", dict(cnn_padding="SAME", cnn_features=(4,) * 5), "*leave no "
     "pixels*fewer --cnn_features*"),
])
def test_a_setting_the_model_cannot_take_is_refused_in_one_line(model, values,
                                                                message):
  """A CNN whose convolutions leave no pixels (another model's setting:
  test_refusals.py's other_models_setting)."""
  with pytest.raises(UserError) as e:
    models.get_config(model, **values)
  assert re.fullmatch(re.escape(message).replace(r"\*", ".*"), str(e.value))


@pytest.mark.parametrize("key", list(optim.HYPERPARAMS))
def test_every_optimizer_hyperparameter_is_held_and_swept_where_read(key):
  """A float32 number in the optimizer state, listed by --sweep's help, swept
  with the optimizers that read it (`reads`), refused with the others."""
  assert key in config_lib.FIELDS and key in config_lib.sweepable()
  listed = launch.FLAGS["sweep"].help.split("NAME: ")[1].split(" (default")[0]
  assert key in listed.split(", ")
  value = getattr(config_lib.Config(), key)
  config = config_lib.Config(model="mlp")
  held = optim.hyperparams(config)
  assert held[key].dtype == np.float32 and held[key] == np.float32(value)
  state = optim.make_optimizer(config, 10, swept=[key]).init(
      {"w": np.zeros((2, 2), np.float32)})
  assert key in state.hyperparams
  readers = [o for o, spec in optim.OPTIMIZERS.items() if key in spec.reads]
  for optimizer in optim.OPTIMIZERS:
    make = lambda optimizer=optimizer: models.get_config(
        "mlp", optimizer=optimizer, sweep=f"{key}={value!r}")
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

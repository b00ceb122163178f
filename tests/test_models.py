"""Every registered model: raw images in, output shape, parameter count,
stacking; the BatchNorm CNN; a model registered outside the package."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import cnn
from mnist_jax.models import kernels
from mnist_jax.models import recurrent
from mnist_jax.models.kernels import lowered
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import dry_run
from mnist_jax import modes as rundir_run
from mnist_jax import optim
from mnist_jax.training import train

# Parameter counts of the seed architectures, from the layer formulas.
SEED_PARAMS = {
    "linear": 784 * 10 + 10,
    "mlp": (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10),
    "cnn": (9 * 32 + 32) + (9 * 32 * 64 + 64) + (5 * 5 * 64 * 128 + 128) + (128 * 10 + 10),
    # SimpleRNN: input kernel + bias, recurrent kernel; then Dense(10).
    "rnn": (28 * 128 + 128 + 128 * 128) + (128 * 10 + 10),
    # LSTM (flax): 4 input kernels, 4 recurrent kernels with biases.
    "lstm": 4 * (28 * 128 + 128 * 128 + 128) + (128 * 10 + 10),
    # GRU (flax): 3 input kernels with biases, 3 recurrent kernels, one bias (n).
    "gru": 3 * (28 * 128 + 128) + 3 * 128 * 128 + 128 + (128 * 10 + 10),
}
NEW_MODEL = os.path.join(lh.ROOT, "tests", "new_model_launch.py")


def _module(config, impl="stock"):
  """The model's stock module, or with impl="fast" the module a run gets:
  its kernel where one passes the start-up check (asserted)."""
  stock = models.get(config.model).stock(config)
  if impl == "stock" or type(stock) not in kernels.KERNELS:
    return stock
  module, note, _ = kernels.swap(stock, "fast", (28, 28, 1), "cpu")
  assert type(module) is kernels.KERNELS[type(stock)], note
  return module


def _images(n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(
      0, 256, (n, 28, 28, 1)).astype(np.uint8))


def _init(config, impl="stock", batch=3):
  """(module, its variables, images [batch, 28, 28, 1] uint8)."""
  model = _module(config, impl)
  x = _images(batch)
  variables = model.init(jax.random.key(0), x)
  return model, variables, x


def _apply(model, variables, x, **kwargs):
  return model.apply(variables, x, **kwargs)


def test_registry_has_the_six_seed_models():
  assert set(SEED_PARAMS) <= set(models.MODELS)


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_raw_pixels_in_logits_out_and_seed_parameter_count(name, impl):
  """Images [B, 28, 28, 1] on the 0-255 scale, uint8 as stored or float (an
  augmented or bfloat16 batch), read alike: the model scales them itself."""
  config = models.get_config(name, "seed")
  model, variables, x = _init(config, impl)
  logits = _apply(model, variables, x)
  assert logits.shape == (3, 10)
  assert bool(jnp.all(jnp.isfinite(logits)))
  n = sum(p.size for p in jax.tree.leaves(variables["params"]))
  if name in SEED_PARAMS:
    assert n == SEED_PARAMS[name]
  if impl == "stock":
    as_float = _apply(model, variables, x.astype(jnp.float32))
    np.testing.assert_allclose(as_float, logits, rtol=1e-6, atol=1e-6)
    # Scaled to [0, 1] inside: 255 x dimmer floats are another input.
    assert not np.allclose(_apply(model, variables, x / 255.0), logits)


@pytest.mark.parametrize("name", [  # rnn's presets are lstm's and gru's.
    pytest.param(n, marks=[pytest.mark.slow] * (n in ("cnn", "lstm", "gru")))
    for n in sorted(models.MODELS)])
def test_every_preset_builds_and_runs(name):
  for preset in models.get(name).presets:
    config = models.get_config(name, preset)
    model, variables, x = _init(config, batch=2)
    assert _apply(model, variables, x).shape == (2, 10)


@pytest.mark.parametrize("impl", ["stock", "fast"])
@pytest.mark.parametrize("cell", [n for n, spec in models.MODELS.items()
                                  if spec.module is recurrent.Recurrent])
@pytest.mark.parametrize("layers,bidirectional", [
    pytest.param(2, False, marks=pytest.mark.slow),
    pytest.param(1, True, marks=pytest.mark.slow), (2, True)])
def test_recurrent_stacking_and_bidirectional(cell, layers, bidirectional, impl):
  config = models.get_config(cell, "seed", hidden=16, num_layers=layers,
                             bidirectional=bidirectional)
  model, variables, x = _init(config, impl)
  params = variables["params"]
  assert _apply(model, variables, x).shape == (3, 10)
  n_rnn = sum(1 for k in params if k.startswith(cell))
  assert n_rnn == layers * (2 if bidirectional else 1)
  # The top layer's input width doubles when the layer below is bidirectional.
  assert params["out"]["kernel"].shape[0] == 16 * (2 if bidirectional else 1)


def test_bidirectional_backward_sees_the_whole_sequence():
  """The backward direction's final state depends on the first row too."""
  config = models.get_config("gru", "seed", hidden=8, bidirectional=True)
  model, variables, _ = _init(config)
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1)) * 255
  x2 = x.at[:, 0].add(50.0)
  f = lambda v: model.apply(variables, v)
  assert not np.allclose(f(x), f(x2))


def test_build_returns_the_module_and_what_config_json_records():
  said = []
  config = models.get_config("mlp", "seed")
  module, record = models.build(config, said.append)
  assert type(module).__name__ == "MLP" and module.hidden == (512, 256)
  assert record == {"impl": "auto", "module": "mnist_jax/models/dense.py's MLP"}
  config = models.get_config("cnn", "seed", impl="stock")
  module, record = models.build(config, said.append)
  assert type(module) is cnn.CNN
  assert record == {"impl": "stock", "module": "mnist_jax/models/cnn.py's CNN"}
  assert not said  # No kernel asked for or none to check: nothing to say.


# The BatchNorm CNN (--cnn_batch_norm).

BN = dict(cnn_batch_norm=True, cnn_features=(4, 8), cnn_dense=16)


def test_batch_norm_is_a_cnn_setting_only():
  for model in ("mlp", "linear", "gru"):
    with pytest.raises(UserError) as e:
      models.get_config(model, cnn_batch_norm=True)
    assert str(e.value) == (f"--cnn_batch_norm is a setting of --model=cnn, "
                            f"not of --model={model}; leave it out")
  assert models.get_config("cnn").cnn_batch_norm is False
  assert models.get_config("cnn", **BN).to_dict()["cnn_batch_norm"] is True


def test_batch_norm_is_described_and_shaped():
  config = models.get_config("cnn", "seed", **BN)
  line = models.get("cnn").describe(config)
  assert line == ("Conv4 3x3, BatchNorm, max-pool, Conv8 3x3, BatchNorm, "
                  "max-pool, Dense16, Dense10")
  assert "BatchNorm" in dry_run.text(config, (), "W", (None,))
  assert "BatchNorm" not in models.get("cnn").describe(
      config.replace(cnn_batch_norm=False))
  model = models.get("cnn").stock(config)
  state = train.create_train_state(jax.random.key(0), model,
                                   optim.make_optimizer(config, 1), (28, 28, 1))
  # The convs lose their bias (the normalization removes it); the running
  # statistics are the state's model_state.
  assert set(state.params["conv_0"]) == {"kernel"}
  assert set(state.params["bn_0"]) == {"scale", "bias"}
  assert set(state.model_state) == {"batch_stats"}
  assert set(state.model_state["batch_stats"]["bn_1"]) == {"mean", "var"}
  assert set(state.variables) == {"params", "batch_stats"}
  # A train step normalizes by the batch and updates the running statistics;
  # evaluation reads them, so one image's logits do not depend on its batch.
  x = _images(8)
  batch = {"image": x, "label": jnp.arange(8) % 10, "valid": jnp.asarray(True)}

  @jax.jit
  def step_and_logits(state):
    state, _ = train.train_step(state, batch)
    return state, state.apply_fn(state.variables, x), state.apply_fn(
        state.variables, x[:1])

  stepped, logits, first = step_and_logits(state)
  assert not np.allclose(stepped.model_state["batch_stats"]["bn_0"]["mean"], 0)
  np.testing.assert_allclose(first, logits[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,backend", [("auto", "cpu"), ("fast", "gpu")])
def test_batch_norm_refuses_the_kernel_in_one_line(impl, backend):
  config = models.get_config("cnn", "seed", impl=impl, **BN)
  stock = models.get("cnn").stock(config)
  module, note, record = kernels.swap(stock, impl, (28, 28, 1), backend)
  # The stock module runs, every line of it; on a CPU or asked for, its
  # convolutions are matmuls (checked equal, batch statistics included).
  assert type(module) is lowered.Lowered and module.stock is stock
  assert note == ("the fast kernel mnist_jax/models/kernels/conv_pool.py's CNN "
                  "does not compute mnist_jax/models/cnn.py's CNN (it keeps no "
                  "batch_stats): training the stock module, its layers "
                  "lowered by mnist_jax/models/kernels/conv_matmul.py")
  assert record["passed"] is False and record["layers"]["passed"] is True
  assert record["module"].endswith("cnn.py's CNN")
  said = []
  if backend == "cpu":  # As a run says it.
    assert type(models.build(config, said.append)[0].stock) is cnn.CNN
    assert said == [note]


@pytest.mark.slow
def test_a_batch_norm_run_trains_reports_and_predicts(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "bn")
  config = models.get_config(
      "cnn", "seed", epochs=2, batch_size=50, learning_rate=3e-3,
      val_fraction=0.1, tensorboard=False, mnist_dir=mnist_dir,
      data_dir=data_dir, workdir=workdir, **BN)
  stream = io.StringIO()
  final = rundir_run.train_and_evaluate(config, workdir, stream=stream)
  assert "does not compute mnist_jax/models/cnn.py's CNN (it keeps no " \
         "batch_stats)" in stream.getvalue()
  assert final["test_accuracy"] > 0.5, final  # Ten classes: chance is 0.1.
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = json.load(f)
  assert recorded["config"]["cnn_batch_norm"] is True
  assert recorded["environment"]["implementation"]["module"] == (
      "mnist_jax/models/cnn.py's CNN")
  # Loaded back: its running statistics, trained; the same test metrics.
  run = run_lib.load_run(workdir)
  stats = run.variables["batch_stats"]["bn_0"]
  assert not np.allclose(stats["mean"], 0) and not np.allclose(stats["var"], 1)
  test = pipeline.load(run.config).test
  got = run.evaluate(test.images, test.labels)
  assert got["accuracy"] == pytest.approx(final["test_accuracy"])
  assert got["loss"] == pytest.approx(final["test_loss"], rel=1e-5)
  predicted = run.predict(test.images[:7])
  assert predicted.shape == (7,)
  np.testing.assert_array_equal(predicted, run.predict(test.images)[:7])
  assert run.predict(test.images[3]) == predicted[3]
  os.remove(os.path.join(workdir, "report.md"))  # Its analyses: above.
  assert rundir_run.rewrite_report(workdir, analyses=False)["accuracy"] == (
      pytest.approx(final["test_accuracy"]))
  assert os.path.exists(os.path.join(workdir, "report.md"))


# A model registered outside the package: tests/new_model_launch.py.

@pytest.mark.slow
def test_a_model_registered_outside_the_package_runs_through_launch(
    prepared, tmp_path):
  """"newnet", registered by new_model_launch.py before it runs launch.py:
  its preset, flags, training, report and predictions, no package edit."""
  mnist_dir, data_dir = prepared
  workdir = tmp_path / "newnet"
  args = ["--model=newnet", "--preset=seed", "--notensorboard",
          f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={workdir}"]
  rc, out, err = lh.run(args + ["--dry_run"], script=NEW_MODEL)
  assert rc == 0, err
  assert "784-16-10, ReLU" in out and "--epochs=2" in out
  rc, out, err = lh.run(args, script=NEW_MODEL, timeout=300)
  assert rc == 0, err
  rows = lh.metrics(workdir)
  assert [r["epoch"] for r in rows if "train_loss" in r] == [1, 2]
  assert rows[-1]["test_accuracy"] > 0.5, rows[-1]
  with open(workdir / "config.json") as f:
    assert json.load(f)["config"]["model"] == "newnet"
  assert (workdir / "report.md").exists()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  picture = np.zeros((28, 28), np.uint8)
  picture[8:20, 8:20] = 255
  Image.fromarray(picture).save(tmp_path / "digit.png")
  rc, out, err = lh.run(["--mode=predict", f"--workdir={workdir}",
                         f"--image={tmp_path / 'digit.png'}", "--json"],
                        script=NEW_MODEL)
  assert rc == 0, err
  assert len(json.loads(out)["probabilities"]) == 10
  # launch.py alone does not know it, and says so in one line.
  rc, _, err = lh.run(args)
  assert rc == 1 and err.strip().startswith("error: unknown model 'newnet'")

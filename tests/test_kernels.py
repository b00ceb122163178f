"""--impl: which module a run gets on which backend, and that either one reads
the other's checkpoints."""

import dataclasses
import io

import jax.numpy as jnp
import pytest

from mnist_jax import models
from mnist_jax.data import batches
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.models import kernels
from mnist_jax.results import run as run_lib
from mnist_jax.training import members
from mnist_jax.training import train

FAST_MODELS = ("cnn", "rnn", "lstm", "gru")


def _config(name, **overrides):
  return models.get_config(name, "seed", **overrides)


def _module(name, backend, **overrides):
  return type(models.build(_config(name, **overrides), backend))


@pytest.mark.parametrize("name", FAST_MODELS)
def test_auto_on_cpu_runs_the_kernel(name):
  config = _config(name)
  assert kernels.resolve(config, "cpu") == "fast"
  assert _module(name, "cpu") is kernels.KERNELS[name].module


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_auto_elsewhere_runs_stock(name, backend):
  assert kernels.resolve(_config(name), backend) == "stock"
  assert _module(name, backend) is type(models.get(name).stock(_config(name)))


@pytest.mark.parametrize("name,overrides", [
    ("lstm", dict(remat=True)), ("gru", dict(remat=True, bidirectional=True)),
    ("mlp", {}), ("linear", {})])
def test_shapes_no_kernel_supports_run_stock_silently(name, overrides):
  for impl in ("auto", "fast"):
    for backend in ("cpu", "gpu"):
      config = _config(name, impl=impl, **overrides)
      assert kernels.resolve(config, backend) == "stock"
      assert type(models.build(config, backend)) is type(
          models.get(name).stock(config))


def test_any_cnn_kernel_size_runs_the_kernel_on_cpu():
  """The im2col lowering covers k x k convolutions Winograd does not."""
  for k in (1, 2, 5, 7):
    assert kernels.resolve(_config("cnn", cnn_kernel=k), "cpu") == "fast"
    assert kernels.resolve(_config("cnn", cnn_kernel=k), "gpu") == "stock"


@pytest.mark.parametrize("name", FAST_MODELS)
def test_fast_runs_the_kernel_on_any_backend_and_stock_never(name):
  for backend in ("cpu", "gpu", "tpu"):
    assert kernels.resolve(_config(name, impl="fast"), backend) == "fast"
    assert kernels.resolve(_config(name, impl="stock"), backend) == "stock"
    assert _module(name, backend, impl="stock") is type(
        models.get(name).stock(_config(name)))


def test_unknown_impl_is_a_one_line_error():
  with pytest.raises(UserError, match="--impl must be one of auto, stock, fast") \
      as error:
    _config("cnn", impl="turbo")
  assert "\n" not in str(error.value)
  unvalidated = dataclasses.replace(_config("cnn"), impl="turbo")
  with pytest.raises(UserError, match="--impl"):
    kernels.resolve(unvalidated, "cpu")


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_kernels_take_their_stock_modules_attributes(name):
  config = _config(name, impl="stock")
  stock = models.get(name).stock(config)
  names = lambda cls: [f.name for f in dataclasses.fields(cls)]
  assert names(kernels.KERNELS[name].module) == names(type(stock))
  fast = kernels.drop_in(name, stock)
  for field in names(type(stock)):
    if field not in ("parent", "name"):
      assert getattr(fast, field) == getattr(stock, field)


def test_implementation_records_the_choice():
  config = _config("gru", impl="auto")
  assert models.implementation(config, "cpu") == {
      "impl": "auto", "resolved": "fast",
      "module": "mnist_jax.models.kernels.fused_rnn.Recurrent"}
  assert models.implementation(config, "gpu") == {
      "impl": "auto", "resolved": "stock",
      "module": "mnist_jax.models.recurrent.Recurrent"}


def _test_metrics(config, params, apply_fn):
  test = pipeline.load(config).test
  idx, mask = batches.eval_batches(len(test), config.eval_batch_size)
  evaluate = train.make_evaluate(config, apply_fn)
  return members.host_metrics(evaluate(params, jnp.asarray(test.images),
                              jnp.asarray(test.labels), idx, mask))


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("cnn", dict(cnn_features=(4, 8), cnn_dense=16, dropout=0.25)),
    ("gru", dict(hidden=8, num_layers=2, bidirectional=True, dropout=0.2)),
])
def test_a_fast_run_restores_into_stock(prepared, tmp_path, name, overrides):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / name)
  config = _config(name, impl="fast", epochs=1, batch_size=50, val_fraction=0.0,
                   mnist_dir=mnist_dir, data_dir=data_dir, **overrides)
  assert models.implementation(config)["resolved"] == "fast"
  final = train.train_and_evaluate(config, workdir, stream=io.StringIO())
  run = run_lib.load_run(workdir, impl="stock")
  assert models.implementation(run.config)["resolved"] == "stock"
  metrics = _test_metrics(run.config, run.params, run.apply_fn)
  assert metrics["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-5)
  assert metrics["loss"] == pytest.approx(final["test_loss"], abs=1e-5)


@pytest.mark.slow
def test_cnn_kernel_5_trains(prepared, tmp_path):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "cnn5")
  config = _config("cnn", cnn_kernel=5, cnn_features=(4, 8), cnn_dense=16,
                   epochs=2, batch_size=50, learning_rate=3e-3,
                   val_fraction=0.0, mnist_dir=mnist_dir, data_dir=data_dir)
  final = train.train_and_evaluate(config, workdir, stream=io.StringIO())
  run = run_lib.load_run(workdir)
  assert run.params["conv_0"]["kernel"].shape == (5, 5, 1, 4)
  assert final["test_accuracy"] > 0.5  # Ten classes: chance is 0.1.


@pytest.mark.parametrize("overrides,hint", [
    (dict(cnn_kernel=7, cnn_features=(4, 4, 4)), "--cnn_padding=SAME"),
    (dict(cnn_padding="SAME", cnn_features=(4,) * 5), "fewer --cnn_features"),
])
def test_a_cnn_that_leaves_no_pixels_is_a_one_line_error(overrides, hint):
  with pytest.raises(UserError, match="leave no pixels") as error:
    _config("cnn", **overrides)
  assert hint in str(error.value) and "\n" not in str(error.value)
  _config("cnn", **dict(overrides, cnn_features=overrides["cnn_features"][1:]))


def test_cnn_kernel_must_be_positive():
  with pytest.raises(UserError, match="--cnn_kernel must be positive"):
    _config("cnn", cnn_kernel=0)

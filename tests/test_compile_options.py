"""Per-model compiler options reach the compiles, and a jaxlib that refuses
them trains the same run without them instead of failing."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import pytest

from mnist_jax import compile_options, models, train
from tests.test_train import tiny_config

BAD = {"xla_cpu_no_such_option_for_mnist_jax_tests": True}


@pytest.fixture(autouse=True)
def _fresh_refusals(monkeypatch):
  monkeypatch.setattr(compile_options, "_refused", set())


def _with_options(monkeypatch, name, options):
  spec = dataclasses.replace(models.get(name), cpu_compiler_options=options)
  monkeypatch.setitem(models.MODELS, name, spec)


def _record_compiles(monkeypatch):
  """Lowered.compile, recording the compiler_options of every call."""
  seen = []
  compile_fn = jax.stages.Lowered.compile

  def compile_and_record(self, compiler_options=None, **kw):
    seen.append(dict(compiler_options or {}))
    return compile_fn(self, compiler_options, **kw)

  monkeypatch.setattr(jax.stages.Lowered, "compile", compile_and_record)
  return seen


def _train(prepared, tmp_path, name):
  mnist_dir, data_dir = prepared
  config = tiny_config(name, mnist_dir=mnist_dir, data_dir=data_dir,
                       val_fraction=0.1, epochs=1)
  work = str(tmp_path / name)
  final = train.train_and_evaluate(config.replace(workdir=work), work)
  with open(os.path.join(work, "config.json")) as f:
    return final, json.load(f)["environment"]


def test_refused_option_trains_the_run_without_it(prepared, tmp_path,
                                                   monkeypatch):
  plain, env = _train(prepared, tmp_path / "plain", "linear")
  assert "compiler_options" not in env
  _with_options(monkeypatch, "linear", BAD)
  seen = _record_compiles(monkeypatch)
  final, env = _train(prepared, tmp_path / "bad", "linear")
  untimed = lambda m: {k: v for k, v in m.items() if not k.endswith("_s")}
  assert untimed(final) == untimed(plain)
  assert env["compiler_options"] == BAD
  # Tried once; every later compile (evaluation) goes without it.
  assert [s for s in seen if s] == [BAD]
  assert compile_options.for_model("linear", "cpu") == {}


def test_options_reach_the_train_chunk_and_evaluation(prepared, tmp_path,
                                                      monkeypatch):
  options = {"xla_cpu_prefer_vector_width": 256}  # XLA's default: harmless.
  _with_options(monkeypatch, "mlp", options)
  seen = _record_compiles(monkeypatch)
  final, env = _train(prepared, tmp_path, "mlp")
  assert env["compiler_options"] == options
  # The train chunk, then evaluation on the val and the test split.
  assert seen.count(options) >= 3, seen
  assert 0.0 <= final["test_accuracy"] <= 1.0


def test_compile_falls_back_once_and_caches_per_signature(monkeypatch):
  seen = _record_compiles(monkeypatch)
  fn = compile_options.with_options(jax.jit(lambda x: 2 * x), BAD)
  assert float(fn(jnp.ones(3)).sum()) == 6.0
  assert float(fn(jnp.ones(3)).sum()) == 6.0  # Same signature: compiled once.
  assert float(fn(jnp.ones(4)).sum()) == 8.0
  assert seen == [BAD, {}, {}]


def test_other_backends_get_no_cpu_options(monkeypatch):
  _with_options(monkeypatch, "lstm", {"xla_cpu_prefer_vector_width": 256})
  assert compile_options.for_model("lstm", "cpu") == {
      "xla_cpu_prefer_vector_width": 256}
  assert compile_options.for_model("lstm", "gpu") == {}
  assert compile_options.for_model("lstm", "tpu") == {}

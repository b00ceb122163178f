"""--sweep: parsing, the one-line errors, member order and per-member arrays."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.errors import UserError
from mnist_jax.training import members as members_lib
from mnist_jax import optim
from mnist_jax.training import train


def _config(**overrides):
  return models.get_config("mlp", "seed", **overrides)


def test_repeated_flags_and_semicolons_give_one_grid_in_order():
  flags = config_lib.sweep_grid(["learning_rate=3e-4, 1e-3,3e-3", "weight_decay=0,1e-4"])
  joined = config_lib.sweep_grid("learning_rate=3e-4,1e-3,3e-3;weight_decay=0,1e-4")
  assert flags == joined
  assert list(flags) == ["learning_rate", "weight_decay"]
  assert flags["learning_rate"] == (3e-4, 1e-3, 3e-3)
  assert config_lib.sweep_grid("") == {} and config_lib.sweep_grid([]) == {}


def test_canonical_reads_back_as_the_same_grid():
  specs = ["weight_decay=1e-5,0", "learning_rate=0.1,3e-4;label_smoothing=0.1"]
  text = config_lib.sweep_text(specs)
  assert config_lib.sweep_grid(text) == config_lib.sweep_grid(specs)
  assert config_lib.sweep_text(text) == text
  assert text.startswith("weight_decay=")  # The order given is kept.
  assert config_lib.sweep_text("") == ""


@pytest.mark.parametrize("spec,words", [
    ("learning_rate=abc", ["'abc' is not a number"]),
    ("learning_rate=", ["lists no values"]),
    ("learning_rate=,", ["lists no values"]),
    ("learning_rate", ["expected NAME=V1,V2"]),
    ("=1,2", ["expected NAME=V1,V2"]),
    ("learning_rate=nan", ["flag --learning_rate=nan: nan is not a finite "
                           "number"]),
    ("lr=1e-3", ["unknown name 'lr'", "learning_rate, weight_decay"]),
    ("learning_rate=1e-3;learning_rate=3e-3", ["learning_rate twice"]),
    (["learning_rate=1e-3", "learning_rate=3e-3"], ["learning_rate twice"]),
    ("learning_rate=1e-3,0.001", ["lists 0.001 twice"]),
    ("seed=1,2", ["--num_seeds"]),
])
def test_bad_specs_are_one_line_errors(spec, words):
  with pytest.raises(UserError) as caught:
    config_lib.sweep_grid(spec)
  message = str(caught.value)
  assert "\n" not in message
  for word in words:
    assert word in message


@pytest.mark.parametrize("name", ["mlp_hidden", "model", "batch_size",
                                  "dropout", "epochs", "hidden", "optimizer",
                                  "warmup_epochs", "schedule"])
def test_names_that_change_the_program_point_to_compare(name):
  with pytest.raises(UserError, match=r"experiments/compare\.py --train=") as e:
    config_lib.sweep_grid(f"{name}=1,2", "mlp")
  assert f"cannot vary {name}" in str(e.value)
  assert "learning_rate" in str(e.value)  # It lists what can be swept.
  assert "\n" not in str(e.value)


def test_warmup_is_no_longer_swept_and_says_what_to_do_instead():
  """optax's warmup schedule is static in the program: a run per warmup,
  compared by experiments/compare.py, with the values the sweep named."""
  with pytest.raises(UserError) as e:
    members_lib.from_config(_config(schedule="warmup_cosine",
                                    sweep="warmup_epochs=0.5,2"))
  assert str(e.value).endswith(
      "python experiments/compare.py --train=mlp --vary=warmup_epochs=0.5/2")
  assert "warmup_epochs" not in config_lib.sweepable()


def _sweep(spec, **overrides):
  return members_lib.from_config(_config(
      sweep=config_lib.sweep_text(spec, "mlp"), **overrides))


@pytest.mark.parametrize("spec,overrides,words", [
    ("learning_rate=1e-3,-1e-3", {}, ["--learning_rate=-0.001: -0.001 is not "
                                      "a finite number in (0, inf)"]),
    ("label_smoothing=0,1.5", {}, ["--label_smoothing=1.5: 1.5 is not a finite "
                                   "number in [0, 1)"]),
    ("grad_clip=-1", {}, ["--grad_clip=-1.0: -1.0 is not a finite number in "
                          "[0, inf)"]),
    ("momentum=0,0.9", {}, ["changes nothing with --optimizer=adam",
                            "--optimizer=sgd"]),
    ("eps=1e-7,1e-3", {"optimizer": "sgd"}, ["--optimizer=rmsprop"]),
    ("rmsprop_decay=0.5,0.9", {"optimizer": "adamw"},
     ["changes nothing with --optimizer=adamw", "--optimizer=rmsprop"]),
    ("learning_rate=1e-3", {"num_seeds": 0}, ["--num_seeds=0: 0 is not an "
                                              "integer in the range [1, 10000]"]),
    ("learning_rate=1e-3,3e-3", {"val_fraction": 0.0},
     ["by validation accuracy", "--val_fraction=0.1"]),
    ("learning_rate=1e-5,1e-4,1e-3,1e-2,1e-1", {"num_seeds": 2001},
     ["10005 members", "at most 10000"]),
])
def test_members_refuse_values_no_run_accepts(spec, overrides, words):
  with pytest.raises(UserError) as caught:
    _sweep(spec, **overrides)
  assert "\n" not in str(caught.value)
  for word in words:
    assert word in str(caught.value)


def test_members_are_grid_point_major_seed_minor():
  config = _config(seed=5, num_seeds=2, learning_rate=1.0,
                   sweep="learning_rate=0.001,0.003;weight_decay=0.0,0.0001")
  members = members_lib.from_config(config)
  assert [m.index for m in members] == list(range(8))
  assert [m.seed for m in members] == [5, 6] * 4
  assert [(m.values["learning_rate"], m.values["weight_decay"])
          for m in members[::2]] == [(1e-3, 0), (1e-3, 1e-4), (3e-3, 0),
                                     (3e-3, 1e-4)]
  for m in members:
    assert m.config == config.replace(seed=m.seed, num_seeds=1, sweep="",
                                      **m.values)
  assert members_lib.label(members[3]) == (
      "learning_rate=0.001, weight_decay=0.0001, seed=6")
  assert members_lib.points(members) == [(0, 1), (2, 3), (4, 5), (6, 7)]
  assert members_lib.swept(config) == ("learning_rate", "weight_decay")


def test_no_sweep_is_one_grid_point_of_seeds():
  config = _config(seed=3, num_seeds=3)
  members = members_lib.from_config(config)
  assert [(m.index, m.seed, m.values) for m in members] == [
      (0, 3, {}), (1, 4, {}), (2, 5, {})]
  assert members[1].config == config.replace(seed=4, num_seeds=1)
  assert members_lib.label(members[0]) == "seed=3"
  assert members_lib.per_member(members, ("label_smoothing",)) == {}
  assert members_lib.swept(config) == ()
  single = members_lib.from_config(_config())
  assert len(single) == 1 and single[0].config == _config()


def test_init_state_stacks_each_members_own_state_in_member_order():
  """members.init_state: each member's init from its seed (the bits of its
  single run), its optimizer holding its values; per_member gives the loss
  settings a sweep varies."""
  config = _config(seed=5, num_seeds=2, mlp_hidden=(8,),
                   sweep="label_smoothing=0.0,0.1;grad_clip=0.0,1.0")
  members = members_lib.from_config(config)
  model, _ = models.build(config)
  tx = optim.make_optimizer(config, 10, members_lib.swept(config))
  create = functools.partial(train.create_train_state, model=model, tx=tx,
                             image_shape=(28, 28, 1))
  state = members_lib.init_state(members, create)
  held = state.opt_state.hyperparams
  np.testing.assert_array_equal(held["grad_clip"], [0, 0, 1, 1] * 2)
  assert held["grad_clip"].dtype == np.float32
  np.testing.assert_allclose(members_lib.per_member(members, ("label_smoothing",))["label_smoothing"],
                             [0] * 4 + [0.1] * 4, rtol=1e-6)
  for m in members:  # Each row is what the member's own run holds.
    own = optim.hyperparams(m.config)
    for key, values in held.items():
      assert values[m.index] == own[key], (m, key)
  assert [m.seed for m in members] == [5, 6] * 4
  single = members_lib.init_state(  # Member 1's own run.
      members_lib.from_config(config.replace(seed=6, num_seeds=1, sweep="")),
      create)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params)):
    assert b.ndim == 1 or not np.array_equal(a[0], b)  # Seed 5's kernels differ.
  data = lambda x: (jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x)
  leaves = jax.tree.leaves(jax.tree.map(data, state))
  own = jax.tree.leaves(jax.tree.map(data, single))
  assert len(leaves) == len(own)
  for a, b in zip(leaves, own):  # All of it: parameters, optimizer, keys.
    assert a.shape == (8, *b.shape)
    np.testing.assert_array_equal(a[1], b)
  np.testing.assert_array_equal(state.step, np.zeros(8))


def test_a_hyperparameter_read_by_several_optimizers(monkeypatch):
  """What a sweep refuses derives from the OPTIMIZERS table: eps read by
  rmsprop and sgd is swept with either, and refused with adam, naming both."""
  monkeypatch.setitem(optim.OPTIMIZERS, "sgd", dataclasses.replace(
      optim.OPTIMIZERS["sgd"], reads=("momentum", "eps")))
  assert len(_sweep("eps=1e-7,1e-3", optimizer="sgd")) == 2
  assert len(_sweep("eps=1e-7,1e-3", optimizer="rmsprop")) == 2
  with pytest.raises(UserError, match="only --optimizer=rmsprop or "
                     "--optimizer=sgd reads it"):
    _sweep("eps=1e-7,1e-3", optimizer="adam")
  # Numbers every optimizer reads are swept with any.
  for optimizer in optim.OPTIMIZERS:
    assert len(_sweep("learning_rate=1e-3,3e-3;weight_decay=0,1e-4",
                      optimizer=optimizer)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_the_initializer_compiled_for_speed_draws_the_default_compiles_bits(
    name):
  """members.INIT_OPTIONS (LLVM at -O1 on CPU: about half the compile) gives
  every preset of every registered model the initial state XLA's default
  level (3; the tests' own compiles use 0) gives, bit for bit: no README
  number moves."""
  options = members_lib.INIT_OPTIONS.get(jax.default_backend())
  if not options:
    pytest.skip(f"no initializer options on {jax.default_backend()}")
  for preset in models.get(name).presets:
    config = models.get_config(name, preset)
    model, _ = models.build(config, say=lambda _: None)
    create = functools.partial(
        train.create_train_state, model=model,
        tx=optim.make_optimizer(config, 10),
        image_shape=datasets.get(config.dataset).image_shape)
    key = jax.random.key(config.seed)
    fast = jax.jit(create, compiler_options=options)(key)
    default = jax.jit(create, compiler_options={
        "xla_backend_optimization_level": 3})(key)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default)):
      if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
      np.testing.assert_array_equal(a, b, err_msg=f"{name} --preset={preset}")

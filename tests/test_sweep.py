"""--sweep: parsing, the one-line errors, member order and per-member arrays."""

import dataclasses

import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.training import members as members_lib
from mnist_jax.training import optim


def _config(**overrides):
  return models.get_config("mlp", "seed", **overrides)


def test_repeated_flags_and_semicolons_give_one_grid_in_order():
  flags = members_lib.parse(["learning_rate=3e-4, 1e-3,3e-3", "weight_decay=0,1e-4"])
  joined = members_lib.parse("learning_rate=3e-4,1e-3,3e-3;weight_decay=0,1e-4")
  assert flags == joined
  assert list(flags) == ["learning_rate", "weight_decay"]
  assert flags["learning_rate"] == (3e-4, 1e-3, 3e-3)
  assert members_lib.parse("") == {} and members_lib.parse([]) == {}


def test_canonical_reads_back_as_the_same_grid():
  specs = ["weight_decay=1e-5,0", "learning_rate=0.1,3e-4;label_smoothing=0.1"]
  text = members_lib.canonical(specs)
  assert members_lib.parse(text) == members_lib.parse(specs)
  assert members_lib.canonical(text) == text
  assert text.startswith("weight_decay=")  # The order given is kept.
  assert members_lib.canonical("") == ""


@pytest.mark.parametrize("spec,words", [
    ("learning_rate=abc", ["'abc' is not a number"]),
    ("learning_rate=", ["lists no values"]),
    ("learning_rate=,", ["lists no values"]),
    ("learning_rate", ["expected NAME=V1,V2"]),
    ("=1,2", ["expected NAME=V1,V2"]),
    ("learning_rate=nan", ["--learning_rate must be a finite number"]),
    ("lr=1e-3", ["unknown name 'lr'", "learning_rate, weight_decay"]),
    ("learning_rate=1e-3;learning_rate=3e-3", ["learning_rate twice"]),
    (["learning_rate=1e-3", "learning_rate=3e-3"], ["learning_rate twice"]),
    ("learning_rate=1e-3,0.001", ["lists 0.001 twice"]),
    ("seed=1,2", ["--num_seeds"]),
])
def test_bad_specs_are_one_line_errors(spec, words):
  with pytest.raises(UserError) as caught:
    members_lib.parse(spec)
  message = str(caught.value)
  assert "\n" not in message
  for word in words:
    assert word in message


@pytest.mark.parametrize("name", ["mlp_hidden", "model", "batch_size",
                                  "dropout", "epochs", "hidden", "optimizer"])
def test_names_that_change_the_program_point_to_compare(name):
  with pytest.raises(UserError, match=r"experiments/compare\.py --train=") as e:
    members_lib.parse(f"{name}=1,2")
  assert f"cannot vary {name}" in str(e.value)
  assert "learning_rate" in str(e.value)  # It lists what can be swept.


@pytest.mark.parametrize("spec,overrides,words", [
    ("learning_rate=1e-3,-1e-3", {}, ["--learning_rate must be positive"]),
    ("label_smoothing=0,1.5", {}, ["--label_smoothing must be in [0, 1)"]),
    ("grad_clip=-1", {}, ["--grad_clip must be >= 0"]),
    ("momentum=0,0.9", {}, ["changes nothing with --optimizer=adam",
                            "--optimizer=sgd"]),
    ("eps=1e-7,1e-3", {"optimizer": "sgd"}, ["--optimizer=rmsprop"]),
    ("warmup_epochs=1,2", {"schedule": "cosine"},
     ["--schedule=warmup_cosine"]),
    ("learning_rate=1e-3", {"num_seeds": 0}, ["--num_seeds must be positive"]),
])
def test_members_refuse_values_no_run_accepts(spec, overrides, words):
  with pytest.raises(UserError) as caught:
    members_lib.from_config(_config(**overrides), spec)
  assert "\n" not in str(caught.value)
  for word in words:
    assert word in str(caught.value)


def test_members_are_grid_point_major_seed_minor():
  config = _config(seed=5, num_seeds=2, learning_rate=1.0)
  members = members_lib.from_config(
      config, "learning_rate=1e-3,3e-3;weight_decay=0,1e-4")
  assert [m.index for m in members] == list(range(8))
  assert [m.seed for m in members] == [5, 6] * 4
  assert [(m.values["learning_rate"], m.values["weight_decay"])
          for m in members[::2]] == [(1e-3, 0), (1e-3, 1e-4), (3e-3, 0),
                                     (3e-3, 1e-4)]
  for m in members:
    assert m.config == config.replace(seed=m.seed, num_seeds=1, **m.values)
  assert members_lib.label(members[3]) == "learning_rate=0.001, weight_decay=0.0001, seed=6"


def test_no_sweep_is_one_grid_point_of_seeds():
  config = _config(seed=3, num_seeds=3)
  members = members_lib.from_config(config, "")
  assert [(m.index, m.seed, m.values) for m in members] == [
      (0, 3, {}), (1, 4, {}), (2, 5, {})]
  assert members[1].config == config.replace(seed=4, num_seeds=1)
  assert members_lib.label(members[0]) == "seed=3"
  assert members_lib.hyperparams(members, 10) == {}
  single = members_lib.from_config(_config(), "")
  assert len(single) == 1 and single[0].config == _config()


def test_hyperparams_stack_the_swept_values_in_member_order():
  config = _config(num_seeds=2, schedule="warmup_cosine", epochs=4)
  members = members_lib.from_config(config, "warmup_epochs=0.5,2;grad_clip=0,1")
  stacked = members_lib.hyperparams(members, steps_per_epoch=10)
  assert set(stacked) == {"warmup_steps", "grad_clip"}
  assert stacked["warmup_steps"].dtype == np.int32
  assert stacked["grad_clip"].dtype == np.float32
  np.testing.assert_array_equal(stacked["warmup_steps"], [5] * 4 + [20] * 4)
  np.testing.assert_array_equal(stacked["grad_clip"], [0, 0, 1, 1] * 2)
  for m in members:  # Each row is what the member's own run holds.
    own = optim.hyperparams(m.config, 10, swept=stacked)
    for key, values in stacked.items():
      assert values[m.index] == own[key]


def test_a_hyperparameter_read_by_several_optimizers(monkeypatch):
  """`reads` may name several values: eps read by rmsprop and sgd is held by
  both, and --sweep refuses it with adam, naming both."""
  entry = dataclasses.replace(optim.HYPERPARAMS["eps"],
                              reads=("optimizer", ("rmsprop", "sgd")))
  monkeypatch.setitem(optim.HYPERPARAMS, "eps", entry)
  monkeypatch.setitem(optim.ONLY_WITH, "eps",
                      ("optimizer", ("rmsprop", "sgd")))
  assert entry.held(_config(optimizer="sgd"))
  assert entry.held(_config(optimizer="rmsprop"))
  assert not entry.held(_config(optimizer="adam"))
  assert len(members_lib.from_config(_config(optimizer="sgd"),
                                     "eps=1e-7,1e-3")) == 2
  with pytest.raises(UserError, match="only --optimizer=rmsprop or "
                     "--optimizer=sgd reads it"):
    members_lib.from_config(_config(optimizer="adam"), "eps=1e-7,1e-3")

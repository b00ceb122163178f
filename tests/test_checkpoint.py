"""Restoring a checkpoint whatever devices wrote it, and telling damage apart
from a checkpoint that is intact but does not fit."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.rundir import checkpoints
from mnist_jax.training import optim
from mnist_jax.training import train

CONFIG = models.get_config("linear", "seed")


def _state(config=CONFIG):
  """What a checkpoint holds of a fresh linear model's train state (arrays,
  as a run's state is once on its devices)."""
  model, _ = models.build(config, say=lambda _: None)
  return jax.tree.map(jnp.asarray, checkpoints.tree(train.create_train_state(
      jax.random.key(2), model, optim.make_optimizer(config, 5), (28, 28))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, tree): two checkpoints of a linear model, steps 7 and 14."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state = _state()
  writer = checkpoints.Checkpointer(workdir)
  for step in (7, 14):
    writer.save(step, state, {"epoch": step // 7, "epoch_step": 0,
                              "step": step, "model": "linear",
                              "param_shapes": checkpoints.param_shapes(
                                  state["params"])})
  writer.close()
  return workdir, state


def _copy(saved, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  return workdir


def _step_dir(workdir, step=14):
  return os.path.join(workdir, checkpoints.CHECKPOINT_DIR, str(step))


def _restore(workdir, template=None, model="linear"):
  reader = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    return reader.restore(_state() if template is None else template,
                          model=model)
  finally:
    reader.close()


def test_a_checkpoint_records_no_devices_and_restores_to_the_host(saved,
                                                                  tmp_path):
  """Format 3 saves host arrays (no sharding of the devices that wrote them is
  recorded) and restores into a template of shapes only (load_run's) as
  host arrays, whatever devices the restoring process has."""
  workdir = _copy(saved, tmp_path)
  assert not os.path.exists(os.path.join(_step_dir(workdir), "state",
                                         "_sharding"))
  state, meta = _restore(workdir, jax.eval_shape(_state))
  assert meta["step"] == 14 and meta["format"] == checkpoints.FORMAT
  assert sorted(state) == sorted(checkpoints.PARTS)
  lh.assert_trees_equal(state, saved[1])
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, np.ndarray)


FORMAT2 = os.path.join(lh.ROOT, "tests", "data", "format2", "mlp")


def test_an_old_checkpoint_written_over_two_devices_restores_on_one(tmp_path):
  """A format-2 checkpoint whose arrays orbax recorded as split over 2
  devices (the members of a split host) restores in a process with one."""
  from mnist_jax.rundir import folder  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(FORMAT2, workdir)
  [step] = os.listdir(os.path.join(workdir, "checkpoints"))
  path = os.path.join(_step_dir(workdir, step), "state", "_sharding")
  config = folder.read_config(workdir)
  template = checkpoints.tree(lh.template(config))
  whole = _restore(workdir, template, model="mlp")[0]
  with open(path) as f:
    names = json.load(f)
  two = json.dumps({
      "sharding_type": "NamedSharding", "shape": [2], "axis_names": ["replica"],
      "axis_types": ["AxisType.Auto"], "partition_spec": [],
      "device_mesh": {"mesh": [{"id": 0}, {"id": 1}]}})
  with open(path, "w") as f:
    json.dump({name: two for name in names}, f)
  assert jax.device_count() == 1
  state, meta = _restore(workdir, template, model="mlp")
  assert meta["step"] == int(step) and meta.get("format", 2) == 2
  lh.assert_trees_equal(state, whole)


def _flip_array_byte(workdir):
  """Flips a byte in the middle of the largest array data file."""
  folder = os.path.join(_step_dir(workdir), "state", "ocdbt.process_0", "d")
  path = max((os.path.join(folder, f) for f in os.listdir(folder)),
             key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x5A]))


def _truncate_arrays(workdir):
  folder = os.path.join(_step_dir(workdir), "state", "ocdbt.process_0", "d")
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), "r+b") as f:
      f.truncate(10)


def _meta_path(workdir):
  return os.path.join(_step_dir(workdir), "meta", "metadata")


def _edit_meta(workdir, edit, checksum=True):
  """Rewrites the meta record; `checksum`: with a matching checksum (as
  another mnist_jax would have written it), else leaves the old one."""
  with open(_meta_path(workdir)) as f:
    meta = json.load(f)
  edit(meta)
  if checksum:
    meta["meta_checksum"] = checkpoints._meta_checksum(meta)  # pylint: disable=protected-access
  with open(_meta_path(workdir), "w") as f:
    json.dump(meta, f)


def _cut_meta(workdir):
  with open(_meta_path(workdir), "w") as f:
    f.write('{"epo')


DAMAGE = {
    "flipped_array_byte": (_flip_array_byte,
                           "its arrays do not match the checksum saved"),
    "truncated_arrays": (_truncate_arrays, "its arrays do not read back"),
    "missing_meta": (lambda w: os.remove(_meta_path(w)),
                     "its meta record is missing"),
    "unparsable_meta": (_cut_meta, "its meta record is unreadable"),
    "edited_meta": (lambda w: _edit_meta(w, lambda m: m.update(epoch=5),
                                         checksum=False),
                    "its meta record does not match the checksum"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_called_damage_and_names_the_checkpoint_before(
    saved, tmp_path, damage):
  workdir = _copy(saved, tmp_path)
  spoil, reason = DAMAGE[damage]
  spoil(workdir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir)
  message = str(e.value)
  assert "\n" not in message
  assert f"the checkpoint {_step_dir(workdir)} is damaged or truncated (" in message
  assert reason in message
  assert message.endswith(f"delete that folder to go back to the checkpoint "
                          f"before it, {_step_dir(workdir, 7)}")
  reader = checkpoints.Checkpointer(workdir, read_only=True)
  assert reader.damage(7) is None
  if damage != "flipped_array_byte":  # Only the run's structure finds that.
    assert reason in reader.damage(14)


def test_damage_of_the_only_checkpoint_advises_no_deletion(saved, tmp_path):
  workdir = _copy(saved, tmp_path)
  shutil.rmtree(_step_dir(workdir, 7))
  _truncate_arrays(workdir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir)
  message = str(e.value)
  assert "is damaged or truncated" in message and "delete" not in message
  assert "no earlier checkpoint to go back to: pass another --workdir" in message
  assert "--overwrite" not in message


def _unknown_orbax_error(workdir, monkeypatch):
  """Makes the first read of the state fail as orbax might for a reason
  mnist_jax cannot name (here its old topology error); later reads work."""
  reader = checkpoints.Checkpointer(workdir, read_only=True)
  manager = reader._manager  # pylint: disable=protected-access
  real, failed = manager.restore, []

  def restore(step, args=None):
    if "state" in args and not failed:
      failed.append(step)
      raise ValueError("Topology mismatch detected. The checkpoint was saved "
                       "with a different topology than the current one.")
    return real(step, args=args)

  monkeypatch.setattr(manager, "restore", restore)
  return reader


def _format(value):
  return lambda w: _edit_meta(w, lambda m: m.update(format=value))


# Intact checkpoints a run cannot use: (how, the words that say why).
MISMATCH = {
    "unknown_orbax_error": (None, "is intact but does not fit this run's "
                            "train state (Topology mismatch detected"),
    "another_optimizer": ("sgd", "is intact but does not fit this run's "
                          "train state (User-provided restore item"),
    "another_model": ("mlp", "was written by model 'linear', not 'mlp'"),
    "other_shapes": ("bias", "holds another model's parameters"),
    "newer_format": (_format(checkpoints.FORMAT + 1),
                     "written by a newer mnist_jax"),
    "older_format": (_format(1), "written by an older mnist_jax"),
}


@pytest.mark.parametrize("case", list(MISMATCH))
def test_an_intact_checkpoint_that_does_not_fit_is_not_damage(
    saved, tmp_path, monkeypatch, case):
  """Whatever does not match, the message says what and never advises
  deleting the checkpoint or starting over."""
  workdir = _copy(saved, tmp_path)
  how, words = MISMATCH[case]
  template, model, reader = _state(), "linear", None
  if case == "unknown_orbax_error":
    reader = _unknown_orbax_error(workdir, monkeypatch)
  elif case == "another_optimizer":
    template = _state(models.get_config("linear", "seed", optimizer="sgd"))
  elif case == "another_model":
    model = "mlp"
  elif case == "other_shapes":
    template = dict(template, params=jax.tree.map(
        lambda p: np.zeros(p.shape[:-1] + (11,), p.dtype), template["params"]))
  else:
    how(workdir)
  reader = reader or checkpoints.Checkpointer(workdir, read_only=True)
  with pytest.raises(checkpoints.CheckpointError) as e:
    reader.restore(template, model=model)
  message = str(e.value)
  assert "\n" not in message and words in message, message
  assert "damaged" not in message and "delete" not in message
  assert "--overwrite" not in message
  assert "another --workdir" in message
  assert reader.damage(14) is None
  if not case.endswith("_format"):
    lh.assert_trees_equal(_restore(workdir)[0], saved[1])  # Still whole.

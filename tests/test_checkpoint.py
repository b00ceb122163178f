"""Checkpoints: one lacking a newer part of the state restores; damage is
told apart from an intact checkpoint that does not fit, in one line."""

import json
import os
import shutil

import pytest

from conftest import assert_trees_equal, initial_state
from mnist_jax import files
from mnist_jax import models
from mnist_jax.rundir import checkpoints

CONFIG = models.get_config("linear", "seed")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, tree): two checkpoints of a linear model, steps 7 and 14."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state = checkpoints.tree(initial_state(CONFIG, 5))
  writer = checkpoints.manager(workdir, keep=3)
  for step in (7, 14):
    checkpoints.save(writer, step, state, {"epoch": step // 7, "epoch_step": 0,
                                           "step": step, "model": "linear"})
  writer.close()
  return workdir, state


def _step_dir(workdir, step=14):
  return os.path.join(workdir, checkpoints.CHECKPOINT_DIR, str(step))


def _restore(workdir):
  state, meta = checkpoints.restore(workdir, initial_state(CONFIG, 5),
                                    "linear")
  return checkpoints.tree(state), meta


def test_a_part_the_checkpoint_lacks_comes_from_the_fresh_state(tmp_path):
  """A TrainState field newer than the checkpoint: as the fresh state has it."""
  workdir = str(tmp_path / "run")
  state = checkpoints.tree(initial_state(CONFIG, 5))
  writer = checkpoints.manager(workdir, keep=3)
  checkpoints.save(writer, 3, {k: v for k, v in state.items()
                               if k != "opt_state"}, {"epoch": 1})
  writer.close()
  restored, meta = _restore(workdir)
  assert meta["epoch"] == 1
  assert_trees_equal(restored, state)


def _arrays(workdir):
  """Step 14's array data files, the largest first."""
  folder = os.path.join(_step_dir(workdir), "state", "ocdbt.process_0", "d")
  return sorted((os.path.join(folder, f) for f in os.listdir(folder)),
                key=os.path.getsize, reverse=True)


def _flip_array_byte(workdir):
  with open(_arrays(workdir)[0], "r+b") as f:
    f.seek(os.path.getsize(f.name) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x5A]))


def _meta_path(workdir):
  return os.path.join(_step_dir(workdir), "meta", "metadata")


def _edit_meta(workdir, edit, checksum=True):
  """The meta record edited, its checksum matching (another mnist_jax's)."""
  with open(_meta_path(workdir)) as f:
    meta = json.load(f)
  edit(meta)
  if checksum:
    meta["meta_checksum"] = checkpoints._meta_checksum(meta)  # pylint: disable=protected-access
  files.write_json(_meta_path(workdir), meta)


DAMAGE = {
    "flipped_array_byte": (_flip_array_byte,
                           "its arrays do not match the checksum saved"),
    "truncated_arrays": (lambda w: [os.truncate(p, 10) for p in _arrays(w)],
                         "its arrays do not read back"),
    "missing_meta": (lambda w: os.remove(_meta_path(w)),
                     "its meta record does not read back: File"),
    "edited_meta": (lambda w: _edit_meta(w, lambda m: m.update(epoch=5),
                                         checksum=False),
                    "its meta record does not match the checksum"),
}


def _failing_reads(monkeypatch, error, once=True):
  """orbax's reads of the state raise `error` (once: the first)."""
  manager = checkpoints._ocp().CheckpointManager  # pylint: disable=protected-access
  real, failed = manager.restore, []

  def restore(self, step, args=None):
    if "state" in args and not (once and failed):
      failed.append(step)
      raise error
    return real(self, step, args=args)

  monkeypatch.setattr(manager, "restore", restore)


def _format(value):  # The meta record's format (None: none).
  return lambda w: _edit_meta(w, lambda m: m.pop("format") if value is None
                              else m.update(format=value))


DENIED = "cannot be read by this user ("
# Intact checkpoints a run cannot use or read: (a spoiler of the folder or an
# error orbax raises, the words that say why). Others: test_refusals.py.
MISMATCH = {
    "unknown_orbax_error": (ValueError(
        "Topology mismatch detected. The checkpoint was saved with a "
        "different topology than the current one."),
                            "is intact but does not fit this run's train "
                            "state (Topology mismatch detected"),
    "newer_format": (_format(checkpoints.FORMAT + 1),
                     "written by a newer mnist_jax"),
    "older_format": (_format(1), "written by an older mnist_jax (checkpoint "
                     "format 1;"),
    "no_format": (_format(None), "an older mnist_jax (checkpoint format 1;"),
    "permission_error": (PermissionError(13, "Permission denied",
                                         "meta/metadata"), DENIED),
    "permission_denied": (ValueError('PERMISSION_DENIED: Error opening "zarr" '
                                     'driver'), DENIED),
}


@pytest.mark.parametrize("case", [*DAMAGE, "the_only_checkpoint", *MISMATCH])
def test_damage_is_told_apart_from_a_checkpoint_that_does_not_fit(
    saved, tmp_path, monkeypatch, case):
  """One line. Damage: what, and deleting it goes back to the one before (the
  only one: no deletion); intact but unfit or unreadable: what, no deletion."""
  workdir = shutil.copytree(saved[0], str(tmp_path / "run"))
  only = case == "the_only_checkpoint"
  if only:
    shutil.rmtree(_step_dir(workdir, 7))
  how, words = {**DAMAGE, **MISMATCH}["truncated_arrays" if only else case]
  if isinstance(how, Exception):
    _failing_reads(monkeypatch, how, once=words != DENIED)
  else:
    how(workdir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir)
  message = str(e.value)
  assert "\n" not in message and words in message, message
  assert "--overwrite" not in message
  if case in MISMATCH:
    assert "damaged" not in message and "delete" not in message
    assert "another --workdir" in message
    if words == DENIED:
      assert message.startswith(f"the checkpoint {_step_dir(workdir)} {words}")
      assert message.endswith(
          f"give read access to {checkpoints.directory(workdir)}, or pass "
          "another --workdir")
    elif case == "unknown_orbax_error":
      assert_trees_equal(_restore(workdir)[0], saved[1])  # Still whole.
    return
  assert (f"the checkpoint {_step_dir(workdir)} is damaged or truncated ("
          f"{words}") in message
  if only:
    assert message.endswith("; the run has no earlier checkpoint to go back "
                            "to: pass another --workdir to train anew")
    return
  assert message.endswith(f"delete that folder to go back to the checkpoint "
                          f"before it, {_step_dir(workdir, 7)}")
  shutil.rmtree(_step_dir(workdir))  # As the message advises.
  restored, meta = _restore(workdir)
  assert meta["step"] == 7
  assert_trees_equal(restored, saved[1])


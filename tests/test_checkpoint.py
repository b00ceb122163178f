"""Checkpoints: what they hold of the train state, retention, restoring
whatever devices wrote them, and telling damage apart from a checkpoint that
is intact but does not fit, in one line wherever a run folder is restored."""

import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch_helpers as lh
from mnist_jax.training import population
from mnist_jax import models
from mnist_jax.rundir import checkpoints
from mnist_jax import modes as run_folder
from mnist_jax.training import train

CONFIG = models.get_config("linear", "seed")


def _state(config=CONFIG):
  """What a checkpoint holds of a fresh linear model's train state (arrays,
  as a run's state is once on its devices)."""
  model, _ = models.build(config, say=lambda _: None)
  return checkpoints.tree(population.initial_state(config, model, 5, (28, 28, 1)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, tree): two checkpoints of a linear model, steps 7 and 14."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state = _state()
  writer = checkpoints.manager(workdir, keep=3)
  for step in (7, 14):
    checkpoints.save(writer, step, state, {"epoch": step // 7, "epoch_step": 0,
                                           "step": step, "model": "linear"})
  writer.close()
  return workdir, state


def _copy(saved, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  return workdir


def _step_dir(workdir, step=14):
  return os.path.join(workdir, checkpoints.CHECKPOINT_DIR, str(step))


def _restore(workdir, template=None, model="linear"):
  return checkpoints.read(workdir, _state() if template is None else template,
                          model)


def _as_data(state):
  """`state`'s leaves as numpy arrays (typed PRNG keys as their data)."""
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(
      jnp.result_type(x), jax.dtypes.prng_key) else x)
          for x in jax.tree.leaves(state)]


def _same(a, b) -> bool:
  a, b = _as_data(a), _as_data(b)
  return len(a) == len(b) and all(map(np.array_equal, a, b))


def test_restore_gives_back_the_whole_trained_state(tmp_path):
  """Every field training changes is saved (PARTS follow the TrainState), and
  the random streams, derived from the seed, are the fresh state's: the state
  checkpoints.restore (resume's, report's and predict's one path) gives back
  equals the one saved, field for field: host arrays, restored into a
  template of shapes only (load_run's), whatever devices wrote them (no
  sharding is recorded)."""
  model, _ = models.build(CONFIG, say=lambda _: None)
  fresh = lambda: population.initial_state(CONFIG, model, 5, (28, 28, 1))
  rng = np.random.default_rng(0)
  state = fresh()
  for _ in range(3):
    state, _ = jax.jit(train.train_step)(state, {
        "image": rng.integers(0, 256, (8, 28, 28, 1), np.uint8),
        "label": rng.integers(0, 10, 8), "valid": np.bool_(True)})
  assert {"step", "params", "opt_state"} <= {
      part for part in checkpoints.PARTS
      if not _same(getattr(state, part), getattr(fresh(), part))}
  workdir = str(tmp_path / "run")
  writer = checkpoints.manager(workdir, keep=3)
  checkpoints.save(writer, 3, checkpoints.tree(state), checkpoints.record(
      CONFIG, epoch=1, step=3))
  writer.close()
  restored, meta = checkpoints.restore(workdir, jax.eval_shape(fresh),
                                       "linear")
  assert meta["step"] == 3 and type(restored) is type(state)
  assert meta["format"] == checkpoints.FORMAT
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "3", "state",
                                         "_sharding"))
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(
      restored.params))
  restored = restored.replace(keys=fresh().keys)  # A shape-only template's.
  assert _same(restored, state)


def test_a_part_the_checkpoint_lacks_comes_from_the_fresh_state(tmp_path):
  """A field added to the TrainState since a checkpoint was written: that
  checkpoint still restores, the new part as the fresh state has it."""
  workdir, state = str(tmp_path / "run"), _state()
  writer = checkpoints.manager(workdir, keep=3)
  checkpoints.save(writer, 3, {k: v for k, v in state.items()
                               if k != "opt_state"}, {"epoch": 1})
  writer.close()
  restored, meta = _restore(workdir)
  assert meta["epoch"] == 1
  lh.assert_trees_equal(restored, state)


def test_the_newest_checkpoints_are_kept(prepared, tmp_path):
  """--keep_checkpoints of them, saved every --checkpoint_every epochs and
  after the last."""
  mnist_dir, data_dir = prepared
  config = models.get_config(
      "linear", "seed", epochs=5, batch_size=100, checkpoint_every=2,
      keep_checkpoints=2, report=False, mnist_dir=mnist_dir,
      data_dir=data_dir)
  workdir = str(tmp_path / "run")
  run_folder.train_and_evaluate(config, workdir, stream=io.StringIO())
  # 6 steps per epoch; saves after epochs 2, 4 and 5 (the last); keeps two.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["24",
                                                                       "30"]
  assert checkpoints.steps(workdir) == [24, 30]
  meta = checkpoints.latest_meta(workdir)
  assert meta["epoch"] == 5 and meta["done"]


def _flip_array_byte(workdir, step=14):
  """Flips a byte in the middle of the largest array data file."""
  folder = os.path.join(_step_dir(workdir, step), "state", "ocdbt.process_0",
                        "d")
  path = max((os.path.join(folder, f) for f in os.listdir(folder)),
             key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x5A]))


def _truncate_arrays(workdir, step=14):
  folder = os.path.join(_step_dir(workdir, step), "state", "ocdbt.process_0",
                        "d")
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
                     "its meta record does not read back: File"),
    "unparsable_meta": (_cut_meta, "its meta record does not read back"),
    "edited_meta": (lambda w: _edit_meta(w, lambda m: m.update(epoch=5),
                                         checksum=False),
                    "its meta record does not match the checksum"),
}


@pytest.mark.parametrize("damage", [*DAMAGE, "the_only_checkpoint"])
def test_damage_is_called_damage_and_names_the_checkpoint_before(
    saved, tmp_path, damage):
  """One line naming the damaged checkpoint and why; deleting it, as it
  advises, goes back to the one before; the only one: no deletion advised."""
  workdir = _copy(saved, tmp_path)
  only = damage == "the_only_checkpoint"
  if only:
    shutil.rmtree(_step_dir(workdir, 7))
  spoil, reason = DAMAGE["truncated_arrays" if only else damage]
  spoil(workdir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir)
  message = str(e.value)
  assert "\n" not in message and "--overwrite" not in message
  assert (f"the checkpoint {_step_dir(workdir)} is damaged or truncated ("
          f"{reason}") in message
  if only:
    assert message.endswith("; the run has no earlier checkpoint to go back "
                            "to: pass another --workdir to train anew")
    return
  assert message.endswith(f"delete that folder to go back to the checkpoint "
                          f"before it, {_step_dir(workdir, 7)}")
  shutil.rmtree(_step_dir(workdir))  # As the message advises.
  restored, meta = _restore(workdir)
  assert meta["step"] == 7
  lh.assert_trees_equal(restored, saved[1])


def _failing_reads(monkeypatch, error, once=True):
  """orbax's reads of the state raise `error` (once: the first only)."""
  manager = checkpoints._ocp().CheckpointManager  # pylint: disable=protected-access
  real, failed = manager.restore, []

  def restore(self, step, args=None):
    if "state" in args and not (once and failed):
      failed.append(step)
      raise error
    return real(self, step, args=args)

  monkeypatch.setattr(manager, "restore", restore)


def _format(value):
  """The meta record's format number (None: none), as another mnist_jax."""
  return lambda w: _edit_meta(w, lambda m: m.pop("format") if value is None
                              else m.update(format=value))


def _file_for_folder(workdir):
  shutil.rmtree(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))
  with open(os.path.join(workdir, checkpoints.CHECKPOINT_DIR), "w") as f:
    f.write("not a folder")


DENIED = "cannot be read by this user ("
# Intact checkpoints a run cannot use (or may not read): (how, the words that
# say why). how: a config or model to restore with, a spoiler of the folder,
# or an error orbax raises.
MISMATCH = {
    "unknown_orbax_error": (ValueError(
        "Topology mismatch detected. The checkpoint was saved with a "
        "different topology than the current one."),
                            "is intact but does not fit this run's train "
                            "state (Topology mismatch detected"),
    "another_optimizer": ("sgd", "is intact but does not fit this run's "
                          "train state (User-provided restore item"),
    "another_model": ("mlp", "config.json says model 'mlp', but the run's "
                      "checkpoints were written by model 'linear'"),
    "other_shapes": ("bias", "holds another model's parameters"),
    "newer_format": (_format(checkpoints.FORMAT + 1),
                     "written by a newer mnist_jax"),
    "older_format": (_format(1), "written by an older mnist_jax (checkpoint "
                     "format 1;"),
    "no_format": (_format(None), "an older mnist_jax (checkpoint format 1;"),
    "a_file_for_the_folder": (_file_for_folder, "is a file where the run's "
                              "checkpoints go; move it away, or pass another "
                              "--workdir"),
    "permission_error": (PermissionError(13, "Permission denied",
                                         "meta/metadata"), DENIED),
    "permission_denied": (ValueError('PERMISSION_DENIED: Error opening "zarr" '
                                     'driver'), DENIED),
}


@pytest.mark.parametrize("case", list(MISMATCH))
def test_an_intact_checkpoint_that_does_not_fit_is_not_damage(
    saved, tmp_path, monkeypatch, case):
  """Whatever does not match, or may not be read (then it asks for read
  access), the one-line message says what and never advises deleting the
  checkpoint or starting over; the checkpoint is left whole."""
  workdir = _copy(saved, tmp_path)
  how, words = MISMATCH[case]
  template, model = _state(), "linear"
  if isinstance(how, Exception):
    _failing_reads(monkeypatch, how, once=words != DENIED)
  elif how == "sgd":
    template = _state(models.get_config("linear", "seed", optimizer="sgd"))
  elif how == "mlp":
    model = "mlp"
  elif how == "bias":
    template = dict(template, params=jax.tree.map(
        lambda p: np.zeros(p.shape[:-1] + (11,), p.dtype), template["params"]))
  else:
    how(workdir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir, template, model)
  message = str(e.value)
  assert "\n" not in message and words in message, message
  assert "damaged" not in message and "delete" not in message
  assert "--overwrite" not in message
  assert "another --workdir" in message
  if words == DENIED:
    assert message.startswith(f"the checkpoint {_step_dir(workdir)} {words}")
    assert message.endswith(f"give read access to {os.path.dirname(_step_dir(workdir))}, "
                            "or pass another --workdir")
  elif case in ("unknown_orbax_error", "another_optimizer", "another_model",
                "other_shapes"):
    lh.assert_trees_equal(_restore(workdir)[0], saved[1])  # Still whole.


def test_a_record_of_other_steps_per_epoch_is_refused_in_one_line():
  """The data changed size since (a resumable --mnist_dir elsewhere)."""
  meta = {"epoch": 2, "epoch_step": 3, "step": 23}  # 10 steps per epoch.
  checkpoints.check_fits(meta, 10, "D")
  for steps in (9, 3):
    with pytest.raises(checkpoints.CheckpointError, match=(
        r"^the latest checkpoint in D \(step 23, epoch 2\) does not fit this "
        f"run's {steps} steps per epoch .*or pass another --workdir$")):
      checkpoints.check_fits(meta, steps, "D")


def _damaged_run(tiny_run, tmp_path, spoil):
  """A copy of a finished run whose one checkpoint `spoil` spoiled: its
  folder and that checkpoint's."""
  workdir = str(tmp_path / "damaged")
  shutil.copytree(tiny_run, workdir)
  [step] = os.listdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))
  spoil(workdir, step)
  return workdir, _step_dir(workdir, step)


@pytest.mark.slow
@pytest.mark.parametrize("spoil", [_flip_array_byte, _truncate_arrays])
def test_launch_refuses_a_damaged_run_in_one_line(tiny_run, tmp_path, spoil):
  """launch.py's report and predict: exit 1, one line and nothing else (none
  of what orbax's abandoned reads leave behind), nothing written."""
  workdir, step = _damaged_run(tiny_run, tmp_path, spoil)
  image = str(tmp_path / "one.png")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  before = lh.snapshot(workdir)
  for mode in ("report", "predict"):
    p = subprocess.run(
        [sys.executable, "launch.py", f"--mode={mode}",
         f"--workdir={workdir}", f"--image={image}"], cwd=lh.ROOT,
        capture_output=True, text=True, timeout=120, env=lh.child_env())
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    # The flipped byte lands in an array (the checksum finds it) or in what
    # orbax needs to read the arrays back (compressed chunks).
    assert lines[0].startswith(f"error: the checkpoint {step} is damaged or "
                               "truncated (its arrays do not "), lines
    assert lines[0].endswith("); the run has no earlier checkpoint to go back "
                             "to: pass another --workdir to train anew")
    assert lh.snapshot(workdir) == before

"""A non-finite loss stops the run, names the step, and keeps the last good checkpoint."""

import re

import jax
import jax.numpy as jnp
import numpy as np

import launch_helpers as lh
from mnist_jax import models
from mnist_jax.training import control
from mnist_jax.training import train

# Adam with a learning rate warming up linearly towards 1e38: the linear
# model's logits overflow float32 after a few epochs (about step 130 of
# 37-step epochs here), so some checkpoints are written before it diverges.
NAN_FLAGS = ("--model=linear", "--batch_size=16", "--chunk_steps=8",
             "--optimizer=adam", "--schedule=warmup_cosine",
             "--label_smoothing=0.1", "--learning_rate=1e38",
             "--warmup_epochs=100", "--epochs=200")


def test_divergence_stops_with_step_epoch_status_and_good_checkpoint(
    prepared, tmp_path):
  mnist_dir, data_dir = prepared
  workdir = str(tmp_path / "nan")
  rc, out, err = lh.run([*NAN_FLAGS, f"--mnist_dir={mnist_dir}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"])
  assert rc == 3, err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: training diverged"), err
  found = re.search(r"at step (\d+) \(epoch (\d+), step (\d+) of (\d+)\)", err)
  step, epoch, epoch_step, per_epoch = map(int, found.groups())
  assert per_epoch == 600 // 16 and step == (epoch - 1) * per_epoch + epoch_step
  assert epoch >= 2, "diverged before the first checkpoint: raise warmup_epochs"
  assert "--learning_rate" in err and "last good checkpoint" in err

  rows = lh.metrics(workdir)
  assert rows[-1]["diverged"] is True and rows[-1]["step"] == step
  assert rows[-1]["epoch"] == epoch and "diverged" in rows[-1]["message"]
  assert not any(r.get("diverged") for r in rows[:-1])
  assert [r["epoch"] for r in rows[:-1]] == list(range(1, epoch))

  state, meta = lh.restore_latest(workdir)
  assert meta["epoch"] == epoch - 1 and int(state.step) < step
  assert all(np.isfinite(np.asarray(p)).all()
             for p in jax.tree.leaves(state.params))


def _chunk_setup(lr_scale=1.0):
  config = models.get_config("linear", "seed", batch_size=4)
  state = train.create_train_state(jax.random.PRNGKey(0), config,
                                   models.get("linear").build(config), 10)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (32, 28, 28)),
                       jnp.uint8)
  labels = jnp.arange(32, dtype=jnp.int32) % 10
  batch_idx = jnp.arange(32, dtype=jnp.int32).reshape(8, 4)
  return config, state, images, labels, batch_idx


def test_chunk_reports_first_non_finite_step_and_skips_the_rest():
  config, state, images, labels, batch_idx = _chunk_setup()
  chunk = train.make_train_chunk(config)
  valid = jnp.ones(8, bool)
  state, sums, bad, _ = chunk(state, images, labels, batch_idx, valid)
  assert int(bad) == -1 and int(state.step) == 8 and np.isfinite(sums["loss"])

  # Diverge at the chunk's third step: the steps after it count, update nothing.
  inf = config.replace(learning_rate=float("inf"))
  state = train.create_train_state(jax.random.PRNGKey(0), inf,
                                   models.get("linear").build(config), 10)
  state, _, bad, _ = train.make_train_chunk(inf)(
      state, images, labels, batch_idx, valid.at[:2].set(False))
  assert int(bad) == 2 and int(state.step) == 6
  frozen = jax.device_get(state.params)

  # Parameters already not finite: no step trains, bad is the chunk's start.
  state, sums, bad, _ = chunk(state, images, labels, batch_idx, valid)
  assert int(bad) == 6 and int(state.step) == 14 and float(sums["count"]) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, b)


def test_chunk_reports_non_finite_update_of_its_last_step():
  config, state, images, labels, batch_idx = _chunk_setup()
  chunk = train.make_train_chunk(config.replace(learning_rate=float("inf")))
  state = train.create_train_state(
      jax.random.PRNGKey(0), config.replace(learning_rate=float("inf")),
      models.get("linear").build(config), 10)
  valid = jnp.zeros(8, bool).at[0].set(True)  # One step: its loss is finite.
  state, sums, bad, _ = chunk(state, images, labels, batch_idx, valid)
  assert np.isfinite(sums["loss"]) and int(bad) == 1


def test_the_run_stops_once_every_member_has():
  assert control.all_diverged(np.int32(-1)) is None
  assert control.all_diverged(np.array([-1, -1])) is None
  assert control.all_diverged(np.int32(7)) == 7
  assert control.all_diverged(np.array([-1, 12, 9, -1])) is None
  assert control.all_diverged(np.array([20, 12, 9, 20])) == 20
  # Members 0 and 3 stopped at the chunk from step 20 on; 1 and 2 before.
  assert control.diverged_after(np.array([23, 12, -1, 21]), 20) == [0, 3]


def test_message_and_row_say_where():
  text = control.diverged_message(75, 3, 37, "the last good checkpoint, C/74, is kept")
  assert text.startswith("training diverged: ")
  assert "at step 75 (epoch 3, step 1 of 37)" in text
  assert "C/74, is kept" in text and "--learning_rate" in text and "\n" not in text
  assert control.diverged_row(75, 3, text) == {"epoch": 3, "step": 75,
                                               "diverged": True, "message": text}

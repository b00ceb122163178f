"""Bad input: one line on stderr, a non-zero exit, no traceback, nothing written."""

import gzip
import io
import json
import os
import shutil

import numpy as np
import pytest

import launch_helpers as lh
from conftest import write_idx_dir

RUN = ("--noreport", "--model=mlp", "--mlp_hidden=8", "--epochs=1", "--batch_size=32",
       "--chunk_steps=50")


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
  """Finished mlp and linear runs with the same flags otherwise (the linear
  model has no --mlp_hidden)."""
  mnist_dir, data_dir = prepared
  root = tmp_path_factory.mktemp("runs")
  made = {}
  for model in ("mlp", "linear"):
    workdir = str(root / model)
    flags = [f for f in RUN if model == "mlp" or "mlp_hidden" not in f]
    rc, _, err = lh.run([*flags, f"--model={model}", f"--mnist_dir={mnist_dir}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"])
    assert rc == 0, err
    made[model] = workdir
  made["data_dir"] = data_dir
  return made


def _copy_run(runs, tmp_path, name="mlp"):
  target = str(tmp_path / "run")
  shutil.copytree(runs[name], target)
  return target


def _latest_checkpoint(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return os.path.join(folder, max(os.listdir(folder), key=int))


def _unfinished(workdir):
  """Marks a run folder not finished (its process killed while finishing),
  so that its training command reads its checkpoint."""
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({**record, "finished": False}, f)


def _truncated_checkpoint(runs, tmp_path):
  """A run killed while finishing, whose checkpoint was truncated since."""
  workdir = _copy_run(runs, tmp_path)
  _unfinished(workdir)
  state = os.path.join(_latest_checkpoint(workdir), "state")
  for dirpath, _, filenames in os.walk(state):
    for name in filenames:
      path = os.path.join(dirpath, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
  return workdir


def _other_models_checkpoint(runs, tmp_path):
  workdir = _copy_run(runs, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  shutil.copytree(os.path.join(runs["linear"], "checkpoints"),
                  os.path.join(workdir, "checkpoints"))
  return workdir


def _missing_checkpoint(runs, tmp_path):
  """A run killed while finishing, whose checkpoints are gone since."""
  workdir = _copy_run(runs, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  _unfinished(workdir)
  return workdir


def _corrupt_config(runs, tmp_path):
  workdir = _copy_run(runs, tmp_path)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write('{"config": {"model": ')
  return workdir


def _not_a_run_folder(runs, tmp_path):
  folder = tmp_path / "stuff"
  folder.mkdir()
  (folder / "notes.txt").write_text("mine")
  return str(folder)


def _data(tmp_path, damage):
  """A fresh IDX folder with one file damaged, and an empty tfds data dir."""
  mnist_dir = write_idx_dir(tmp_path / "idx", n_train=100, n_test=50,
                            compress=False)
  images = os.path.join(mnist_dir, "train-images-idx3-ubyte")
  labels = os.path.join(mnist_dir, "train-labels-idx1-ubyte")
  if damage == "truncated":
    with open(images, "r+b") as f:
      f.truncate(5000)
  elif damage == "swapped":
    shutil.copy(labels, images)
  elif damage == "missing":
    os.remove(labels)
  elif damage == "bad_gzip":
    with open(images, "rb") as f:
      raw = gzip.compress(f.read())
    os.remove(images)
    with open(images + ".gz", "wb") as f:
      f.write(raw[:len(raw) // 2])
  elif damage == "bad_label":
    with open(labels, "r+b") as f:
      f.seek(8)
      f.write(bytes([42]))
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  return [f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={tmp_path / 'new'}"]


# (id, extra flags or a function (runs, tmp_path) -> workdir or flag list,
#  expected exit status, a piece of the expected message).
CASES = [
    ("unknown_model", ["--model=vgg"], 1, "unknown model 'vgg'"),
    ("unknown_mode", ["--mode=play"], 2, "--mode"),
    ("zero_batch", ["--batch_size=0"], 2, "flag --batch_size=0: 0 is not an "
     "integer in the range [1, 2147483647]"),
    ("batch_over_train_set", ["--batch_size=100000"], 1, "is larger than the"),
    ("bad_optimizer", ["--optimizer=lion"], 2, "flag --optimizer=lion: value "
     "should be one of <adam|adamw|rmsprop|sgd>"),
    ("bad_int", ["--epochs=ten"], 2, "--epochs=ten"),
    ("bad_list", ["--mlp_hidden=a,b"], 2, "flag --mlp_hidden=a,b: it takes "
     "comma-separated integers in the range [1, 16777216], e.g. 512,256"),
    ("unknown_flag", ["--epoch=3"], 2, "Unknown command line flag 'epoch'"),
    ("binary_flagfile", lambda r, t: [f"--flagfile={_binary(t)}"], 2,
     "is not a text file of flags (it holds bytes that are not UTF-8 text)"),
    ("stray_argument", ["train"], 1, "unexpected arguments"),
    ("unwritable_workdir", ["--workdir=/sys/mnist_jax_run"], 1, "is not writable"),
    ("workdir_under_file", lambda r, t: [f"--workdir={_file(t)}/run"], 1,
     "is a file"),
    ("workdir_is_file", lambda r, t: [f"--workdir={_file(t)}"], 1,
     "is a file, not a folder"),
    ("not_a_run_folder", _not_a_run_folder, 1, "is not a run folder"),
    ("other_settings", lambda r, t: [f"--workdir={_copy_run(r, t)}",
                                     "--epochs=2"], 1,
     "holds a run with other settings (epochs: 1 -> 2)"),
    ("corrupt_config", _corrupt_config, 1,
     "config.json holds settings this mnist_jax cannot use (JSONDecodeError"),
    ("truncated_checkpoint", _truncated_checkpoint, 1, "damaged or truncated"),
    ("other_models_checkpoint", _other_models_checkpoint, 1,
     "the run's checkpoints were written by model 'linear'"),
    ("missing_checkpoint", _missing_checkpoint, 1, "checkpoints are missing"),
    ("truncated_idx", lambda r, t: _data(t, "truncated"), 1, "is truncated"),
    ("swapped_idx", lambda r, t: _data(t, "swapped"), 1, "is not an IDX images file"),
    ("missing_idx", lambda r, t: _data(t, "missing"), 1, "is missing from"),
    ("bad_gzip_idx", lambda r, t: _data(t, "bad_gzip"), 1, "corrupt or truncated gzip"),
    ("bad_label_idx", lambda r, t: _data(t, "bad_label"), 1, "labels must be 0-9"),
    ("damaged_prepared", lambda r, t: _damaged_prepared(t), 1, "is damaged"),
    ("mnist_dir_not_folder", lambda r, t: [f"--mnist_dir={_file(t)}",
                                           f"--data_dir={t / 'tfds'}"], 1,
     "is not a folder"),
]


def _damaged_prepared(tmp_path):
  """A data dir whose prepared arrays were cut short."""
  data_dir = tmp_path / "tfds"
  folder = data_dir / "mnist" / "3.0.1"
  folder.mkdir(parents=True)
  out = io.BytesIO()
  np.savez(out, **{name: np.zeros((10, 28, 28), np.uint8) for name in
                   ("train_images", "test_images")})
  (folder / "mnist_jax_arrays.npz").write_bytes(out.getvalue()[:3000])
  return [f"--data_dir={data_dir}", f"--workdir={tmp_path / 'new'}"]


def _binary(tmp_path):
  path = tmp_path / "flags.bin"
  path.write_bytes(bytes(range(128, 256)))
  return str(path)


def _file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("not a folder")
  return str(path)


# Cases that repeat another's check on other data: CI runs them (-m slow).
# Every flag's range is refused in process (test_failures.py) and at the
# command line for every numeric flag (test_flag_fuzz.py, slow), so one
# range case here proves the one-line path.
SLOW_CASES = {
    "workdir_under_file", "swapped_idx", "bad_gzip_idx", "bad_label_idx",
    "damaged_prepared", "mnist_dir_not_folder", "missing_checkpoint",
    "bad_list", "stray_argument", "missing_idx", "workdir_is_file"}


# Cases on finished runs (the `runs` fixture trains two): slow, as the fast
# suite checks the same in process (test_folder.py, test_checkpoint.py).
RUNS_CASES = {"other_settings", "corrupt_config", "truncated_checkpoint",
              "other_models_checkpoint", "missing_checkpoint"}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c[0], marks=[pytest.mark.slow] * (
        c[0] in SLOW_CASES | RUNS_CASES)) for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, prepared, request,
                                                  tmp_path):
  _, extra, status, message = case
  mnist_dir, data_dir = prepared
  base = [*RUN, f"--mnist_dir={mnist_dir}", f"--data_dir={data_dir}",
          f"--workdir={tmp_path / 'new'}"]
  runs = request.getfixturevalue("runs") if case[0] in RUNS_CASES else {}
  if callable(extra):
    extra = extra(runs, tmp_path)
    if isinstance(extra, str):
      extra = [f"--workdir={extra}"]
  before = lh.snapshot(str(tmp_path), data_dir, mnist_dir, *runs.values())
  rc, out, err = lh.run([*base, *extra], timeout=60)
  assert rc == status, (out, err)
  assert "Traceback" not in err + out
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("error: ") and message in lines[0], lines[0]
  assert lh.snapshot(str(tmp_path), data_dir, mnist_dir, *runs.values()) == before


@pytest.mark.slow  # test_folder.py checks the same in process.
def test_another_models_command_on_a_run_folder_is_one_line(prepared, runs,
                                                            tmp_path):
  """--model=linear with --workdir of an mlp run: refused in one line that
  names the model, not a KeyError of a setting the linear model lacks."""
  mnist_dir, data_dir = prepared
  workdir = _copy_run(runs, tmp_path)
  flags = [f for f in RUN if "mlp_hidden" not in f and "--model=" not in f]
  before = lh.snapshot(workdir)
  rc, out, err = lh.run(["--model=linear", *flags, f"--mnist_dir={mnist_dir}",
                         f"--data_dir={data_dir}", f"--workdir={workdir}"],
                        timeout=60)
  assert rc == 1, (out, err)
  assert "Traceback" not in err + out
  [line] = err.strip().splitlines()
  assert line.startswith(f"error: {workdir} holds a run with other settings")
  assert "model: 'mlp' -> 'linear'" in line and "another --workdir" in line
  assert lh.snapshot(workdir) == before


def test_debug_shows_the_traceback(prepared, tmp_path):
  rc, _, err = lh.run(["--model=vgg", "--debug", f"--workdir={tmp_path / 'x'}"])
  assert rc != 0 and "Traceback" in err and "UserError" in err

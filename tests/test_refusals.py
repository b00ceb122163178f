"""Every refusal of flags, data, images and run folders: one table of argv ->
exit status and message (docs/troubleshooting.md's rows, the README's exit
statuses 1 and 2). Each is one `error:` line on stderr, no traceback, and
nothing written. The cases run through launch.py's own command path in one
child process; those in REAL also as `python launch.py`, to the same line."""

import fcntl
import gzip
import io
import os
import shlex
import shutil
import subprocess
import sys

from PIL import Image
import pytest

import launch_helpers as lh
from conftest import declared_png, seven, write_idx_dir
from mnist_jax import files
from mnist_jax import models
from mnist_jax.errors import UserError
from mnist_jax.data import pipeline
from mnist_jax.models import registry
from mnist_jax.rundir import checkpoints
from mnist_jax.rundir.record import read_record


class Case:
  """What a case's argv is made of, in its own folder `tmp`."""

  def __init__(self, tmp, prepared, tiny_run):
    self.tmp, self.tiny_run = tmp, tiny_run
    self.mnist_dir, self.data_dir = prepared
    tmp.mkdir()

  def train(self, *flags, data=None):
    """A small mlp's training command, then `flags`."""
    return ["--model=mlp", "--mlp_hidden=8", "--epochs=1", "--batch_size=32",
            *(data or [f"--mnist_dir={self.mnist_dir}",
                       f"--data_dir={self.data_dir}"]),
            f"--workdir={self.tmp / 'new'}", *flags]

  def file(self, name="a_file", data=b"not a folder"):
    (self.tmp / name).write_bytes(data)
    return str(self.tmp / name)

  def run(self, finished=True, **settings):
    """A copy of the finished one-epoch mlp run (`finished` False: killed
    while finishing), `settings` changed in its config.json."""
    workdir = shutil.copytree(self.tiny_run, str(self.tmp / "run"))
    record = {**read_record(workdir), "finished": finished}
    record["config"].update(settings)
    files.write_json(os.path.join(workdir, "config.json"), record)
    return workdir

  def locked(self, workdir):
    """`workdir`, its lock held (by the test process, to its end) as a run's."""
    self.held = os.open(workdir, os.O_RDONLY)
    fcntl.flock(self.held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return workdir

  def repeat(self, workdir, *flags):
    """The run's training command (config.json's "repeat"), then `flags`."""
    command = read_record(workdir)["repeat"]
    return [*shlex.split(command)[2:], f"--workdir={workdir}", *flags]

  def idx(self, damage):
    """A fresh IDX folder with one file damaged: the training command."""
    mnist_dir = write_idx_dir(self.tmp / "idx", n_train=100, n_test=50,
                              compress=False)
    images = os.path.join(mnist_dir, "train-images-idx3-ubyte")
    labels = os.path.join(mnist_dir, "train-labels-idx1-ubyte")
    with open(images, "rb") as f:
      raw = f.read()
    if damage == "missing":
      os.remove(labels)
    elif damage == "unreadable":  # A file no read of succeeds, even root's.
      os.remove(images)
      os.symlink("/proc/self/mem", images)
    elif damage == "gzip":
      os.remove(images)
      self.file(images + ".gz", gzip.compress(raw)[:len(raw) // 4])
    else:  # Rewrites the images file.
      self.file(images, {
          "truncated": raw[:5000], "longer": raw + bytes(7),
          "header": raw[:10],
          "swapped": open(labels, "rb").read(),
          "size": raw[:8] + (14).to_bytes(4, "big") * 2 + raw[16:16 + 19600],
          "count": raw[:4] + (99).to_bytes(4, "big") + raw[8:16 + 99 * 784],
          "claims": raw[:4] + (2**31).to_bytes(4, "big") + raw[8:]}[damage])
    return self.train(data=[f"--mnist_dir={mnist_dir}",
                            f"--data_dir={self.tmp / 'tfds'}"])

  def damaged_prepared(self):
    """A copy of the prepared data dir, its arrays cut short."""
    data_dir = shutil.copytree(self.data_dir, self.tmp / "tfds")
    os.truncate(data_dir / "mnist" / "3.0.1" / "mnist_jax_arrays.npz", 3000)
    return self.train(data=[f"--data_dir={data_dir}"])

  def predict(self, *images, flags=(), workdir=None):
    """--mode=predict on a copy of the run, of the files `images`
    ((name, bytes or a PIL image or None: a folder))."""
    paths = []
    for name, content in images:
      path = self.tmp / name
      if content is None:
        path.mkdir()
      elif isinstance(content, bytes):
        path.write_bytes(content)
      else:
        content.save(path)
      paths.append(str(path))
    return ["--mode=predict", f"--workdir={workdir or self.run()}",
            f"--image={','.join(paths)}", *flags]


def _truncated(c):
  """A run killed while finishing, whose checkpoint was truncated since."""
  workdir = c.run(finished=False)
  folder = os.path.join(workdir, "checkpoints")
  latest = os.path.join(folder, max(os.listdir(folder), key=int), "state")
  for folder, _, names in os.walk(latest):
    for name in names:
      path = os.path.join(folder, name)
      os.truncate(path, os.path.getsize(path) // 3)
  return c.repeat(workdir)


def _other_data(c):
  """The unfinished run's command on another (smaller) data set, prepared."""
  mnist_dir = write_idx_dir(c.tmp / "idx", n_train=100, n_test=50)
  pipeline.prepare("mnist", str(c.tmp / "tfds"), mnist_dir)
  return c.repeat(c.run(finished=False), f"--mnist_dir={mnist_dir}",
                  f"--data_dir={c.tmp / 'tfds'}")


def _config_in_place_of(c, what, mode):
  """The run's command in `mode`, its config.json text that is not JSON or
  (unreadable even by root) a folder."""
  workdir = c.run()
  command = _in(c, mode, workdir)
  os.remove(os.path.join(workdir, "config.json"))
  if what == "folder":
    os.mkdir(os.path.join(workdir, "config.json"))
  else:
    c.file("run/config.json", b'{"config": {"model": ')
  return command


def _in(c, mode, workdir):
  """The command of `mode` on the run folder (train: its own command)."""
  if mode == "--mode=train":
    return c.repeat(workdir)
  return [mode, f"--workdir={workdir}", f"--image={c.file('7.png', b'')}"]


def _no_checkpoint(c, finished=False, instead=None):
  """The run without its checkpoints; instead: "file" or (an empty) "folder"
  in their place."""
  workdir = c.run(finished=finished)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  if instead == "file":
    c.file("run/checkpoints", b"x")
  elif instead == "folder":  # Stopped before its first checkpoint.
    os.mkdir(os.path.join(workdir, "checkpoints"))
    os.remove(os.path.join(workdir, "metrics.jsonl"))
  return workdir


def _runs(c):
  """A folder of two run folders, cnn-new the newer."""
  for name, age in (("mlp-old", 100), ("cnn-new", 0)):
    (c.tmp / name).mkdir()
    (c.tmp / name / "config.json").write_text("{}")
    os.utime(c.tmp / name / "config.json", (1e9 - age, 1e9 - age))
  return c.tmp


SEVEN = seven()
_png = io.BytesIO()
SEVEN.save(_png, "PNG")
CUT_PNG = _png.getvalue()[:60]  # Its pixels cut short.
PAD = "nothing was changed"
FOLDERS = ["--mode=report", "--mode=predict"]

# (id, argv: a list of flags after a small training command, or a function
#  of a Case, exit status, a piece of the one error line).
CASES = [
    # Flags and settings.
    ("unknown_flag", ["--epoch=3"], 2, "error: Unknown command line flag "
     "'epoch'", "; see python launch.py --help"),
    ("not_an_int", ["--epochs=ten"], 2, "error: flag --epochs=ten: invalid "
     "literal for int() with base 10: 'ten'; see python launch.py --help"),
    ("not_a_choice", ["--optimizer=lion"], 2, "flag --optimizer=lion: value "
     "should be one of <adam|adamw|rmsprop|sgd>"),
    ("not_a_list", ["--mlp_hidden=a,b"], 2, "flag --mlp_hidden=a,b: it takes "
     "comma-separated integers in the range [1, 16777216], e.g. 512,256"),
    ("empty_list", ["--model=cnn", "--cnn_features="], 2,
     "flag --cnn_features=: it takes comma-separated integers"),
    ("binary_flagfile", lambda c: [f"--flagfile={c.file('f', bytes(range(128, 256)))}"],
     2, "is not a text file of flags (it holds bytes that are not UTF-8 text)"),
    ("stray_argument", ["train"], 1, "error: unexpected arguments ['train']; "
     "flags take the form --name=value (see --help)"),
    ("unknown_model", ["--model=vgg"], 1, "error: unknown model 'vgg'; choose "
     f"one of {', '.join(registry.MODELS)}"),
    ("unknown_preset", ["--preset=nope"], 1, "model 'mlp' has no preset 'nope'"
     "; choose one of "),
    ("other_models_setting", ["--model=linear"], 1, "--mlp_hidden is a setting "
     "of --model=mlp, not of --model=linear; leave it out"),
    ("cnn_no_pixels", lambda c: ["--model=cnn", "--cnn_kernel=7",
                                 "--cnn_features=4,4,4", "--dry_run"], 1,
     "leave no pixels of a 28x28 mnist image; ", "or --cnn_padding=SAME"),
    ("cnn_no_pixels_same", lambda c: ["--model=cnn", "--cnn_padding=SAME",
                                      "--cnn_features=4,4,4,4,4", "--dry_run"],
     1, "--cnn_padding=SAME leave no pixels", "; pass fewer --cnn_features"),
    # A range of each kind (every numeric flag's: test_fuzz.py).
    ("zero_epochs", ["--epochs=0"], 2, "flag --epochs=0: 0 is not an integer "
     "in the range [1, 1000000]"),
    ("zero_rate", ["--learning_rate=0"], 2, "flag --learning_rate=0: 0.0 is "
     "not a finite number in (0, inf)"),
    ("inf_decay", ["--weight_decay=inf"], 2, "flag --weight_decay=inf: inf is "
     "not a finite number in [0, inf)"),
    ("nan_elastic", ["--augment", "--augment_elastic=nan"], 2, "flag "
     "--augment_elastic=nan: nan is not a finite number in [0, 100]"),
    ("whole_fraction", ["--val_fraction=1"], 2, "flag --val_fraction=1: 1.0 "
     "is not a finite number in [0, 1)"),
    ("seeds_past_2_32", ["--seed=4294967295", "--num_seeds=2"], 1,
     "--seed=4294967295 --num_seeds=2 would use seeds up to 4294967296, past "
     "2**32 - 1; pass a smaller --seed"),
    ("too_many_members", ["--num_seeds=2001", "--sweep=learning_rate=1e-3,"
                          "2e-3,3e-3,4e-3,5e-3"], 1, "--sweep and --num_seeds "
     "make 10005 members; one program trains at most 10000"),
    ("sweep_range", ["--sweep=weight_decay=0,inf"], 2, "error: --sweep: flag "
     "--weight_decay=inf: inf is not a finite number in [0, inf)"),
    ("sweep_shape", ["--sweep=batch_size=16,32"], 1, "--sweep cannot vary "
     "batch_size: only the optimizer and loss numbers", "python experiments/"
     "compare.py --train=mlp --vary=batch_size=16/32"),
    ("sweep_seed", ["--sweep=seed=1,2"], 1, "--sweep=seed: seeds are not "
     "swept; --seed=S --num_seeds=N trains the seeds"),
    ("sweep_not_number", ["--sweep=learning_rate=1e-3,x"], 2,
     "--sweep=learning_rate: 'x' is not a number"),
    ("sweep_unknown", ["--sweep=speed=1,2"], 1, "--sweep: unknown name "
     "'speed'; sweepable: "),
    ("sweep_empty", ["--sweep=learning_rate="], 1, "--sweep=learning_rate= "
     "lists no values"),
    ("sweep_twice", ["--sweep=learning_rate=0.1,0.1"], 1, "--sweep="
     "learning_rate lists 0.1 twice; give each value once"),
    ("sweep_and_flag", ["--learning_rate=0.1", "--sweep=learning_rate=0.1,0.2"],
     1, "--learning_rate and --sweep=learning_rate=... both set learning_rate"),
    ("sweep_no_val", lambda c: ["--model=cnn", "--preset=best", "--dry_run",
                                "--sweep=learning_rate=1,2"], 1, "error: --sweep chooses its "
     "member by validation accuracy, and --val_fraction=0 holds out none; "
     "pass e.g. --val_fraction=0.1"),
    ("target_no_val", ["--target_accuracy=0.9", "--val_fraction=0"], 1,
     "--target_accuracy stops on validation accuracy, and --val_fraction=0 "
     "holds out none; pass e.g. --val_fraction=0.1"),
    ("pmap_members", ["--num_seeds=2", "--parallel=pmap"], 1, "the 2 members "
     "of --num_seeds and --sweep are split over the devices, not pmapped; "
     "leave out --parallel=pmap"),
    ("report_no_workdir", lambda c: ["--mode=report"], 1, "error: --mode="
     "report needs --workdir=DIR, a run folder"),
    ("predict_no_image", lambda c: ["--mode=predict", f"--workdir={c.run()}"],
     1, "error: --mode=predict needs --image=FILE[,FILE...]"),
    ("dry_run_mode", lambda c: ["--mode=report", "--dry_run",
                                f"--workdir={c.run()}"], 1,
     "--dry_run shows what training would do; leave it out with --mode=report"),
    # The run folder.
    ("unwritable_workdir", ["--workdir=/sys/mnist_jax_run"], 1,
     "--workdir=/sys/mnist_jax_run is not writable (/sys"),
    ("workdir_is_file", lambda c: c.train(f"--workdir={c.file()}"), 1,
     "cannot be a run folder: ", "is a file, not a folder; pass a folder path"),
    ("workdir_under_file", lambda c: c.train(f"--workdir={c.file()}/run"), 1,
     "/a_file is a file, not a folder"),
    ("not_a_run_folder", lambda c: c.train(f"--workdir={c.file('stuff') and c.tmp}"),
     1, "is not empty and holds no config.json, so it is not a run folder; "
     "pass a new or empty folder"),
    ("other_settings", lambda c: c.repeat(c.run(), "--epochs=2"), 1,
     "holds a run with other settings (epochs: 1 -> 2); to resume that run, "
     "run the command in its config.json (\"repeat\") with --workdir=",
     "; to train these settings there instead, add --overwrite, which deletes "
     "its checkpoints, logs and report; or pass another --workdir"),
    *((f"config_not_json{m[6:]}", lambda c, m=m: _config_in_place_of(
        c, "text", m), 1,
       "config.json holds settings this mnist_jax cannot use (JSONDecodeError",
       f"; {PAD} (its checkpoints and logs are untouched): restore it from a "
       "copy, or pass another --workdir") for m in ["--mode=train", *FOLDERS]),
    ("config_unreadable", lambda c: _config_in_place_of(
        c, "folder", "--mode=report"), 1,
     f"config.json cannot be read (Is a directory), so the run's settings are "
     f"unknown; {PAD}"),
    *((f"edited_model{m[6:]}", lambda c, m=m: _in(c, m, c.run(model="linear")),
       1, "config.json says model 'linear', but the run's "
       "checkpoints were written by model 'mlp' (was one of them edited or "
       f"replaced?); {PAD}: if config.json was edited, set its \"model\" back "
       "to 'mlp'; or pass another --workdir") for m in ["--mode=train", *FOLDERS]),
    ("unknown_config_key", lambda c: ["--mode=report", f"--workdir={c.run(speed=1)}"],
     1, "unknown config keys ['speed']; the known ones are python launch.py "
     "--help's flags"),
    ("in_use", lambda c: c.repeat(c.locked(c.run(finished=False))), 1,
     "/run is in use: another process holds its lock (", "/run/.lock names "
     "it); wait for it to end, or pass another --workdir"),
    ("in_use_report", lambda c: ["--mode=report", f"--workdir={c.locked(c.run())}"],
     1, "/run/.lock names it); wait for it to end, then run this again"),
    ("folder_of_runs", lambda c: ["--mode=report", f"--workdir={_runs(c)}"], 1,
     "/config.json does not exist: --workdir must be a run folder written by "
     "launch.py; ", "holds 2 run folder(s): pass one, e.g. --workdir=",
     "/cnn-new (the newest)"),
    # Checkpoints.
    ("truncated_checkpoint", _truncated, 1, "is damaged or truncated"),
    ("other_widths", lambda c: ["--mode=report", f"--workdir={c.run(mlp_hidden=[32])}"],
     1, "holds another model's parameters ("),
    ("other_optimizer", lambda c: ["--mode=report", f"--workdir={c.run(optimizer='sgd')}"],
     1, "is intact but does not fit this run's train state ("),
    ("checkpoints_gone", lambda c: c.repeat(_no_checkpoint(c)), 1,
     "trained to the end, but its report cannot be written: its checkpoints "
     "are missing from "),
    ("finished_checkpoints_gone", lambda c: c.predict(
        ("7.png", SEVEN), workdir=_no_checkpoint(c, True)), 1, "/run finished, but its checkpoints "
     "are gone from ", "put them back, or train it again with its training "
     "command (config.json's \"repeat\"), --workdir=", "/run and --overwrite, "
     "which deletes its logs and report"),
    ("no_checkpoint_yet", lambda c: [
        "--mode=report", f"--workdir={_no_checkpoint(c, instead='folder')}"], 1,
     "has no complete checkpoint yet (its training stopped before the first "
     "was saved); train it first"),
    ("checkpoints_a_file", lambda c: c.repeat(_no_checkpoint(c, instead="file")), 1,
     "is a file where the run's checkpoints go; move it away, or pass another "
     "--workdir"),
    # 540 // 32 steps an epoch; then 90 // 32.
    ("other_steps_per_epoch", _other_data, 1, "(step 16, epoch 1) does not fit "
     "this run's 2 steps per epoch (were the data or the batch size changed?)"),
    # Data.
    ("batch_over_train_set", ["--batch_size=100000"], 1, "--batch_size=100000 "
     "is larger than the 540 training examples; pass a smaller one"),
    ("all_held_out", ["--val_fraction=0.999"], 1, "--val_fraction=0.999 holds "
     "out all 600 training examples, leaving none to train on"),
    ("data_dir_a_file", lambda c: c.train(data=[
        f"--mnist_dir={c.mnist_dir}", f"--data_dir={c.file()}"]), 1,
     "error: preparing mnist in ", "/a_file failed: ", "File exists"),
    ("offline", lambda c: c.train(data=[f"--data_dir={c.tmp / 'tfds'}"]), 1,
     "error: mnist is not prepared in ", "/tfds and the network is unreachable:"
     " pass --mnist_dir=DIR (a folder with the four IDX files) or "
     "--data_dir=DIR (where it is already prepared)"),
    ("idx_unreadable", lambda c: c.idx("unreadable"), 1, "error: cannot read ",
     "/train-images-idx3-ubyte: Input/output error"),
    ("mnist_dir_not_folder", lambda c: c.train(data=[
        f"--mnist_dir={c.file()}", f"--data_dir={c.tmp / 'tfds'}"]), 1,
     "is not a folder; pass the folder that holds the four IDX files"),
    ("missing_idx", lambda c: c.idx("missing"), 1, "train-labels-idx1-ubyte"
     "[.gz] is missing from "),
    ("bad_gzip", lambda c: c.idx("gzip"), 1, "is a corrupt or truncated gzip "
     "file ("),
    ("truncated_idx", lambda c: c.idx("truncated"), 1, "is truncated: 4984 "
     "data bytes for 78400 expected"),
    ("header_idx", lambda c: c.idx("header"), 1, "is truncated: 10 bytes, "
     "shorter than an IDX images header"),
    ("longer_idx", lambda c: c.idx("longer"), 1, "is longer than its header "
     "says"),
    ("swapped_idx", lambda c: c.idx("swapped"), 1, "is not an IDX images file "
     "(magic 0x00000801, expected 0x00000803)"),
    ("image_size_idx", lambda c: c.idx("size"), 1, "holds 14x14 images; 28x28 "
     "expected"),
    ("count_idx", lambda c: c.idx("count"), 1, "has 99 images but "),
    ("claims_idx", lambda c: c.idx("claims"), 1, "claims 2147483648 images; "
     "that is not a valid count"),
    ("damaged_prepared", lambda c: c.damaged_prepared(), 1, "/mnist/3.0.1 is "
     "damaged (", "delete that folder to prepare it again"),
    # Images.
    ("image_missing", lambda c: c.predict(flags=[f"--image={c.tmp}/no.png"]),
     1, "/no.png does not exist; check the path"),
    ("image_pattern", lambda c: c.predict(flags=[f"--image={c.tmp}/*.jpg"]),
     1, "/*.jpg matches no file; check the pattern"),
    ("image_empty_folder", lambda c: c.predict(("pics", None)), 1,
     "/pics is a folder with no image file in it"),
    ("image_empty", lambda c: c.predict(("e.png", b"")), 1,
     "/e.png is empty (0 bytes); pass a PNG or JPEG file"),
    ("image_unknown", lambda c: c.predict(("t.png", b"text")), 1,
     "/t.png is not an image (unknown format)"),
    ("image_cut", lambda c: c.predict(("cut.png", CUT_PNG)), 1,
     "/cut.png cannot be read (image file is truncated); pass a PNG or JPEG"),
    ("image_bomb", lambda c: c.predict(("big.png", declared_png(20000, 20000))),
     1, "/big.png is too large to be a digit image; pass a smaller one"),
    ("image_blank", lambda c: c.predict(("b.png", Image.new("L", (28, 28)))),
     1, "/b.png has no digit on it (no strokes stand out from the background)"),
    ("one_seed_ensemble", lambda c: c.predict(("7.png", SEVEN),
                                              flags=["--ensemble"]), 1,
     "--ensemble averages the seeds of the run's chosen grid point, and this "
     "run has one seed there"),
]
# Those run as `python launch.py` too: a flag absl refuses (exit 2), a run's
# UserError (exit 1).
REAL = {"unknown_flag", "other_settings"}


@pytest.fixture(scope="module")
def refused(prepared, tiny_run, tmp_path_factory):
  """{id: (the child's result, snapshot before, after, what a real process
  said)} of every case; "debug": the child's result of one with --debug."""
  root = tmp_path_factory.mktemp("refusals")
  argvs, watched = {}, {}
  for name, make, *_ in CASES:
    c = Case(root / name, prepared, tiny_run)
    argvs[name] = c.train(*make) if isinstance(make, list) else make(c)
    watched[name] = (str(c.tmp), *prepared, tiny_run)
  argvs["debug"] = ["--model=vgg", "--debug", f"--workdir={root / 'debug'}"]
  before = {name: lh.snapshot(*folders) for name, folders in watched.items()}
  results = lh.in_one_process(argvs)
  real = {name: subprocess.Popen(
      [sys.executable, "launch.py", *argvs[name]], cwd=lh.ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=lh.child_env()) for name in REAL}
  said = {name: (proc.wait(timeout=300), proc.stderr.read())
          for name, proc in real.items()}
  return {"debug": results["debug"], **{
      name: (results[name], before[name], lh.snapshot(*folders), said.get(name))
      for name, folders in watched.items()}}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_refusal_is_one_line_its_exit_status_and_writes_nothing(refused,
                                                                  case):
  name, _, status, *pieces = case
  result, before, after, real = refused[name]
  assert result["crash"] is None, result["crash"]
  lines = [l for l in result["err"].splitlines() if l.strip()]
  assert result["code"] == status, result
  assert len(lines) == 1 and lines[0].startswith("error: "), result
  assert all(piece in lines[0] for piece in pieces), lines[0]
  assert "Traceback" not in result["out"] + result["err"]
  assert after == before
  if real:
    assert real == (status, result["err"]), real


def test_checkpoints_orbax_cannot_open_are_refused_in_one_line(tmp_path):
  """Found as a run saves its first checkpoint, so not in the table."""
  os.symlink(tmp_path / "nowhere" / "x", tmp_path / "checkpoints")
  with pytest.raises(checkpoints.CheckpointError, match=(
      f"^cannot open the checkpoints in {tmp_path / 'checkpoints'} \\(.+\\); "
      "check that this user can read and write that folder, or pass another "
      "--workdir$")):
    checkpoints.manager(str(tmp_path), keep=2)


def test_debug_shows_the_traceback(refused):
  """--debug: the error is raised out of launch.py's command path (Python then
  prints its traceback and exits 1)."""
  crash = refused["debug"]["crash"]
  assert crash.startswith("Traceback") and "UserError: unknown model" in crash


def test_a_setting_python_misspells_is_refused_in_one_line():
  """get_config (or a custom preset) naming a setting no model declares."""
  with pytest.raises(UserError, match=r"^unknown setting --speed; see "
                     r"python launch.py --help$"):
    models.get_config("mlp", speed=1)

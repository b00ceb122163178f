"""A run with its data already prepared starts training without the slow imports."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import startup  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_first_step_needs_neither_tfds_nor_orbax_nor_matplotlib(prepared, tmp_path):
  """tfds (data cached), orbax (nothing to restore yet), matplotlib (plots
  come at the end) and scipy.ndimage (predict's) cost over a second of
  start-up between them."""
  _, data_dir = prepared
  cmd = [sys.executable, "-c", startup._PROBE.format(root=ROOT),  # pylint: disable=protected-access
         "--model=mlp", "--preset=seed", "--mlp_hidden=8", "--epochs=1",
         "--batch_size=50", f"--data_dir={data_dir}", f"--workdir={tmp_path}/run"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("STARTUP ")][-1]
  marks = json.loads(line[len("STARTUP "):])
  assert marks["heavy_modules_loaded"] == []
  assert (marks["imported_launch"] <= marks["data_loaded"] <=
          marks["state_ready"] <= marks["compiled"] <= marks["first_step"])


def test_a_cached_dataset_loads_without_tfds(prepared):
  _, data_dir = prepared
  code = ("import sys; from mnist_jax.data import pipeline; "
          f"a = pipeline.prepare('mnist', {data_dir!r}); "
          "print(len(a['train_labels']), 'tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=True, timeout=120)
  assert out.stdout.split() == ["600", "False"]


def test_preparing_from_idx_files_needs_no_tfds(idx_dir, tmp_path):
  """tfds is for downloads: the IDX files of --mnist_dir are read as they
  are (and not through PNG-encoded records, a minute for MNIST)."""
  code = ("import sys; from mnist_jax.data import pipeline; "
          f"a = pipeline.prepare('mnist', {str(tmp_path)!r}, {idx_dir!r}); "
          "print(len(a['train_labels']), 'tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=True, timeout=120)
  assert out.stdout.split()[-2:] == ["600", "False"]


def test_launch_does_not_import_an_installed_pytorch(tmp_path):
  """tensorboardX imports PyTorch where it is installed (about 0.9 s at
  every start); launch.py keeps it out unless the process has imported it.
  A stand-in `torch` on the path records whether it was imported."""
  fake = tmp_path / "torch"
  fake.mkdir()
  (fake / "__init__.py").write_text(
      "import os\nopen(os.environ['TORCH_MARK'], 'w').close()\n"
      "Tensor = object\n")
  mark = tmp_path / "imported"
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
         "TORCH_MARK": str(mark)}
  code = ("import sys, launch; print('torch' in sys.modules); "
          "import torch; print(torch.Tensor is object)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, env=env, check=True, timeout=120)
  assert out.stdout.split() == ["False", "True"]  # Imported only when asked.
  code = "import torch, launch; print(launch.__name__)"
  subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                 cwd=ROOT, env=env, check=True, timeout=120)
  assert mark.exists()  # A process using PyTorch keeps it.

"""Preparing from IDX files or a download, the cache, the split, the arrays a
model is fed, data errors; on-device augmentation (affine warps, bilinear)."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_images, synthetic_digits, write_idx_dir
from launch_helpers import ROOT
from mnist_jax.data import augment
from mnist_jax.data import datasets
from mnist_jax.data import idx
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError


def _prepared_saying(capfd, said, *args):
  """pipeline.prepare(*args), checking it prints one plain line (`said`, then
  that later runs read the cache) and no warning."""
  capfd.readouterr()
  arrays = pipeline.prepare(*args)
  out, err = capfd.readouterr()
  assert out.splitlines() == [f"{said} (once; later runs read it from there)"]
  assert "\x1b" not in out + err and "\r" not in out + err
  assert "WARNING" not in err
  return arrays


def test_prepare_keeps_every_example_in_tfds_order_and_caches(tmp_path, capfd):
  """From the IDX files, in one plain line: every example in tfds's order (the
  same held out), read from the cache the next time (plain IDX files: below)."""
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  mnist_dir = write_idx_dir(tmp_path / "idx")
  data_dir = str(tmp_path / "tfds")
  arrays = _prepared_saying(
      capfd, f"preparing mnist in {data_dir} from the IDX files in "
      f"{mnist_dir}", "mnist", data_dir, mnist_dir)
  assert arrays["train_images"].dtype == np.uint8
  assert arrays["train_images"].shape == (600, 28, 28, 1)
  for part, seed in (("train", 0), ("test", 1)):
    images, labels = synthetic_digits(len(arrays[f"{part}_labels"]), seed)
    order = sorted(range(len(labels)), key=hashing.Hasher(part).hash_key)
    np.testing.assert_array_equal(arrays[f"{part}_images"], images[order])
    np.testing.assert_array_equal(arrays[f"{part}_labels"], labels[order])
  again = pipeline.prepare("mnist", data_dir)  # No --mnist_dir: the cache's.
  for k in arrays:
    np.testing.assert_array_equal(arrays[k], again[k])


def test_a_damaged_cache_is_prepared_again_once_deleted(prepared, tmp_path):
  """As its refusal advises (its words: test_refusals.py)."""
  mnist_dir, data_dir = prepared
  good = pipeline.prepare("mnist", data_dir)
  copy = str(tmp_path / "tfds")
  shutil.copytree(data_dir, copy)
  folder = os.path.join(copy, "mnist", "3.0.1")
  os.truncate(os.path.join(folder, "mnist_jax_arrays.npz"), 3000)
  with pytest.raises(UserError, match="is damaged"):
    pipeline.prepare("mnist", copy, mnist_dir)
  shutil.rmtree(folder)
  again = pipeline.prepare("mnist", copy, mnist_dir)
  for k in good:
    np.testing.assert_array_equal(good[k], again[k])


@pytest.mark.parametrize("fraction,n_train", [(0.1, 540), (0.0, 600),
                                              (0.5, 300)])
def test_load_holds_out_the_last_fraction_as_raw_arrays(prepared, fraction,
                                                        n_train):
  """Each split: images [N, 28, 28, 1] uint8 as stored (each model scales
  them itself), labels [N] int32; the last fraction of train held out."""
  data = pipeline.load(models.get_config(
      "mlp", val_fraction=fraction, **prepared.settings))
  assert (len(data.train), len(data.val), len(data.test)) == (
      n_train, 600 - n_train, 200)
  np.testing.assert_array_equal(data.val.labels, pipeline.prepare(
      "mnist", prepared.data_dir)["train_labels"][n_train:])
  for part in (data.train, data.val, data.test):
    assert part.images.dtype == np.uint8
    assert part.images.shape[1:] == (28, 28, 1)
    assert part.labels.dtype == np.int32 and len(part) == len(part.images)
  assert data.train.images.max() == 230  # synthetic_digits' ink, unscaled.


class _Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):  # Not on the test's stderr.
    pass


@pytest.fixture
def served(tmp_path, monkeypatch):
  """serve(dataset): a synthetic download served here; returns table(wrong=()),
  which writes checksums.tsv (`wrong`: files given a wrong SHA-256)."""
  folder, servers = tmp_path / "served", []

  def serve(dataset):
    info = datasets.get(dataset)
    files = write_idx_dir(folder / info.archive_folder, n_train=94, n_test=47,
                          dataset=dataset)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    if info.url.endswith(".zip"):
      shutil.make_archive(str(folder / "gzip"), "zip", folder, info.archive_folder)
      url, files = url + "gzip.zip", [folder / "gzip.zip"]
    else:
      files = [os.path.join(files, name) for name in sorted(os.listdir(files))]
    monkeypatch.setitem(datasets.DATASETS, dataset,
                        dataclasses.replace(info, url=url))
    monkeypatch.setattr(pipeline, "CHECKSUMS", str(tmp_path / "checksums.tsv"))

    def table(wrong=()):
      with open(pipeline.CHECKSUMS, "w") as f:
        for path in files:
          raw, name = open(path, "rb").read(), os.path.basename(path)
          digest = "0" * 64 if name in wrong else hashlib.sha256(raw).hexdigest()
          where = url if url.endswith(".zip") else url + name
          f.write(f"{where}\t{len(raw)}\t{digest}\t{name}\n")
    return table
  yield serve
  for server in servers:
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("dataset,wrong", [
    ("mnist", "train-labels-idx1-ubyte.gz"), ("emnist_letters", "gzip.zip")])
def test_a_download_is_checked_by_tfds_then_prepared(served, tmp_path, capfd,
                                                      dataset, wrong):
  """tfds's download manager fetches and checks the files (EMNIST's archive
  too); a mismatch is refused in one line, and nothing is prepared."""
  table = served(dataset)
  table(wrong={wrong})
  with pytest.raises(UserError, match=(
      f"^downloading {dataset} failed \\(NonMatchingChecksumError\\); pass "
      "--mnist_dir=DIR with the four IDX files$")):
    pipeline.prepare(dataset, str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / dataset).exists()
  table()
  arrays = _prepared_saying(
      capfd, f"preparing {dataset} in {tmp_path / 'tfds'} from a download",
      dataset, str(tmp_path / "tfds"))
  expected = pipeline.prepare(dataset, str(tmp_path / "offline"),
                              str(tmp_path / "served" /
                                  datasets.get(dataset).archive_folder))
  for k in expected:
    np.testing.assert_array_equal(arrays[k], expected[k])


def test_network_probe_reports_a_closed_port():
  """A run with no network stops within seconds and says so (its words:
  test_refusals.py): a closed port is unreachable."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))  # Bound, not listening: connections refused.
    assert not pipeline._network_reachable(  # pylint: disable=protected-access
        f"http://127.0.0.1:{s.getsockname()[1]}/", timeout=1.0)


def test_an_unreadable_mnist_dir_is_called_unreadable_not_missing(
    tmp_path, monkeypatch):
  folder = write_idx_dir(tmp_path / "idx", n_train=20, n_test=10)
  os.chmod(folder, 0)
  try:
    if os.access(folder, os.X_OK):  # Root reads any folder: simulate it.
      real_access = os.access
      monkeypatch.setattr(os, "access", lambda path, mode: (
          path != folder and real_access(path, mode)))
    with pytest.raises(idx.IdxError, match=(
        f"^{folder} cannot be read by this user \\(permission denied\\); "
        "give read access to it, or pass another --mnist_dir$")):
      pipeline.find_idx_files(folder)
  finally:
    monkeypatch.undo()
    os.chmod(folder, 0o755)


@pytest.mark.parametrize("compress", [False, True])
def test_another_datasets_files_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, compress):
  folder = write_idx_dir(tmp_path / "idx", n_train=50, n_test=20,
                         compress=compress)
  labels = os.path.join(folder, "train-labels-idx1-ubyte" +
                        (".gz" if compress else ""))
  raw = open(labels, "rb").read()
  # These files stand for MNIST's: their uncompressed labels are its declared.
  monkeypatch.setitem(datasets.DATASETS, "mnist", dataclasses.replace(
      datasets.DATASETS["mnist"], labels_sha256=hashlib.sha256(
          gzip.decompress(raw) if compress else raw).hexdigest()))
  data_dir = tmp_path / "tfds"
  with pytest.raises(idx.IdxError, match=(
      f"^train-labels-idx1-ubyte(.gz)? in {folder} is mnist's, not "
      "fashion_mnist's: pass --dataset=mnist, or a --mnist_dir holding "
      "fashion_mnist's files$")):
    pipeline.prepare("fashion_mnist", str(data_dir), folder)
  assert not data_dir.exists() or not any(data_dir.rglob("*.*"))
  assert len(pipeline.prepare("mnist", str(data_dir), folder)[
      "train_labels"]) == 50
  # And as Fashion-MNIST's published download: its checksums.tsv line.
  monkeypatch.undo()
  table = tmp_path / "checksums.tsv"
  url = datasets.get("fashion_mnist").url + "train-labels-idx1-ubyte.gz"
  table.write_text(f"{url}\t{len(raw)}\t{hashlib.sha256(raw).hexdigest()}\t"
                   "train-labels-idx1-ubyte.gz\n")
  monkeypatch.setattr(pipeline, "CHECKSUMS", str(table))
  with pytest.raises(idx.IdxError, match="is fashion_mnist's, not kmnist's"):
    pipeline.prepare("kmnist", str(tmp_path / "tfds2"), folder)


def _expected(how, x):
  """What the warp `how` makes of x (floats)."""
  x = np.asarray(x, np.float32)
  if how == "identity":
    return x
  if how == "quarter turn":
    return np.rot90(x, -1, axes=(1, 2))
  if how == "shift":  # Down by 2, left by 3: zeros where it came from outside.
    out = np.zeros_like(x)
    out[:, 2:, :-3] = x[:, :-2, 3:]
    return out
  out = x.copy()  # Half a pixel: neighbours averaged.
  out[:, :, 1:] = (x[:, :, :-1] + x[:, :, 1:]) / 2
  return out


@pytest.mark.parametrize("how,angle,shift", [
    ("identity", 0.0, (0.0, 0.0)), ("shift", 0.0, (2.0, -3.0)),
    ("quarter turn", np.pi / 2, (0.0, 0.0)), ("half pixel", 0.0, (0.0, 0.5))])
def test_the_affine_grid_samples_as_it_says(how, angle, shift):
  x = random_images(4)
  rows, cols = augment.affine_grid(x.shape, jnp.full(4, angle), jnp.ones(4),
                                   jnp.tile(jnp.array([shift]), (4, 1)))
  out = np.asarray(augment.sample(x, rows, cols), np.float32)
  expected = _expected(how, x)
  if how == "half pixel":  # The first column reads outside on its left.
    out, expected = out[:, :, 1:], expected[:, :, 1:]
  np.testing.assert_allclose(out, expected, atol=1e-3, rtol=1e-6)
  if how == "identity":
    np.testing.assert_array_equal(augment.augment(jax.random.key(0), x), x)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_each_example_gets_its_own_warp_in_range_and_dtype(dtype):
  """The key decides the warps (typed and raw keys alike); outputs stay in
  the input's range and dtype; the elastic field is smooth, each axis's root
  mean square alpha/26 at sigma 4 (the flag's help: 34 gives about 1.3 px)."""
  x = jnp.tile(random_images(1), (8, 1, 1, 1))
  x = x if dtype == jnp.uint8 else x.astype(jnp.float32) / 255.0
  kw = dict(shift=3, rotate=20, scale=0.2, elastic=34, elastic_sigma=4)
  out = np.asarray(augment.augment(jax.random.key(2), x, **kw))
  assert out.dtype == x.dtype and out.shape == x.shape
  assert out.min() >= 0 and out.max() <= (255 if dtype == jnp.uint8 else 1.0)
  assert len({o.tobytes() for o in out}) == 8
  np.testing.assert_array_equal(out, augment.augment(jax.random.PRNGKey(2), x,
                                                     **kw))
  assert not np.array_equal(out, augment.augment(jax.random.key(3), x, **kw))
  d_rows, _ = augment.elastic_field(jax.random.key(0), (64, 28, 28), 10.0, 4.0)
  d = np.asarray(d_rows)
  np.testing.assert_allclose(np.sqrt((d ** 2).mean()), 10.0 / 26, rtol=0.1)
  assert np.abs(np.diff(d, axis=1)).mean() < 0.25 * d.std()


@pytest.mark.slow
def test_first_runs_at_once_prepare_the_data_dir_once(tmp_path):
  """Several first runs on one empty --data_dir: one prepares it, the others
  wait for it and reuse it."""
  mnist_dir = write_idx_dir(tmp_path / "idx", n_train=50, n_test=20)
  data_dir, go = str(tmp_path / "tfds"), tmp_path / "go"
  code = ("import hashlib, os, sys, time\n"
          "from mnist_jax.data import pipeline\n"
          "open(sys.argv[1], 'w').close()\n"
          f"while not os.path.exists({str(go)!r}): time.sleep(0.002)\n"
          f"a = pipeline.prepare('mnist', {data_dir!r}, {mnist_dir!r})\n"
          "print(hashlib.sha256(b''.join(a[k].tobytes() for k in sorted(a)))"
          ".hexdigest())\n")
  ready = [tmp_path / f"ready{i}" for i in range(4)]
  children = [subprocess.Popen(
      [sys.executable, "-c", code, str(r)], cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in ready]
  deadline = time.monotonic() + 120
  while not all(r.exists() for r in ready) and time.monotonic() < deadline:
    time.sleep(0.01)
  go.touch()  # All at once.
  outs = [c.communicate(timeout=180) for c in children]
  for child, (_, err) in zip(children, outs):
    assert child.returncode == 0, err[-2000:]
  arrays = pipeline.prepare("mnist", data_dir)
  digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays)))
  lines = [line for out, _ in outs for line in out.splitlines()]
  assert set(lines) - {digest.hexdigest()} <= {
      f"preparing mnist in {data_dir} from the IDX files in {mnist_dir} (once; "
      "later runs read it from there)",
      f"waiting for another process preparing mnist in {data_dir}"}
  assert lines.count(digest.hexdigest()) == 4
  assert sum(line.startswith("preparing") for line in lines) == 1
  as_set = lambda images, labels: sorted(
      (lab, img.tobytes()) for img, lab in zip(images, labels))
  assert as_set(arrays["train_images"], arrays["train_labels"]) == as_set(
      *synthetic_digits(50, 0))

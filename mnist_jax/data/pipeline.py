"""The dataset's arrays: read once from its four IDX files (`--mnist_dir`, or a
download that tfds's download manager checks), cached in `--data_dir` as uint8
arrays in tfds's order, then loaded from there (without tfds) and split."""

import contextlib
import dataclasses
import errno
import fcntl
import gzip
import hashlib
import os
import socket
import urllib.parse
import zipfile

import numpy as np

from mnist_jax.data import datasets
from mnist_jax.data import idx
from mnist_jax.errors import UserError, first_line
from mnist_jax import files

# Each download's URL, size and SHA-256, in tfds's checksums format.
CHECKSUMS = os.path.join(os.path.dirname(__file__), "checksums.tsv")
# The prepared arrays in <data_dir>/<dataset>/<version>/ (there since tfds
# prepared them: the same file, the same order).
CACHE = "mnist_jax_arrays.npz"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images [N, H, W, C] uint8, labels [N] int32 (numpy or jax)."""
  images: object
  labels: object

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  val: Split  # Empty (N = 0) when val_fraction is 0.
  test: Split
  class_names: tuple


def prepare(dataset: str = "mnist", data_dir=None, mnist_dir=None) -> dict:
  """The dataset's arrays {train,test}_{images,labels} (uint8 [N, H, W(, C)],
  int32 class indices [N]), prepared first in `data_dir` (default $TFDS_DATA_DIR
  or ~/tensorflow_datasets) if needed, offline from `mnist_dir`'s IDX files."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or os.environ.get(
      "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))))
  if os.path.isdir(data_dir) and not os.access(data_dir, os.R_OK | os.X_OK):
    # Else it would read as "not prepared" (files in it look missing).
    raise UserError(f"--data_dir={data_dir} cannot be read by this user "
                    "(permission denied); give read access to it, or pass "
                    "another --data_dir")
  info = datasets.get(dataset)
  cache = os.path.join(data_dir, dataset, info.version, CACHE)
  arrays = _read_cache(cache, info)
  if arrays is not None:
    return arrays
  if mnist_dir:  # Read and checked before anything is written.
    mnist_dir = os.path.abspath(os.path.expanduser(mnist_dir))
    if not os.path.isdir(mnist_dir):
      raise UserError(f"--mnist_dir={mnist_dir} is not a folder; pass the "
                      "folder that holds the four IDX files")
    arrays = _from_idx(find_idx_files(mnist_dir, dataset), info)
    source = f"the IDX files in {mnist_dir}"
  else:
    _check_downloadable(info, data_dir)
    source = "a download"
  try:
    with _locked(data_dir, dataset):
      done = _read_cache(cache, info)  # By another process, while this waited.
      if done is not None:
        return done
      print(f"preparing {dataset} in {data_dir} from {source} (once; later "
            "runs read it from there)", flush=True)
      if arrays is None:
        arrays = _from_idx(_download(info, data_dir), info)
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      with files.atomic(cache, "wb") as f:  # Never half a file.
        np.savez(f, **arrays)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      raise  # The shell says which disk is full.
    raise UserError(f"preparing {dataset} in {data_dir} failed: {e}") from None
  return arrays


def _read_cache(path: str, info: datasets.DatasetInfo):
  """The prepared arrays, None if there are none, or a one-line refusal if
  they are damaged (never replaced unasked: deleting them is the user's)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as z:
      return {k: z[k] for k in datasets.FILE_KEYS}
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
        f"the prepared {info.name} in {os.path.dirname(path)} is damaged "
        f"({type(e).__name__}: {first_line(e, 160)}); delete that folder to "
        "prepare it again (offline: with --mnist_dir=DIR)") from None


def _from_idx(paths: dict, info: datasets.DatasetInfo) -> dict:
  """The arrays of the four IDX files (find_idx_files' `paths`), each split in
  tfds's order; an IdxError if a file is malformed or another dataset's."""
  arrays = {}
  for part in ("train", "test"):
    images, labels = idx.read_pair(paths[f"{part}_images"],
                                   paths[f"{part}_labels"], info)
    order = _tfds_order(part, len(labels))
    arrays[f"{part}_images"], arrays[f"{part}_labels"] = (images[order],
                                                          labels[order])
  check_not_another(paths, info.name)
  return arrays


def _tfds_order(split: str, n: int) -> np.ndarray:
  """The order tfds stores examples 0..n-1 of a split in: sorted by the MD5 of
  the split's name followed by the example's index. The caches tfds prepared
  hold it, and `--val_fraction` holds out its last examples (tfds's
  `train[90%:]`), so results stay comparable."""
  digests = [hashlib.md5(f"{split}{i}".encode()).digest() for i in range(n)]
  return np.array(sorted(range(n), key=digests.__getitem__), dtype=np.int64)


def find_idx_files(folder: str, dataset: str = "mnist") -> dict:
  """Maps each of the dataset's four files to its path in `folder` (plain or
  `.gz`); an IdxError if one is missing or the folder cannot be read."""
  if not os.access(folder, os.R_OK | os.X_OK):  # Else its files look missing.
    raise idx.IdxError(f"{folder} cannot be read by this user (permission "
                       "denied); give read access to it, or pass another "
                       "--mnist_dir")
  names, found = datasets.get(dataset).file_names, {}
  for key, stem in names.items():
    paths = [os.path.join(folder, name) for name in (stem, stem + ".gz")]
    found[key] = next((path for path in paths if os.path.isfile(path)), None)
    if found[key] is None:
      raise idx.IdxError(f"{stem}[.gz] is missing from {folder}: it must hold "
                         f"the four IDX files {', '.join(names.values())}")
  return found


def _published() -> dict:
  """checksums.tsv: URL -> SHA-256."""
  with open(CHECKSUMS) as f:
    return dict(line.split("\t")[:3:2] for line in f if line.strip())


def check_not_another(paths: dict, dataset: str) -> None:
  """An IdxError if the files (find_idx_files' `paths`, images of the
  dataset's shape) are another dataset's of that shape, by their train
  labels' SHA-256: Fashion-MNIST's files are named as MNIST's, and would
  train as MNIST unnoticed (and the reverse). A dataset of other images
  (colour MNIST) may share MNIST's labels."""
  with open(paths["train_labels"], "rb") as f:
    raw = f.read()
  digests = {hashlib.sha256(raw).hexdigest()}
  if raw[:2] == b"\x1f\x8b":
    digests.add(hashlib.sha256(gzip.decompress(raw)).hexdigest())
  published = _published()
  shape = datasets.get(dataset).image_shape
  for other, info in datasets.DATASETS.items():
    known = {published.get(info.url + info.files[1] + ".gz"),
             info.labels_sha256}  # The download's; the uncompressed file's.
    if other != dataset and info.image_shape == shape and digests & known:
      folder, name = os.path.split(paths["train_labels"])
      raise idx.IdxError(
          f"{name} in {folder} is {other}'s, not {dataset}'s: pass "
          f"--dataset={other}, or a --mnist_dir holding {dataset}'s files")


def download_urls(dataset: str) -> list:
  """The URLs a download fetches: four `.gz` files, or the archive of them."""
  info = datasets.get(dataset)
  if info.url.endswith(".zip"):
    return [info.url]
  return [info.url + stem + ".gz" for stem in info.files]


def _check_downloadable(info: datasets.DatasetInfo, data_dir: str) -> None:
  """A one-line refusal, before any wait, of a download that could not be
  checked (no checksum recorded) or could not start (no network)."""
  unverified = [u for u in download_urls(info.name) if u not in _published()]
  if unverified:
    raise UserError(
        f"{info.name} is not prepared in {data_dir}, and no checksum of "
        f"{unverified[0]} is recorded, so it is not downloaded unchecked: "
        "pass --mnist_dir=DIR (a folder with the four IDX files)")
  if not _network_reachable(info.url):  # Not tfds's minutes of retries.
    raise UserError(
        f"{info.name} is not prepared in {data_dir} and the network is "
        "unreachable: pass --mnist_dir=DIR (a folder with the four IDX "
        "files) or --data_dir=DIR (where it is already prepared)")


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    with socket.create_connection((parsed.hostname, port), timeout=timeout):
      return True
  except OSError:
    return False


def _download(info: datasets.DatasetInfo, data_dir: str) -> dict:
  """The dataset's `.gz` files, downloaded by tfds's download manager into
  <data_dir>/downloads (or found there) and checked by it against
  checksums.tsv: FILE_KEYS -> path. An archive's are extracted by zipfile
  (tfds's extractor would need TensorFlow). tfds is imported only here."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)  # No escape codes in a log.
  folder = os.path.join(data_dir, "downloads")
  manager = tfds.download.DownloadManager(
      download_dir=folder,
      url_infos=tfds.download.checksums.load_url_infos(CHECKSUMS))
  try:
    if info.url.endswith(".zip"):
      with zipfile.ZipFile(os.fspath(manager.download(info.url))) as archive:
        return {key: archive.extract(f"{info.archive_folder}/{stem}.gz",
                                     os.path.join(folder, "extracted",
                                                  info.name))
                for key, stem in info.file_names.items()}
    paths = manager.download(dict(zip(datasets.FILE_KEYS,
                                      download_urls(info.name))))
    return {key: os.fspath(path) for key, path in paths.items()}
  except Exception as e:  # pylint: disable=broad-except
    name = type(e).__name__
    if not any(word in name for word in ("Checksum", "Connection", "Download",
                                         "HTTP", "Timeout")):
      raise
    raise UserError(f"downloading {info.name} failed ({name}); pass "
                    "--mnist_dir=DIR with the four IDX files") from None


@contextlib.contextmanager
def _locked(data_dir: str, dataset: str):
  """Held by one process at a time: an fcntl lock on
  <data_dir>/<dataset>.prepare.lock, so that first runs started together
  prepare a folder once (the others wait, then read it)."""
  os.makedirs(data_dir, exist_ok=True)
  fd = os.open(os.path.join(data_dir, f"{dataset}.prepare.lock"),
               os.O_RDWR | os.O_CREAT, 0o666)
  try:  # Closing fd releases the lock.
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process preparing {dataset} in {data_dir}",
            flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def train_size(n: int, val_fraction: float) -> int:
  """How many of n training examples train: all but the last `val_fraction`,
  at least one held out when it is above 0 (split's rule, and --dry_run's)."""
  n_train = int(n * (1.0 - val_fraction))
  return n - 1 if val_fraction > 0 and n_train == n else n_train


def split(arrays: dict, val_fraction: float, class_names=None) -> Dataset:
  """Holds out the last `val_fraction` of the training set before any
  shuffling, as Keras' `validation_split` does, so results are comparable."""
  images, labels = arrays["train_images"], arrays["train_labels"]
  n = len(labels)
  n_train = train_size(n, val_fraction)
  if n_train == 0 < n:
    raise UserError(f"--val_fraction={val_fraction:g} holds out all {n} "
                    "training examples, leaving none to train on; pass a "
                    "smaller one")
  return Dataset(train=Split(images[:n_train], labels[:n_train]),
                 val=Split(images[n_train:], labels[n_train:]),
                 test=Split(arrays["test_images"], arrays["test_labels"]),
                 class_names=tuple(class_names or datasets.DIGITS))


def load(config) -> Dataset:
  """Prepares (if needed), loads and splits the dataset a config names: its
  images [N, H, W, C] as the dataset declares them."""
  arrays = prepare(config.dataset, config.data_dir, config.mnist_dir)
  shape = datasets.get(config.dataset).image_shape
  arrays = {k: v.reshape(len(v), *shape) if k.endswith("images") else v
            for k, v in arrays.items()}
  return split(arrays, config.val_fraction,
               datasets.get(config.dataset).class_names)

"""MNIST input: prepare with tfds once (download, or `--mnist_dir` offline),
cache the decoded uint8 arrays beside it (later runs skip tfds), split."""

import contextlib
import dataclasses
import io
import logging
import os
import socket
import urllib.parse

try:
  import fcntl
except ImportError:  # Not on a POSIX system: preparing is not locked.
  fcntl = None

import numpy as np

from mnist_jax.data import datasets
from mnist_jax.data import idx
from mnist_jax.errors import UserError
from mnist_jax import files


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images [N, H, W] uint8 and labels [N] int32 (numpy or jax)."""
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


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    with socket.create_connection((parsed.hostname, port), timeout=timeout):
      return True
  except OSError:
    return False


def _read_cache(path: str, image_shape):
  """The cached arrays, or None if missing or damaged (then rebuilt)."""
  try:
    with np.load(path) as z:
      arrays = {k: z[k] for k in datasets.FILE_KEYS}
  except Exception:  # pylint: disable=broad-except
    return None
  if (arrays["train_images"].shape[1:] != tuple(image_shape) or
      len(arrays["train_images"]) != len(arrays["train_labels"]) or
      len(arrays["test_images"]) != len(arrays["test_labels"])):
    return None
  return arrays


def prepare(dataset: str = "mnist", data_dir=None, mnist_dir=None) -> dict:
  """The dataset's arrays {train,test}_{images,labels} (uint8 [N, H, W], int32
  class indices [N]), prepared first in `data_dir` (default $TFDS_DATA_DIR or
  ~/tensorflow_datasets) if needed, offline from `mnist_dir`'s IDX files."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or os.environ.get(
      "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))))
  if os.path.isdir(data_dir) and not os.access(data_dir, os.R_OK | os.X_OK):
    # Else it would read as "not prepared" (files in it look missing).
    raise UserError(f"--data_dir={data_dir} cannot be read by this user "
                    "(permission denied); give read access to it, or pass "
                    "another --data_dir")
  info = datasets.get(dataset)
  cache = os.path.join(data_dir, dataset, info.version, "mnist_jax_arrays.npz")
  arrays = _read_cache(cache, info.image_shape)
  if arrays is not None:
    return arrays

  # Imported only now: a cached run never needs tfds, whose import is slow.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Without tfds's progress bars (escape codes in a log) and absl warnings.
  tfds.display_progress_bar(False)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    arrays = _from_tfds(tfds, dataset, data_dir, mnist_dir)
  finally:
    absl_logger.setLevel(level)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with files.atomic(cache, "wb") as f:  # Never half a file.
    np.savez(f, **arrays)
  return arrays


def _from_tfds(tfds, dataset: str, data_dir: str, mnist_dir) -> dict:
  """prepare's arrays from the tfds dataset, prepared first if it is not."""
  from mnist_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  builder_cls = tfds_builder.builder(dataset)

  def damaged(e: Exception) -> UserError:
    folder = os.path.join(data_dir, dataset, str(builder_cls.VERSION))
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return UserError(f"the prepared {dataset} in {folder} is damaged "
                     f"({type(e).__name__}: {reason}); delete that folder to "
                     "prepare it again (offline: with --mnist_dir=DIR)")

  try:
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
  except OSError as e:
    raise UserError(f"cannot use --data_dir={data_dir}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise damaged(e) from None
  if not builder.is_prepared():
    if mnist_dir:
      mnist_dir = os.path.abspath(os.path.expanduser(mnist_dir))
      if not os.path.isdir(mnist_dir):
        raise UserError(f"--mnist_dir={mnist_dir} is not a folder; pass the "
                        "folder that holds the four IDX files")
      paths = tfds_builder.find_idx_files(mnist_dir, dataset)
      for split in ("train", "test"):  # Validate before tfds writes anything.
        idx.read_pair(paths[f"{split}_images"], paths[f"{split}_labels"],
                      datasets.get(dataset))
      tfds_builder.check_not_another(paths, dataset)
      config = tfds.download.DownloadConfig(manual_dir=mnist_dir)
    else:
      unverified = tfds_builder.unverified_urls(dataset)
      if unverified:
        raise UserError(
            f"{dataset} is not prepared in {data_dir}, and no checksum of "
            f"{unverified[0]} is recorded, so it is not downloaded unchecked: "
            "pass --mnist_dir=DIR (a folder with the four IDX files)")
      if not _network_reachable(builder_cls.URL):
        raise UserError(
            f"{dataset} is not prepared in {data_dir} and the network is "
            "unreachable: pass --mnist_dir=DIR (a folder with the four IDX "
            "files) or --data_dir=DIR (where it is already prepared)")
      config = tfds.download.DownloadConfig()
    source = f"the IDX files in {mnist_dir}" if mnist_dir else "a download"
    try:
      builder = _prepare_once(builder, config, dataset, data_dir, source)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      code = files.no_space(e)
      if code is not None:  # launch.py says it as a full disk anywhere.
        raise files.no_space_error(code, data_dir) from None
      if isinstance(e, OSError):
        raise UserError(
            f"preparing {dataset} in {data_dir} failed: {e}") from None
      name = type(e).__name__
      if "Checksum" in name or "Connection" in name:
        raise UserError(f"downloading {dataset} failed ({name}); pass "
                        "--mnist_dir=DIR with the four IDX files") from None
      raise
  elif builder.info.file_format is not None and (
      builder.info.file_format.value != "array_record"):
    raise UserError(f"{dataset} in {data_dir} was prepared as "
                    f"{builder.info.file_format.value}, not array_record; pass "
                    "another --data_dir")
  try:
    return {f"{part}_{kind}": array for part in ("train", "test")
            for kind, array in zip(("images", "labels"),
                                   tfds_builder.decode_split(builder, part))}
  except Exception as e:  # pylint: disable=broad-except
    raise damaged(e) from None


def _prepare_once(builder, config, dataset: str, data_dir: str, source: str):
  """The builder to read, prepared by this process under an fcntl lock on
  `<data_dir>/<dataset>.prepare.lock` (one process at a time prepares it
  there), unless another one did while this one waited (then reused)."""
  os.makedirs(data_dir, exist_ok=True)
  fd = os.open(os.path.join(data_dir, f"{dataset}.prepare.lock"),
               os.O_RDWR | os.O_CREAT, 0o666)
  try:  # Closing fd releases the lock.
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        print(f"waiting for another process preparing {dataset} in "
              f"{data_dir}", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    again = type(builder)(data_dir=data_dir, file_format="array_record")
    if again.is_prepared():
      return again
    print(f"preparing {dataset} in {data_dir} from {source} (once; later runs "
          "read it from there)", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # tfds's "Unknown size".
      builder.download_and_prepare(download_config=config)
    return builder
  finally:
    os.close(fd)


def split(arrays: dict, val_fraction: float, class_names=None) -> Dataset:
  """Holds out the last `val_fraction` of the training set before any
  shuffling, as Keras' `validation_split` does, so results are comparable."""
  images, labels = arrays["train_images"], arrays["train_labels"]
  n = len(labels)
  n_train = int(n * (1.0 - val_fraction))
  if val_fraction > 0 and n_train == n:
    n_train = n - 1
  return Dataset(train=Split(images[:n_train], labels[:n_train]),
                 val=Split(images[n_train:], labels[n_train:]),
                 test=Split(arrays["test_images"], arrays["test_labels"]),
                 class_names=tuple(class_names or datasets.DIGITS))


def load(config) -> Dataset:
  """Prepares (if needed), loads and splits the dataset a config names."""
  arrays = prepare(config.dataset, config.data_dir, config.mnist_dir)
  return split(arrays, config.val_fraction,
               datasets.class_names(config.dataset))

"""tfds builders for MNIST and its IDX-format sisters, needing no TensorFlow.

Their `array_record` files are element for element tfds's own (EMNIST's:
upright, labels from 0). Downloads are checked against `checksums.tsv`;
offline, `DownloadConfig(manual_dir=DIR)` names a folder of the IDX files.
"""

import gzip
import hashlib
import os
import stat

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mnist_jax.data import datasets
from mnist_jax.data import idx

CHECKSUMS = os.path.join(os.path.dirname(__file__), "checksums.tsv")


def find_idx_files(folder: str, dataset: str = "mnist") -> dict:
  """Maps each of the dataset's four files to its path in `folder` (plain or
  `.gz`); an IdxError if one is missing or the folder cannot be read."""
  names = datasets.get(dataset).file_names
  found = {}
  for key, stem in names.items():
    for name in (stem, stem + ".gz"):
      path = os.path.join(folder, name)
      try:  # os.path.isfile would call a file in an unreadable folder missing.
        if stat.S_ISREG(os.stat(path).st_mode):
          found[key] = path
          break
      except FileNotFoundError:
        pass
      except PermissionError:
        raise idx.IdxError(f"{folder} cannot be read by this user (permission "
                           "denied); give read access to it, or pass another "
                           "--mnist_dir") from None
    else:
      raise idx.IdxError(f"{stem}[.gz] is missing from {folder}: it must hold "
                         f"the four IDX files {', '.join(names.values())}")
  return found


def _labels_sha256(dataset: str) -> set:
  """The known SHA-256s of the dataset's train labels file: its download's
  (checksums.tsv) and its uncompressed content's, where declared."""
  info = datasets.get(dataset)
  with open(CHECKSUMS) as f:
    published = dict(line.split("\t")[:3:2] for line in f if line.strip())
  return {published.get(info.url + info.files[1] + ".gz"),
          info.labels_sha256} - {None, ""}


def check_not_another(paths: dict, dataset: str) -> None:
  """An IdxError if readable, valid files (find_idx_files' `paths`) are
  another dataset's by their train labels: Fashion-MNIST's files are named as
  MNIST's, and would train as MNIST unnoticed (and the reverse)."""
  with open(paths["train_labels"], "rb") as f:
    raw = f.read()
  digests = {hashlib.sha256(raw).hexdigest()}
  if raw[:2] == b"\x1f\x8b":
    digests.add(hashlib.sha256(gzip.decompress(raw)).hexdigest())
  for other in datasets.DATASETS:
    if other != dataset and digests & _labels_sha256(other):
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


def unverified_urls(dataset: str) -> list:
  """The download URLs with no size and SHA-256 in checksums.tsv: none of
  them is downloaded, as it could not be checked."""
  with open(CHECKSUMS) as f:
    known = {line.split("\t", 1)[0] for line in f if line.strip()}
  return [url for url in download_urls(dataset) if url not in known]


def _downloaded_files(dl_manager, info: datasets.DatasetInfo) -> dict:
  """Downloads the dataset's files (checked by tfds): FILE_KEYS -> path."""
  names = info.file_names
  if info.url.endswith(".zip"):
    folder = os.path.join(os.fspath(dl_manager.download_and_extract(info.url)),
                          info.archive_folder)
    return {key: os.path.join(folder, stem + ".gz")
            for key, stem in names.items()}
  paths = dl_manager.download(
      {key: info.url + stem + ".gz" for key, stem in names.items()})
  return {key: os.fspath(path) for key, path in paths.items()}


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """uint8 images and class labels from four IDX files, as `INFO` declares."""

  VERSION = tfds.core.Version("3.0.1")
  URL = ""
  INFO = datasets.DATASETS["mnist"]

  def _info(self):
    names = self.INFO.class_names
    if names == tuple(str(i) for i in range(len(names))):
      label = tfds.features.ClassLabel(num_classes=len(names))
    else:
      label = tfds.features.ClassLabel(names=list(names))
    return tfds.core.DatasetInfo(
        builder=self, description=self.INFO.description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(*self.INFO.image_shape, 1)),
            "label": label,
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    manual = dl_manager._manual_dir  # pylint: disable=protected-access
    if manual is not None and os.fspath(manual):
      paths = find_idx_files(os.fspath(manual), self.INFO.name)
    else:
      paths = _downloaded_files(dl_manager, self.INFO)
    return {split: self._generate_examples(paths[f"{split}_images"],
                                           paths[f"{split}_labels"])
            for split in ("train", "test")}

  def _generate_examples(self, images_path, labels_path):
    images, labels = idx.read_pair(images_path, labels_path, self.INFO)
    for index in range(len(labels)):
      # A PIL image is PNG-encoded by PIL; a numpy one would need TensorFlow.
      yield index, {"image": Image.fromarray(images[index], mode="L"),
                    "label": int(labels[index])}


def builder(dataset: str):
  """The dataset's builder class, from its declaration in DATASETS now."""
  info = datasets.get(dataset)
  return type(info.name.title().replace("_", ""), (_IdxBuilder,), dict(
      name=info.name, VERSION=tfds.core.Version(info.version), URL=info.url,
      INFO=info, __module__=__name__), skip_registration=True)


def decode_split(builder: tfds.core.DatasetBuilder, split: str):
  """A prepared split, read through `tfds.data_source` in its stored order:
  images [N, H, W] uint8 and labels [N] int32."""
  source = builder.as_data_source(split=split)
  n = len(source)
  images = np.empty((n, *builder.info.features["image"].shape[:2]), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, 4096):
    items = source.__getitems__(list(range(start, min(start + 4096, n))))
    for offset, item in enumerate(items):
      images[start + offset] = item["image"][..., 0]
      labels[start + offset] = item["label"]
  return images, labels

"""tfds builders for MNIST and its IDX-format sisters, usable without TensorFlow.

They write `array_record` files that `tfds.data_source` reads, element for element
the same as the official tfds `mnist:3.0.1` (and `fashion_mnist`, `kmnist`). Online
they download the four IDX files through tfds's download manager, which checks them
against `checksums.tsv` beside this file. Offline, `DownloadConfig(manual_dir=DIR)`
points them at a folder holding the four files, `.gz` or not.
"""

import os
import stat

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mnist_jax.data import datasets
from mnist_jax.data import idx

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx_files(folder: str) -> dict:
  """Maps each of FILES to its path in `folder` (plain or `.gz`), or raises.

  Raises:
    idx.IdxError: a file is missing, or the folder cannot be read.
  """
  found = {}
  for key, stem in FILES.items():
    for name in (stem, stem + ".gz"):
      path = os.path.join(folder, name)
      try:  # os.path.isfile would call a file in an unreadable folder missing.
        is_file = stat.S_ISREG(os.stat(path).st_mode)
      except FileNotFoundError:
        is_file = False
      except PermissionError:
        raise idx.IdxError(f"{folder} cannot be read by this user (permission "
                           "denied); give read access to it, or pass another "
                           "--mnist_dir") from None
      if is_file:
        found[key] = path
        break
    else:
      raise idx.IdxError(f"{stem}[.gz] is missing from {folder}: it must hold the "
                         f"four IDX files {', '.join(FILES.values())}")
  return found


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder: 28x28 uint8 images with labels 0-9 from four IDX files."""

  VERSION = tfds.core.Version("3.0.1")
  URL = ""
  LABEL_NAMES = None
  DESCRIPTION = ""

  def _info(self):
    if self.LABEL_NAMES:
      label = tfds.features.ClassLabel(names=list(self.LABEL_NAMES))
    else:
      label = tfds.features.ClassLabel(num_classes=10)
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": label,
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    manual = dl_manager._manual_dir  # pylint: disable=protected-access
    if manual is not None and os.fspath(manual):
      paths = find_idx_files(os.fspath(manual))
    else:
      paths = dl_manager.download(
          {key: self.URL + stem + ".gz" for key, stem in FILES.items()})
      paths = {key: os.fspath(path) for key, path in paths.items()}
    return {
        split: self._generate_examples(paths[f"{split}_images"],
                                       paths[f"{split}_labels"])
        for split in ("train", "test")
    }

  def _generate_examples(self, images_path, labels_path):
    images, labels = idx.read_pair(images_path, labels_path)
    for index in range(len(labels)):
      # A PIL image is PNG-encoded by PIL; a numpy one would need TensorFlow.
      yield index, {"image": Image.fromarray(images[index], mode="L"),
                    "label": int(labels[index])}


def _builder(info: datasets.DatasetInfo):
  return type(info.name.title().replace("_", ""), (_IdxBuilder,), dict(
      name=info.name, VERSION=tfds.core.Version(info.version), URL=info.url,
      DESCRIPTION=info.description, LABEL_NAMES=info.label_names,
      __module__=__name__),
              skip_registration=True)


BUILDERS = {name: _builder(info) for name, info in datasets.DATASETS.items()}


def decode_split(builder: tfds.core.DatasetBuilder, split: str):
  """Reads a prepared split through `tfds.data_source` into uint8 arrays.

  Returns:
    images [N, 28, 28] uint8 and labels [N] int32, in the stored order.
  """
  source = builder.as_data_source(split=split)
  n = len(source)
  images = np.empty((n, 28, 28), np.uint8)
  labels = np.empty((n,), np.int32)
  step = 4096
  for start in range(0, n, step):
    items = source.__getitems__(list(range(start, min(start + step, n))))
    for offset, item in enumerate(items):
      images[start + offset] = item["image"][..., 0]
      labels[start + offset] = item["label"]
  return images, labels


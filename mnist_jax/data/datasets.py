"""The supported datasets, each declared once: files, classes and image shape.

Adding one is a `DatasetInfo` in DATASETS (and its download's checksums.tsv
line); the models, analyses, report and predict follow its image shape. No tfds
import here: a run with cached arrays starts without it."""

import dataclasses
import string
from typing import Tuple

# The four IDX files of a dataset, in this order, named without ".gz".
FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGITS = tuple(string.digits)
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Four IDX files (images uint8 [N, H, W] or [N, H, W, C], labels [N]) of
  images `image_shape` (H, W, C): its channels are declared here once, and
  models take [B, H, W, C]. url: the folder of
  the `.gz` files, or a .zip holding them under `archive_folder`.
  first_label: the files' label of class 0. transposed: images stored so.
  labels_sha256: of the uncompressed train labels, where known (the `.gz`
  files' are checksums.tsv's), so another dataset's files are told apart."""
  name: str
  version: str
  url: str
  class_names: Tuple[str, ...] = DIGITS
  image_shape: Tuple[int, int, int] = (28, 28, 1)
  train_size: int = 60_000
  files: Tuple[str, ...] = MNIST_FILES  # In FILE_KEYS order.
  archive_folder: str = ""
  first_label: int = 0
  transposed: bool = False
  labels_sha256: str = ""

  def __post_init__(self):
    if len(self.files) != len(FILE_KEYS) or len(self.image_shape) != 3:
      raise ValueError(f"dataset {self.name!r}: declare four IDX files "
                       "(FILE_KEYS' order) and image_shape (H, W, C)")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def file_names(self) -> dict:
    """FILE_KEYS -> file name ("train_images": "train-images-idx3-ubyte")."""
    return dict(zip(FILE_KEYS, self.files))


def _emnist_files(split: str) -> Tuple[str, ...]:
  return tuple(f"emnist-{split}-{part}-{kind}-idx{dims}-ubyte"
               for part in ("train", "test")
               for kind, dims in (("images", 3), ("labels", 1)))


DATASETS = {d.name: d for d in (
    DatasetInfo("mnist", "3.0.1",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                labels_sha256="65a50cbbf4e906d70832878ad85ccda5"
                "333a97f0f4c3dd2ef09a8a9eef7101c5"),
    DatasetInfo("fashion_mnist", "3.0.1",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    DatasetInfo("kmnist", "3.0.1",
                "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    # EMNIST's own classes: balanced merges the 15 lower-case letters whose
    # shape is their capital's (c, i, j, k, l, m, o, p, s, u, v, w, x, y, z).
    DatasetInfo("emnist_balanced", "1.0.0", EMNIST_URL,
                DIGITS + tuple(string.ascii_uppercase) + tuple("abdefghnqrt"),
                train_size=112_800, files=_emnist_files("balanced"),
                archive_folder="gzip", transposed=True),
    # Letters: upper and lower case together; the files label them 1..26.
    DatasetInfo("emnist_letters", "1.0.0", EMNIST_URL,
                tuple(string.ascii_uppercase), train_size=88_800,
                files=_emnist_files("letters"), archive_folder="gzip",
                first_label=1, transposed=True),
)}


def get(dataset: str) -> DatasetInfo:
  return DATASETS[dataset]

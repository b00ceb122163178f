"""The supported datasets: name, tfds version, download URL and class names.

Kept free of tensorflow_datasets so that a run whose decoded arrays are already
cached starts without importing tfds (about 0.3-1 s); `tfds_builder.py` builds
its builders from these records.
"""

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  version: str
  url: str
  description: str
  label_names: Optional[Tuple[str, ...]] = None  # None: the digits 0-9.

  @property
  def class_names(self) -> list:
    return list(self.label_names or [str(i) for i in range(10)])


DATASETS = {d.name: d for d in (
    DatasetInfo("mnist", "3.0.1",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "The MNIST database of handwritten digits."),
    DatasetInfo("fashion_mnist", "3.0.1",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "Fashion-MNIST: Zalando article images, 10 classes.",
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    DatasetInfo("kmnist", "3.0.1",
                "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                "Kuzushiji-MNIST: cursive Japanese characters, 10 classes.",
                ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
)}


def class_names(dataset: str) -> list:
  """Human-readable label names: digits for MNIST, words for the sisters."""
  return DATASETS[dataset].class_names

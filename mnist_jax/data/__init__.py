"""The data: datasets.py, idx.py, pipeline.py, augment.py and images.py.
Import those modules themselves: this package imports none of them, so
nothing loads tfds or PIL before it is used."""

"""The data: datasets, their files, and the images a model is fed.

  datasets.py      the registry of datasets: names, versions, URLs, classes
  idx.py           the IDX file format, with one-line errors for bad files
  tfds_builder.py  tfds builders that need no TensorFlow (checksums.tsv beside)
  pipeline.py      prepare once, cache the uint8 arrays, split: Dataset, Split
  views.py         uint8 images as a model reads them: flat, image, sequences
  augment.py       random affine and elastic warps, on the device in the step
  batches.py       each epoch's batch order, a pure function of key and epoch
  images.py        a picture of a digit as an MNIST-style input (predict)

Import the modules themselves (`from mnist_jax.data import pipeline`): this
package imports none of them, so nothing loads tfds or PIL before it is used.
"""

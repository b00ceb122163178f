"""Reading event files back with TensorBoard's own loaders, as its server does."""

import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.util import tensor_util


def multiplexer(logdir):
  """Every run (event folder) under logdir, loaded."""
  mux = plugin_event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(str(logdir))
  mux.Reload()
  return mux


def scalars(mux, run):
  """{tag: [(step, value)]} of a run, as the scalars plugin reads them."""
  tags = mux.PluginRunToTagToContent("scalars").get(run, {})
  return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                for e in mux.Tensors(run, tag)] for tag in tags}


def assert_image_is_file(image, path):
  """An image event shows the PNG file at `path`, pixel for pixel."""
  with Image.open(path) as want, Image.open(io.BytesIO(
      image.encoded_image_string)) as got:
    assert (image.width, image.height) == want.size
    np.testing.assert_array_equal(np.asarray(got.convert("RGBA")),
                                  np.asarray(want.convert("RGBA")))

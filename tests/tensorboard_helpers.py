"""Reading event files back with TensorBoard's own loaders, as its server does."""

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


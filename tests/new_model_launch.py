"""launch.py with a model registered here, outside the package: what a new
architecture meets, devices.py untouched.

The model is "newnet", a small MLP. With FAKE_MS_PER_STEP (e.g.
"none=3,pmap=2,sharded=1"), --parallel=auto still compiles and runs the train
chunk in each candidate layout, but each layout reports the time given there,
and the host reports itself idle, so that the choice is known.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax.models import dense
from mnist_jax.models import registry
from mnist_jax.training import devices
# pylint: enable=g-import-not-at-top,wrong-import-position

registry.register(registry.ModelSpec(
    name="newnet", view="flat", describe=lambda c: "784-16-10, ReLU",
    module=dense.MLP, fixed={"hidden": (16,), "dropout": 0.0},
    presets={"seed": dict(epochs=2, batch_size=64)}))

FAKE_MS = dict(item.split("=") for item in
               os.environ.get("FAKE_MS_PER_STEP", "").split(",") if item)
_timed_run = devices.Engine._timed_run  # pylint: disable=protected-access


def _fake(self, *args):
  """The real measurement's runs, reporting the stated time of their layout."""
  *_, mode, _ = args
  run = _timed_run(self, *args)

  def fake_run():
    run()
    return float(FAKE_MS[mode]) / 1e3
  return fake_run


if FAKE_MS:  # On an idle host: other tests load this one.
  devices.Engine._timed_run = _fake  # pylint: disable=protected-access
  os.getloadavg = lambda: (0.0, 0.0, 0.0)
runpy.run_path(os.path.join(ROOT, "launch.py"), run_name="__main__")

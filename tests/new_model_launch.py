"""launch.py with a model registered here, outside the package: what a new
architecture meets, with no edit of the package.

The model is "newnet", a small MLP (one hidden layer of 16) with a `seed`
preset of 2 epochs. The script registers it, then runs launch.py with the
command line it was given, so every launch.py command (training, --dry_run,
--mode=report and predict) knows the model, and the commands its messages
print name this script. --parallel=auto is a rule, not
a measurement (training/devices.py): the model gets the layout any stock
module class that does not declare DATA_PARALLEL_ON_CPU gets.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax.models import dense
from mnist_jax.models import registry
# pylint: enable=g-import-not-at-top,wrong-import-position

registry.register(registry.ModelSpec(
    name="newnet", describe=lambda c: "784-16-10, ReLU",
    module=dense.MLP, fixed={"hidden": (16,), "dropout": 0.0},
    presets={"seed": dict(epochs=2, batch_size=64)}))

runpy.run_path(os.path.join(ROOT, "launch.py"), run_name="__main__")

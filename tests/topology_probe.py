"""launch.py with observers that print what report and predict computed.

Run by tests/test_topology.py in place of launch.py, with launch.py's flags.
It runs launch.py unchanged, and prints one line `@metrics {json}`:
  --mode=report: the test accuracy and loss report.write got for the chosen
    member (results/run.py's Run), and its seeds' ensemble's (None for one
    member);
  --mode=predict: the test accuracy and loss of the run predict loaded
    (run.Run), chosen member and ensemble, on the run's test split.

  python tests/topology_probe.py --mode=report --workdir=RUN
"""

import json
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=wrong-import-position

from mnist_jax.data import pipeline  # pylint: disable=wrong-import-position
from mnist_jax.results import report  # pylint: disable=wrong-import-position
from mnist_jax.results import run as run_lib


def _print(chosen, ensemble):
  print("@metrics " + json.dumps({
      "accuracy": chosen["accuracy"], "loss": chosen["loss"],
      "ensemble_accuracy": ensemble and ensemble["accuracy"],
      "ensemble_loss": ensemble and ensemble["loss"]}), flush=True)


_write = report.write


def write(workdir, run, test, *args, **kwargs):
  """report.write, and the ensemble of the run's seeds as it computes it."""
  result = _write(workdir, run, test, *args, **kwargs)
  _print(result, report.ensemble_metrics(run, test) if len(run.seeds) > 1
         else None)
  return result


_predict_files = run_lib.predict_files


def predict_files(run, paths, ensemble=False):
  test = pipeline.load(run.config).test
  images = np.asarray(test.images)
  chosen = run.evaluate(images, test.labels)
  seeds = None
  if len(run.seeds) > 1:
    seeds = run.evaluate(images, test.labels, ensemble=True)
  _print(chosen, seeds)
  return _predict_files(run, paths, ensemble)


report.write = write
run_lib.predict_files = predict_files
sys.argv = [os.path.join(ROOT, "launch.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
